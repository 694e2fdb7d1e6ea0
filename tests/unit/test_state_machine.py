"""A Hypothesis state machine: any sequence of connects, reconnects, disconnects and
deliveries (repeated, reordered, across users) agrees with a small reference model."""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from domain.errors import AccountAlreadyConnected
from domain.meetings import MeetingStatus
from domain.model import ConnectionStatus
from domain.usecases.disconnect import DisconnectCommand
from domain.usecases.handle_webhook_event import WebhookCommand
from domain.usecases.reconnect import ReconnectCommand
from tests.fakes.calendly import FakeUser
from tests.fakes.storage import meetings_of
from tests.support.core import APP_KEY, build_core
from tests.support.deliveries import envelope, invitee_payload, sign

USERS = ("u1", "u2", "u3")
ACCOUNTS = (0, 1, 2)
BOOKINGS = (0, 1, 2, 3)
EVENT = "https://api.calendly.test/scheduled_events/"


class ConnectionLifecycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.core = build_core()
        self.accounts: list[FakeUser] = [
            self.core.calendly.add_user(f"host{n}@example.com", paid=n != 2) for n in ACCOUNTS
        ]
        # The model: which account each app user has connected, and what each user's
        # meetings must look like (event id -> canceled?).
        self.connected: dict[str, int | None] = dict.fromkeys(USERS)
        self.meetings: dict[str, dict[str, bool]] = {u: {} for u in USERS}

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.loop.close()

    def owner_of(self, account: int) -> str | None:
        return next((u for u, a in self.connected.items() if a == account), None)

    @rule(user=st.sampled_from(USERS), account=st.sampled_from(ACCOUNTS))
    def connect(self, user: str, account: int) -> None:
        owner = self.owner_of(account)
        writes = self.core.calendly.writes()
        try:
            self.run(self.core.connect(user, self.accounts[account]))
        except AccountAlreadyConnected:
            assert owner is not None
            assert owner != user
            return
        assert owner in (None, user)
        if owner == user:
            assert self.core.calendly.writes() == writes  # idempotent: nothing new at Calendly
        self.connected[user] = account

    @rule(user=st.sampled_from(USERS))
    def reconnect(self, user: str) -> None:
        writes = self.core.calendly.writes()
        result = self.run(self.core.reconnect(ReconnectCommand(user_id=user, browser_binding="b")))
        if self.connected[user] is None:
            assert result.outcome == "authorization_required"
        else:
            assert result.outcome == "reconnected"
            assert self.core.calendly.writes() == writes

    @rule(user=st.sampled_from(USERS))
    def disconnect(self, user: str) -> None:
        calls = self.core.calendly.count()
        self.run(self.core.disconnect(DisconnectCommand(user_id=user)))
        if self.connected[user] is None:
            assert self.core.calendly.count() == calls  # nothing to do, nobody called
        self.connected[user] = None

    @rule(
        account=st.sampled_from(ACCOUNTS),
        booking=st.sampled_from(BOOKINGS),
        cancel=st.booleans(),
        copies=st.integers(min_value=1, max_value=3),
    )
    def deliver(self, account: int, booking: int, cancel: bool, copies: int) -> None:
        host = self.accounts[account]
        event_id = f"a{account}b{booking}"
        payload = invitee_payload(
            host_uri=host.uri,
            event_id=event_id,
            invitee_id="i1",
            status="canceled" if cancel else "active",
            event_status="canceled" if cancel else "active",
        )
        body = envelope("invitee.canceled" if cancel else "invitee.created", payload, host.uri)
        stamp = int(self.core.clock.now().timestamp())
        outcomes = [
            self.run(
                self.core.handle_webhook(
                    WebhookCommand(body=body, signature=sign(body, APP_KEY.reveal(), stamp))
                )
            ).outcome
            for _ in range(copies)
        ]
        owner = self.owner_of(account)
        if owner is None:
            assert set(outcomes) <= {"stored_aside", "duplicate"}
            return
        assert set(outcomes[1:]) <= {"duplicate"}
        previous = self.meetings[owner].get(event_id, False)
        self.meetings[owner][event_id] = previous or cancel

    @invariant()
    def stored_meetings_match_the_model(self) -> None:
        for user in USERS:
            stored = {
                uri[len(EVENT) :]: meeting.status is MeetingStatus.CANCELED
                for uri, (meeting, _) in meetings_of(self.core.db, user).items()
            }
            assert stored == self.meetings[user]

    @invariant()
    def connections_match_the_model(self) -> None:
        for user, account in self.connected.items():
            stored = self.core.db.connections.get(user)
            if account is None:
                assert stored is None or stored.status is ConnectionStatus.DISCONNECTED
            else:
                assert stored is not None
                assert stored.status is ConnectionStatus.ACTIVE
                assert stored.account is not None
                assert stored.account.user_uri == self.accounts[account].uri

    @invariant()
    def every_connected_paid_account_has_exactly_one_subscription(self) -> None:
        for n, host in enumerate(self.accounts):
            active = self.core.calendly.active_subscriptions(host)
            expected = 1 if self.owner_of(n) is not None and host.paid else 0
            assert len(active) == expected, (n, active)


ConnectionLifecycle.TestCase.settings = settings(
    max_examples=75, stateful_step_count=25, deadline=None
)
test_connection_lifecycle = ConnectionLifecycle.TestCase
