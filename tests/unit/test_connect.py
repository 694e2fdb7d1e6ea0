"""Connecting, reconnecting and disconnecting a Calendly account, against fakes."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from msgspec.structs import replace

from domain.errors import (
    AccountAlreadyConnected,
    AuthorizationDenied,
    AuthorizationStateInvalid,
    CalendlyUnavailable,
    ReauthorizationRequired,
    StorageUnavailable,
    TokenRejected,
)
from domain.model import ConnectionStatus, WebhookStatus
from domain.usecases.complete_connect import CompleteConnectCommand
from domain.usecases.disconnect import DisconnectCommand
from domain.usecases.reconnect import ReconnectCommand
from domain.usecases.start_connect import StartConnectCommand
from tests.support.core import CALLBACK_BASE, Core


async def test_connect_records_the_account_and_one_subscription(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    result = await core.connect("user-a", ada)
    view = result.connection
    assert view.status is ConnectionStatus.ACTIVE
    assert view.calendly_user_uri == ada.uri
    assert view.organization_uri == ada.organization_uri
    assert view.email == "ada@example.com"
    assert view.webhook_status is WebhookStatus.ACTIVE
    subs = core.calendly.active_subscriptions(ada)
    assert len(subs) == 1
    stored = core.db.connections["user-a"]
    assert subs[0].callback_url == f"{CALLBACK_BASE}/{stored.webhook_token}"
    assert stored.signing_key is not None
    assert subs[0].signing_key == stored.signing_key.reveal()
    assert core.calendly.calls == [
        "exchange_code",
        "current_user",
        "list_subscriptions",
        "create_subscription",
    ]


async def test_a_state_works_once(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    started = await core.start_connect(StartConnectCommand(user_id="u", browser_binding="b"))
    code = core.calendly.issue_code(ada, "irrelevant", "irrelevant")
    command = CompleteConnectCommand(state=started.state, code=code, browser_binding="b")
    with pytest.raises(AuthorizationStateInvalid):
        await core.complete_connect(command)  # wrong challenge: the code is refused...
    with pytest.raises(AuthorizationStateInvalid, match="unknown or already used"):
        await core.complete_connect(command)  # ...and the state is gone all the same
    assert core.calendly.count("exchange_code") == 1


@pytest.mark.parametrize(
    ("command_user", "command_binding", "reason"),
    [
        ("intruder", None, "another user"),
        (None, "other-cookie", "another browser"),
        (None, None, "another browser"),
    ],
)
async def test_a_state_from_another_user_or_browser_is_refused_before_calendly(
    core: Core, command_user: str | None, command_binding: str | None, reason: str
) -> None:
    started = await core.start_connect(
        StartConnectCommand(user_id="owner", browser_binding="cookie")
    )
    with pytest.raises(AuthorizationStateInvalid, match=reason):
        await core.complete_connect(
            CompleteConnectCommand(
                state=started.state,
                code="anything",
                user_id=command_user,
                browser_binding=command_binding,
            )
        )
    assert core.calendly.calls == []


async def test_an_expired_state_is_refused(core: Core) -> None:
    started = await core.start_connect(StartConnectCommand(user_id="u", browser_binding="b"))
    core.clock.advance(timedelta(minutes=10, seconds=1))
    with pytest.raises(AuthorizationStateInvalid, match="expired"):
        await core.complete_connect(
            CompleteConnectCommand(state=started.state, code="c", browser_binding="b")
        )
    assert core.calendly.calls == []


async def test_an_unknown_state_is_refused(core: Core) -> None:
    with pytest.raises(AuthorizationStateInvalid):
        await core.complete_connect(CompleteConnectCommand(state="forged", code="c", user_id="u"))
    assert core.calendly.calls == []


async def test_an_api_client_finishes_with_its_own_user_id(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    started = await core.start_connect(StartConnectCommand(user_id="api-user"))
    challenge = parse_qs(urlsplit(started.authorization_url).query)["code_challenge"][0]
    code = core.calendly.issue_code(ada, challenge, "https://app.example/oauth/calendly/callback")
    result = await core.complete_connect(
        CompleteConnectCommand(state=started.state, code=code, user_id="api-user")
    )
    assert result.connection.calendly_user_uri == ada.uri


async def test_denial_at_calendly_is_reported_and_consumes_the_state(core: Core) -> None:
    started = await core.start_connect(StartConnectCommand(user_id="u", browser_binding="b"))
    with pytest.raises(AuthorizationDenied):
        await core.complete_connect(
            CompleteConnectCommand(state=started.state, error="access_denied", browser_binding="b")
        )
    assert core.db.authorizations == {}
    assert core.calendly.calls == []


async def test_a_replayed_code_leaves_the_existing_tokens_untouched(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    before = core.db.connections["u"]
    code = next(iter(core.calendly.codes))  # the code used above, now spent
    started = await core.start_connect(StartConnectCommand(user_id="u", browser_binding="b"))
    with pytest.raises(AuthorizationStateInvalid, match="code"):
        await core.complete_connect(
            CompleteConnectCommand(state=started.state, code=code, browser_binding="b")
        )
    assert core.db.connections["u"] == before


async def test_nothing_is_kept_when_the_user_cannot_be_read(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    core.calendly.fail_next("current_user", CalendlyUnavailable(503, None))
    with pytest.raises(CalendlyUnavailable):
        await core.connect("u", ada)
    assert core.db.connections == {}
    assert core.calendly.count("revoke") == 1  # the unused grant is given back


async def test_an_account_connected_to_another_user_is_refused(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("first", ada)
    first = core.db.connections["first"]
    with pytest.raises(AccountAlreadyConnected):
        await core.connect("second", ada)
    assert "second" not in core.db.connections
    assert core.db.connections["first"] == first
    assert len(core.calendly.active_subscriptions(ada)) == 1


async def test_a_free_plan_keeps_the_connection_with_webhooks_unavailable(core: Core) -> None:
    fred = core.calendly.add_user("fred@example.com", paid=False)
    result = await core.connect("u", fred)
    assert result.connection.status is ConnectionStatus.ACTIVE
    assert result.connection.webhook_status is WebhookStatus.UNAVAILABLE_PLAN


async def test_connecting_again_adopts_the_working_subscription(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    writes = core.calendly.writes()
    await core.connect("u", ada)
    assert core.calendly.writes() == writes
    assert len(core.calendly.active_subscriptions(ada)) == 1


async def test_connecting_another_account_switches_explicitly_and_retires_the_old(
    core: Core,
) -> None:
    ada = core.calendly.add_user("ada@example.com")
    bob = core.calendly.add_user("bob@example.com")
    await core.connect("u", ada)
    result = await core.connect("u", bob)
    assert result.switched_account
    assert result.connection.calendly_user_uri == bob.uri
    assert core.calendly.active_subscriptions(ada) == []
    assert len(core.calendly.active_subscriptions(bob)) == 1


# ------------------------------------------------------------------ reconnect
async def test_reconnect_with_nothing_changed_reads_twice_and_writes_nothing(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    writes = core.db.writes
    core.calendly.calls.clear()
    result = await core.reconnect(ReconnectCommand(user_id="u"))
    assert result.outcome == "reconnected"
    assert core.calendly.calls == ["current_user", "list_subscriptions"]
    assert core.db.writes == writes


async def test_reconnect_refreshes_an_expired_token_without_oauth(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.clock.advance(timedelta(hours=3))
    core.calendly.calls.clear()
    result = await core.reconnect(ReconnectCommand(user_id="u"))
    assert result.outcome == "reconnected"
    assert core.calendly.calls == ["refresh", "current_user", "list_subscriptions"]


async def test_reconnect_refreshes_once_after_a_rejected_token(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.expire_tokens(ada)  # Calendly says 401 though our clock says fine
    core.calendly.calls.clear()
    result = await core.reconnect(ReconnectCommand(user_id="u"))
    assert result.outcome == "reconnected"
    assert core.calendly.calls[:3] == ["current_user", "refresh", "current_user"]


async def test_reconnect_with_a_dead_grant_asks_for_authorization(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.revoke_all(ada)
    result = await core.reconnect(ReconnectCommand(user_id="u", browser_binding="b"))
    assert result.outcome == "authorization_required"
    assert result.authorization_url is not None
    assert core.db.connections["u"].status is ConnectionStatus.NEEDS_REAUTH
    assert core.calendly.count("refresh") == 1  # no retry loop
    again = await core.reconnect(ReconnectCommand(user_id="u", browser_binding="b"))
    assert again.outcome == "authorization_required"
    assert core.calendly.count("refresh") == 1


async def test_reconnect_replaces_a_disabled_subscription_create_first(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    (old,) = core.calendly.active_subscriptions(ada)
    old.state = "disabled"
    core.calendly.calls.clear()
    await core.reconnect(ReconnectCommand(user_id="u"))
    active = core.calendly.active_subscriptions(ada)
    assert len(active) == 1
    assert active[0].uri != old.uri
    assert old.uri not in core.calendly.subscriptions
    calls = core.calendly.calls
    assert calls.index("create_subscription") < calls.index("delete_subscription")
    assert core.db.connections["u"].subscription_uri == active[0].uri


async def test_a_subscription_whose_key_we_lost_is_replaced_at_a_new_url(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    stored = core.db.connections["u"]
    core.db.connections["u"] = replace(stored, signing_key=None, subscription_uri=None)
    await core.reconnect(ReconnectCommand(user_id="u"))
    after = core.db.connections["u"]
    (active,) = core.calendly.active_subscriptions(ada)
    assert after.webhook_token != stored.webhook_token
    assert active.callback_url.endswith(after.webhook_token)
    assert after.signing_key is not None
    assert active.signing_key == after.signing_key.reveal()


async def test_reconnect_without_a_connection_starts_oauth(core: Core) -> None:
    result = await core.reconnect(ReconnectCommand(user_id="nobody", browser_binding="b"))
    assert result.outcome == "authorization_required"
    assert core.calendly.calls == []


# ----------------------------------------------------------------- disconnect
async def test_disconnect_deletes_revokes_and_wipes(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    result = await core.disconnect(DisconnectCommand(user_id="u"))
    stored = core.db.connections["u"]
    assert stored.status is ConnectionStatus.DISCONNECTED
    assert stored.tokens is None
    assert stored.signing_key is None
    assert result.subscription_deleted
    assert not result.revoke_failed
    assert core.calendly.active_subscriptions(ada) == []
    assert all(g.revoked for g in core.calendly.grants if g.user is ada and not g.refresh_used)
    core.calendly.calls.clear()
    again = await core.disconnect(DisconnectCommand(user_id="u"))
    assert again.already_disconnected
    assert core.calendly.calls == []


async def test_disconnect_wipes_even_when_revoke_fails(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.fail_next("revoke", CalendlyUnavailable(500, None))
    result = await core.disconnect(DisconnectCommand(user_id="u"))
    assert result.revoke_failed
    assert core.db.connections["u"].tokens is None
    assert core.calendly.active_subscriptions(ada) == []


async def test_disconnect_keeps_everything_when_calendly_is_down(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.fail_next("delete_subscription", CalendlyUnavailable(503, None))
    with pytest.raises(CalendlyUnavailable):
        await core.disconnect(DisconnectCommand(user_id="u"))
    assert core.db.connections["u"].status is ConnectionStatus.ACTIVE
    await core.disconnect(DisconnectCommand(user_id="u"))
    after = core.db.connections["u"]
    assert after.status is ConnectionStatus.DISCONNECTED


async def test_a_subscription_already_gone_counts_as_deleted(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.subscriptions.clear()
    result = await core.disconnect(DisconnectCommand(user_id="u"))
    assert result.subscription_deleted


# -------------------------------------------------------------------- refresh
async def test_concurrent_refreshes_call_the_token_endpoint_once(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.clock.advance(timedelta(hours=2))
    results = await asyncio.gather(*(core.tokens.access_token("u") for _ in range(10)))
    assert core.calendly.count("refresh") == 1
    assert len({token.reveal() for _, token in results}) == 1


async def test_a_rejected_refresh_marks_needs_reauth_once(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.revoke_all(ada)
    core.clock.advance(timedelta(hours=2))
    with pytest.raises(ReauthorizationRequired):
        await core.tokens.access_token("u")
    with pytest.raises(ReauthorizationRequired):
        await core.tokens.access_token("u")
    assert core.calendly.count("refresh") == 1
    assert core.db.connections["u"].status is ConnectionStatus.NEEDS_REAUTH


async def test_a_401_is_retried_once_after_refreshing(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.calendly.fail_next("current_user", TokenRejected(401, None), times=2)
    with pytest.raises(ReauthorizationRequired):  # refused fresh too: a dead grant (issue 16)
        await core.tokens.call("u", core.calendly.current_user)
    assert core.calendly.count("refresh") == 1
    assert core.db.connections["u"].status is ConnectionStatus.NEEDS_REAUTH


# ------------------------------------------- a grant is never dropped (issue 10, row 33)
def fail_storage_after_the_next_refresh(core: Core) -> None:
    """The database dies between Calendly's answer to a refresh and the commit."""

    def down() -> None:
        core.db.unavailable = True

    core.calendly.on_answer["refresh"] = down


