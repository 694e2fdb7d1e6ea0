"""Complete the meetings whose deliveries lacked the event's details, from Calendly (DR-47)."""

from __future__ import annotations

from functools import partial

from domain.errors import PermissionDenied, ResourceNotFound
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
    cancel arriving meanwhile has the event read again). An event Calendly will not show (404,
    403) is marked unavailable, with the reason, and not read again until a delivery asks. Any
    other error propagates: the pass backs off and the requests stay.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        calendly: CalendlyApi,
        tokens: RefreshAccessToken,
        batch: int = BATCH,
    ) -> None:
        self._uow = uow
        self._calendly = calendly
        self._tokens = tokens
        self._batch = batch

    async def __call__(self, connection: Connection) -> tuple[int, bool]:
        """Completes up to a batch; returns how many events were read, and whether more may
        be waiting.

        Raises CalendlyError (other than for one event), ReauthorizationRequired.
        """
        async with self._uow(connection.user_id) as uow:
            wanted = await uow.meetings.wanting_details(connection.id, self._batch)
        for request in wanted:
            await self._complete(connection, request)
        return len(wanted), len(wanted) >= self._batch

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
        async with self._uow(connection.user_id) as uow:
            await uow.meetings.apply(connection, change)
            await uow.commit()
