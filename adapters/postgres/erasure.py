"""Everything stored about the tenant, deleted in one statement (an erasure, issue 13)."""

from __future__ import annotations

from typing import ClassVar, Final

from domain.ports import ErasedData, UserDataEraser

from .session import ReadOnly, Session

# Every table with a row keyed by an app user (tests/integration/test_erasure.py lists them
# from the catalogue and fails when one is missing here). Data-modifying CTEs all run, on the
# statement's snapshot: the unit of work takes the user's meetings lock before this statement,
# so no meeting of theirs can commit unseen in between. Meetings and the connection go in the
# same statement, so the foreign key from meetings (checked at its end) holds; invitees are
# found through their meetings (indexed), whose user they share. A disconnected connection has
# no route left; one is deleted here all the same (a data-modifying CTE runs unreferenced), and
# so are the processes' registrations as listeners for the user (DR-57): a process that still
# holds one of the user's streams registers it again at its next refresh.
# Recorded deliveries have no index by user (one would cost every delivery on the ingest path):
# erasing scans them.
# Kept on purpose: the last change numbers given to the user, of the change log and of their
# meetings (a user id and a number each, nothing of their Calendly), so numbers are never reused
# after an erasure (migrations/0011 and 0016, DR-36 and DR-52).
KEPT_TABLES: Final = ("change_log_users", "meeting_change_users")
ERASED_TABLES: Final = (
    "meeting_invitees",
    "meetings",
    "calendly_webhook_events",
    "calendly_oauth_states",
    "host_notifications",
    "connection_maintenance",
    "calendly_webhook_routes",
    "calendar_connections",
    "change_log",
    "host_webhook_streams",
    "live_watchers",
)
ERASE_USER = """
WITH invitees AS (
    DELETE FROM meeting_invitees
    WHERE meeting_id IN (SELECT id FROM meetings WHERE user_id = %(user_id)s)
    RETURNING 1
),
meetings AS (DELETE FROM meetings WHERE user_id = %(user_id)s RETURNING 1),
deliveries AS (DELETE FROM calendly_webhook_events WHERE user_id = %(user_id)s RETURNING 1),
states AS (DELETE FROM calendly_oauth_states WHERE user_id = %(user_id)s RETURNING 1),
notifications AS (DELETE FROM host_notifications WHERE user_id = %(user_id)s RETURNING 1),
maintenance AS (DELETE FROM connection_maintenance WHERE user_id = %(user_id)s RETURNING 1),
routes AS (DELETE FROM calendly_webhook_routes WHERE user_id = %(user_id)s RETURNING 1),
connections AS (DELETE FROM calendar_connections WHERE user_id = %(user_id)s RETURNING 1),
changes AS (DELETE FROM change_log WHERE user_id = %(user_id)s RETURNING 1),
webhook_streams AS (DELETE FROM host_webhook_streams WHERE user_id = %(user_id)s RETURNING 1),
watchers AS (DELETE FROM live_watchers WHERE user_id = %(user_id)s RETURNING 1)
SELECT (SELECT count(*) FROM connections) AS connections,
       (SELECT count(*) FROM meetings) AS meetings,
       (SELECT count(*) FROM invitees) AS invitees,
       (SELECT count(*) FROM deliveries) AS webhook_deliveries,
       (SELECT count(*) FROM states) AS oauth_states,
       (SELECT count(*) FROM notifications) AS host_notifications,
       (SELECT count(*) FROM maintenance) AS maintenance,
       (SELECT count(*) FROM changes) AS changes
"""


class PostgresUserDataEraser(UserDataEraser):
    READ_ONLY: ClassVar[ReadOnly] = ReadOnly()

    def __init__(self, session: Session) -> None:
        self._session = session

    async def erase(self, user_id: str) -> ErasedData:
        cursor = await self._session.execute(ERASE_USER, {"user_id": user_id})
        row = await cursor.fetchone()
        assert row is not None  # an aggregate answers one row
        return ErasedData(
            connections=row["connections"],
            meetings=row["meetings"],
            invitees=row["invitees"],
            webhook_deliveries=row["webhook_deliveries"],
            oauth_states=row["oauth_states"],
            host_notifications=row["host_notifications"],
            maintenance=row["maintenance"],
            changes=row["changes"],
        )