async def test_a_grant_issued_while_the_database_fails_is_stored_when_it_returns(
    core: Core,
) -> None:
    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    core.clock.advance(timedelta(hours=2))
    spent = core.db.connections["u"].tokens
    fail_storage_after_the_next_refresh(core)
    refreshing = asyncio.create_task(core.tokens("u"))
    await asyncio.sleep(0.3)  # the refresh was answered; storing it keeps failing meanwhile
    assert core.calendly.count("refresh") == 1
    assert core.db.unavailable  # the hook ran: the database failed after Calendly's answer
    assert not refreshing.done()
    assert core.db.connections["u"].tokens == spent
    core.db.unavailable = False
    stored = await asyncio.wait_for(refreshing, 10)
    assert stored.status is ConnectionStatus.ACTIVE
    assert stored.tokens is not None
    assert stored.tokens != spent
    assert core.db.connections["u"].tokens == stored.tokens
    # The stored pair is the live one: the next refresh works (no invalid_grant).
    core.clock.advance(timedelta(hours=2))
    again = await core.tokens("u")
    assert again.status is ConnectionStatus.ACTIVE
    assert core.calendly.count("refresh") == 2


async def test_a_long_outage_answers_unavailable_and_the_grant_is_still_stored(
    core: Core,
) -> None:
    from domain.usecases.refresh_access_token import RefreshAccessToken

    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    tokens = RefreshAccessToken(core.db.factory(), core.calendly, core.clock, store_wait=0.2)
    core.clock.advance(timedelta(hours=2))
    fail_storage_after_the_next_refresh(core)
    with pytest.raises(StorageUnavailable):
        await tokens("u")
    # Meanwhile nobody in this process refreshes with the spent token.
    with pytest.raises(StorageUnavailable):
        await tokens.access_token("u")
    assert core.calendly.count("refresh") == 1
    spent = core.db.connections["u"].tokens
    core.db.unavailable = False
    for _ in range(100):  # the keeper retries with back-off; bounded wait for it
        if core.db.connections["u"].tokens != spent:
            break
        await asyncio.sleep(0.1)
    connection, _ = await tokens.access_token("u")
    assert connection.status is ConnectionStatus.ACTIVE
    assert core.calendly.count("refresh") == 1  # the kept grant, not a second refresh


