"""Erasure on real Postgres and the sandbox: all of one user goes, nothing of anyone else's."""

from __future__ import annotations

from typing import cast

from adapters.postgres.erasure import ERASED_TABLES, KEPT_TABLES
from domain.meetings import Invitee, Meeting
from domain.ports import ErasedData, MeetingChange, UnitOfWorkFactory
from domain.usecases.erase_user import EraseUser
from domain.usecases.start_connect import StartConnectCommand
from tests.support.real_core import RealCore, owner_sql, subscriptions

EV = "https://api.calendly.test/scheduled_events/"
INV = "https://api.calendly.test/invitees/"


def user_tables(core: RealCore) -> set[str]:
    """Every table of the schema with a `user_id` column: each holds rows kept for a user."""
    rows = owner_sql(
        core,
        "SELECT table_name FROM information_schema.columns"
        " WHERE table_schema = 'public' AND column_name = 'user_id'",
    )
    return {str(name) for (name,) in rows}


def rows_of(core: RealCore, user: str) -> dict[str, int]:
    """How many rows each user-keyed table holds for `user` (as the owner: no RLS)."""
    counts = {}
    for table in sorted(user_tables(core)):
        [(count,)] = owner_sql(core, f"SELECT count(*) FROM {table} WHERE user_id = %s", user)  # noqa: S608
        counts[table] = int(cast(int, count))
    return counts


async def fill(core: RealCore, user: str, email: str) -> None:
    """Everything a user leaves behind: a connection (its route and maintenance row), meetings
    with invitees, recorded deliveries, a pending OAuth round trip, a host notification, a
    process listening for the user's doorbells."""
    await core.connect(user, email)
    uow = cast(UnitOfWorkFactory, core.uow)
    async with uow(user) as tx:
        connection = await tx.connections.get(user)
        assert connection is not None
        for n in range(2):
            meeting = Meeting(event_uri=f"{EV}{user}-{n}", name="Chat")
            invitee = Invitee(invitee_uri=f"{INV}{user}-{n}", event_uri=meeting.event_uri)
            await tx.meetings.apply(connection, MeetingChange(meeting=meeting, invitee=invitee))
            await tx.webhook_events.record(
                event_id=f"{user}-delivery-{n}",
                event_type="invitee.created",
                payload=b"{}",
                connection=connection,
                outcome="applied",
            )
        await tx.commit()
    await core.start(StartConnectCommand(user_id=user))
    owner_sql(
        core,
        "INSERT INTO host_notifications (user_id, kind) VALUES (%s, 'connection.needs_reauth')",
        user,
    )
    owner_sql(core, "UPDATE connection_maintenance SET failures = 2 WHERE user_id = %s", user)
    owner_sql(core, "INSERT INTO live_watchers (user_id, process) VALUES (%s, 'p1')", user)
    owner_sql(
        core,
        "INSERT INTO host_webhook_endpoints (name, url, fan_xid) VALUES ('crm', 'https://a.test/',"
        " '0') ON CONFLICT DO NOTHING",
    )
    owner_sql(
        core,
        "INSERT INTO host_webhook_streams (endpoint, user_id, head_seq) VALUES ('crm', %s, 3)",
        user,
    )


async def test_erasure_covers_every_table_that_keeps_a_user(real: RealCore) -> None:
    assert user_tables(real) == set(ERASED_TABLES) | set(KEPT_TABLES), (
        "a table keyed by user_id is not erased: add it to ERASE_USER in adapters/postgres/"
        "erasure.py (and to ERASED_TABLES)"
    )


async def test_erasure_removes_all_of_the_user_and_nothing_of_anyone_else(real: RealCore) -> None:
    await fill(real, "alice", "alice@example.com")
    await fill(real, "bob", "bob@example.com")
    bob_before = rows_of(real, "bob")
    assert all(count > 0 for count in rows_of(real, "alice").values())
    erase = EraseUser(cast(UnitOfWorkFactory, real.uow), real.disconnect)

    result = await erase("alice")

    left = rows_of(real, "alice")
    # Only the last change numbers stay (a user id and a number each: 0011 and 0016, DR-36).
    assert {t: n for t, n in left.items() if t not in KEPT_TABLES} == {
        t: 0 for t in bob_before if t not in KEPT_TABLES
    }
    assert {t: left[t] for t in KEPT_TABLES} == dict.fromkeys(KEPT_TABLES, 1)
    assert rows_of(real, "bob") == bob_before
    erased = result.erased
    assert (erased.connections, erased.meetings, erased.invitees) == (1, 2, 2)
    assert (erased.webhook_deliveries, erased.oauth_states, erased.host_notifications) == (2, 1, 1)
    assert result.disconnect.subscription_deleted is True
    # At Calendly: alice's subscription is gone and her grant revoked; bob's are untouched.
    owners = [s["creator"] for s in await subscriptions(real) if s.get("state") == "active"]
    assert len(owners) == 1
    revokes = await real.sandbox.control("GET", "/_sandbox/calls?route=POST /oauth/revoke")
    assert len(revokes["calls"]) == 1
    again = await erase("alice")
    assert again.disconnect.already_disconnected is True
    assert again.erased == ErasedData()
