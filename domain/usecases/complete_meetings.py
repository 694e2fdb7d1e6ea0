"""Complete the meetings whose deliveries lacked the event's details, from Calendly (DR-47)."""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import partial

from domain.errors import CalendlyError, PermissionDenied, RateLimited, ResourceNotFound
from domain.meetings import Meeting
from domain.model import Connection
from domain.ports import CalendlyApi, DetailsWanted, MeetingChange, UnitOfWorkFactory
from domain.usecases.refresh_access_token import RefreshAccessToken

# Events read per worker pass: a connection with more waiting comes back at once for the rest,
# after the other connections due by then had their turn. Well inside a Free plan's 50 calls a
# minute even with the pass's other calls.
BATCH = 20


class CompleteMeetings:
    """Reads each wanted event (`GET /scheduled_events/{uuid}`) and merges it like a delivery.

    What the event says is merged by the same rules as a webhook's (canceled is terminal,
    known details never replaced by unknown ones), so a meeting's status comes from Calendly's
    event, never from a guess on one invitee: a group event one of two invitees left stays
    active. The request is met only if no delivery renewed it while the event was read (a
    cancel arriving meanwhile has the event read again).

    Each event's trouble stays its own: one Calendly will not show (404, 403) is marked
    unavailable, with the answer, and not read again until a delivery asks; one whose read
    fails otherwise (a 5xx, an answer that cannot be read) shows its error and is tried again
    after a back-off of its own, while the others are read and the pass goes on. Only what
    concerns every call stops the batch: a rate limit (RateLimited: the pass waits for the
    reset) and a grant Calendly no longer honours (ReauthorizationRequired).
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        calendly: CalendlyApi,
        tokens: RefreshAccessToken,
        batch: int = BATCH,
        retry_base: timedelta = timedelta(seconds=5),
        retry_max: timedelta = timedelta(minutes=30),
    ) -> None:
        self._uow = uow
        self._calendly = calendly
        self._tokens = tokens
        self._batch = batch
        # One meeting's failed read is tried again after this, doubling up to `retry_max`
        # (the worker's own back-off settings).
        self._retry_base = retry_base
        self._retry_max = retry_max

    async def __call__(self, connection: Connection) -> tuple[int, datetime | None]:
        """Reads up to a batch of the wanted events; returns how many reads were made and
        when the next is due (None: nothing is wanted any more).

        Raises RateLimited, ReauthorizationRequired.
        """
        async with self._uow(connection.user_id) as uow:
            wanted = await uow.meetings.wanting_details(connection.id, self._batch)
            if not wanted:  # the usual sync pass: one unit of work, no read
                return 0, await uow.meetings.next_details_due(connection.id)
        for request in wanted:
            await self._complete(connection, request)
        async with self._uow(connection.user_id) as uow:
            return len(wanted), await uow.meetings.next_details_due(connection.id)

    async def _complete(self, connection: Connection, request: DetailsWanted) -> None:
        try:
            meeting = await self._tokens.call(
                connection.user_id,
                partial(self._calendly.get_scheduled_event, event_uri=request.event_uri),
            )
            change = MeetingChange(meeting=meeting, details_for=request.requested_at)
        except (ResourceNotFound, PermissionDenied) as exc:
            change = MeetingChange(
                meeting=Meeting(event_uri=request.event_uri),
                details_for=request.requested_at,
                details_error=f"Calendly answered {exc.status} for this event",
            )
        except RateLimited:
            raise
        except CalendlyError as exc:
            async with self._uow(connection.user_id) as uow:
                await uow.meetings.postpone_details(
                    connection.id,
                    request,
                    _trouble(exc),
                    base=self._retry_base,
                    cap=self._retry_max,
                )
                await uow.commit()
            return
        async with self._uow(connection.user_id) as uow:
            await uow.meetings.apply(connection, change)
            await uow.commit()


def _trouble(exc: CalendlyError) -> str:
    """What the meeting shows while its read is retried (no body text: it is Calendly's)."""
    if 200 <= exc.status < 300:
        return "Calendly's answer for this event could not be read; trying again"
    if exc.status == 0:
        return "Calendly could not be reached for this event; trying again"
    return f"Calendly answered {exc.status} for this event; trying again"