async def test_a_stopping_process_stores_kept_grants_or_names_the_users_it_loses(
    core: Core,
) -> None:
    from domain.usecases.refresh_access_token import RefreshAccessToken

    ada = core.calendly.add_user("ada@example.com")
    await core.connect("u", ada)
    tokens = RefreshAccessToken(core.db.factory(), core.calendly, core.clock, store_wait=0.1)
    core.clock.advance(timedelta(hours=2))
    fail_storage_after_the_next_refresh(core)
    with pytest.raises(StorageUnavailable):
        await tokens("u")
    assert await tokens.drain(0.2) == ["u"]  # still down: lost, and the caller is told who

    core.clock.advance(timedelta(hours=2))
    core.db.unavailable = False
    ben = core.calendly.add_user("ben@example.com")
    await core.connect("b", ben)
    core.clock.advance(timedelta(hours=2))
    fail_storage_after_the_next_refresh(core)
    with pytest.raises(StorageUnavailable):
        await tokens("b")
    core.db.unavailable = False
    assert await tokens.drain(10) == []  # the database came back: stored before the stop
    assert core.db.connections["b"].status is ConnectionStatus.ACTIVE


async def test_disconnect_revokes_the_kept_grant_not_the_spent_one(core: Core) -> None:
    # A free plan has no subscription to delete: nothing but the disconnect itself waits for
    # the kept grant before revoking.
    ada = core.calendly.add_user("ada@example.com", paid=False)
    await core.connect("u", ada)
    assert core.db.connections["u"].subscription_uri is None
    core.clock.advance(timedelta(hours=2))
    fail_storage_after_the_next_refresh(core)
    refreshing = asyncio.create_task(core.tokens("u"))
    await asyncio.sleep(0.2)
    core.db.unavailable = False
    await core.disconnect(DisconnectCommand(user_id="u"))
    await refreshing
    # The live grant (the kept one) is revoked: nothing stays usable after a disconnect.
    live = [g for g in core.calendly.grants if not g.refresh_used]
    assert len(live) == 1
    assert live[0].revoked


async def test_connected_since_is_reset_by_a_new_connect_after_a_disconnect(core: Core) -> None:
    ada = core.calendly.add_user("ada@example.com")
    first = await core.connect("user-a", ada)
    core.clock.advance(timedelta(days=3))
    again_while_connected = await core.connect("user-a", ada)
    core.clock.advance(timedelta(days=3))
    await core.disconnect(DisconnectCommand(user_id="user-a"))
    core.clock.advance(timedelta(days=3))
    after_disconnect = await core.connect("user-a", ada)
    core.clock.advance(timedelta(days=3))
    other_account = await core.connect("user-a", core.calendly.add_user("bo@example.com"))

    started = first.connection.connected_since
    assert again_while_connected.connection.connected_since == started
    assert after_disconnect.connection.connected_since == started + timedelta(days=9)
    assert other_account.connection.connected_since == started + timedelta(days=12)
