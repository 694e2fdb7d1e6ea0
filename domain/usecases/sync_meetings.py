"""Reconcile a user's meetings with Calendly: what webhooks missed, polling for free plans."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

from domain.meetings import Invitee, Meeting
from domain.model import Connection
from domain.ports import CalendlyApi, Clock, MeetingChange, UnitOfWorkFactory
from domain.usecases.refresh_access_token import RefreshAccessToken

# Calendly filters on a meeting's start, not on when it changed: looking back this far before
# the last sync sees late cancellations and no-shows of the meetings around it; every later
# meeting is always read. Never further back than the first backfill.
LOOK_BACK = timedelta(days=7)
FIRST_BACKFILL = timedelta(days=30)


class SyncMeetings:
    """Reads the user's scheduled events and their invitees and merges them by URI.

    The merge is the same as for webhooks, so webhook and backfill data converge to the same
    rows and nothing is duplicated, whatever arrives first.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        calendly: CalendlyApi,
        tokens: RefreshAccessToken,
        clock: Clock,
        look_back: timedelta = LOOK_BACK,
        first_backfill: timedelta = FIRST_BACKFILL,
    ) -> None:
        self._uow = uow
        self._calendly = calendly
        self._tokens = tokens
        self._clock = clock
        self._look_back = look_back
        self._first_backfill = first_backfill

    async def __call__(self, user_id: str, synced_at: datetime | None) -> int:
        """Returns how many invitees were merged. Raises CalendlyError, ReauthorizationRequired."""
        now = self._clock.now()
        # A look-back before the last sync, not before now: a sync a week after the last still
        # sees what changed since then on the meetings that started just before it.
        since = (
            now - self._first_backfill
            if synced_at is None
            else max(now - self._first_backfill, min(now, synced_at) - self._look_back)
        )
        async with self._uow(user_id) as uow:
            connection = await uow.connections.get(user_id)
        if connection is None or not connection.is_connected or connection.account is None:
            return 0
        events = await self._tokens.call(
            user_id,
            partial(
                self._calendly.list_scheduled_events,
                user_uri=connection.account.user_uri,
                min_start_time=since,
            ),
        )
        merged = 0
        for meeting in events:
            invitees = await self._tokens.call(
                user_id, partial(self._calendly.list_invitees, event_uri=meeting.event_uri)
            )
            changes = [self._change(meeting, i, now) for i in invitees] or [
                MeetingChange(meeting=meeting)
            ]
            merged += await self._apply(connection, changes)
        return merged

    @staticmethod
    def _change(meeting: Meeting, invitee: Invitee, now: datetime) -> MeetingChange:
        # What Calendly says now about the no-show; when none is marked, "not marked as of
        # now" (an older mark arriving later by webhook then loses, as it should).
        observed_at = invitee.no_show_changed_at if invitee.no_show else now
        return MeetingChange(
            meeting=meeting, invitee=invitee, no_show=invitee.no_show, no_show_at=observed_at
        )

    async def _apply(self, connection: Connection, changes: list[MeetingChange]) -> int:
        async with self._uow(connection.user_id) as uow:
            for change in changes:
                await uow.meetings.apply(connection, change)
            await uow.commit()
        return sum(1 for c in changes if c.invitee is not None)
