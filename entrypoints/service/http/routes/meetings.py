"""The signed-in user's meetings, as the webhooks reported them."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated

from litestar import get
from litestar.di import NamedDependency
from litestar.params import FromQuery, QueryParameter

from domain.meetings import MeetingStatus
from domain.ports import MeetingQuery
from domain.usecases.queries import MAX_PAGE, MeetingsPage
from entrypoints.service.http.cursors import (
    MAX_CURSOR_LENGTH,
    InvalidCursor,
    Keyset,
    MeetingCursors,
)
from entrypoints.service.http.errors import invalid_parameter, problem_specs
from entrypoints.service.http.schemas import MeetingResponse, MeetingsResponse
from entrypoints.services import Services

# RFC 3339 (the OpenAPI `date-time` format) only: Litestar's own conversion to datetime also
# took numbers ("0.5" as a Unix time), which the document does not allow.
_DATE_TIME = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})?", re.ASCII
)


def _aware(name: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    if not _DATE_TIME.fullmatch(value):
        raise invalid_parameter(name, "not a date-time, e.g. 2030-01-01T00:00:00Z")
    if value[-1] in "Zz" or value[-6] in "+-":
        try:
            return datetime.fromisoformat(value.upper())
        except ValueError as exc:
            raise invalid_parameter(name, "not a date-time, e.g. 2030-01-01T00:00:00Z") from exc
    raise invalid_parameter(name, "include a UTC offset, e.g. 2030-01-01T00:00:00Z")


def _keyset(cursors: MeetingCursors, cursor: str | None) -> Keyset | None:
    if cursor is None:
        return None
    try:
        return cursors.decode(cursor)
    except InvalidCursor as exc:
        raise invalid_parameter("cursor", str(exc)) from exc


# The filters and paging of a meetings list, shared with the server API's
# `GET /v1/users/{user_id}/meetings` (routes/server_api.py).
StartsAfter = Annotated[
    str | None,
    QueryParameter(
        description="Only meetings starting at or after this instant", format="date-time"
    ),
]
StartsBefore = Annotated[
    str | None,
    QueryParameter(description="Only meetings starting before this instant", format="date-time"),
]
Cursor = Annotated[
    str | None,
    QueryParameter(
        description="`next_cursor` of the previous page",
        min_length=1,
        max_length=MAX_CURSOR_LENGTH,
        pattern=r"^[A-Za-z0-9_-]+$",
    ),
]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE, description="Page size")]


def meeting_query(
    cursors: MeetingCursors,
    *,
    status: MeetingStatus | None,
    starts_after: str | None,
    starts_before: str | None,
    cursor: str | None,
    limit: int,
) -> MeetingQuery:
    """The query the parameters ask for; a 400 naming the parameter that is wrong."""
    return MeetingQuery(
        status=status,
        starts_after=_aware("starts_after", starts_after),
        starts_before=_aware("starts_before", starts_before),
        after=_keyset(cursors, cursor),
        limit=limit,
    )


def meetings_response(cursors: MeetingCursors, page: MeetingsPage) -> MeetingsResponse:
    return MeetingsResponse(
        meetings=tuple(MeetingResponse.of(view) for view in page.meetings),
        next_cursor=cursors.encode(page.next_after) if page.next_after else None,
    )


@get(
    "/api/meetings",
    operation_id="listMeetings",
    tags=["meetings"],
    responses=problem_specs(400, 401, 503),
)
async def list_meetings(
    services: NamedDependency[Services],
    user_id: NamedDependency[str],
    cursors: NamedDependency[MeetingCursors],
    status: FromQuery[MeetingStatus | None] = None,
    starts_after: StartsAfter = None,
    starts_before: StartsBefore = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> MeetingsResponse:
    """The user's meetings by start time, with their invitees; page on with `next_cursor`."""
    query = meeting_query(
        cursors,
        status=status,
        starts_after=starts_after,
        starts_before=starts_before,
        cursor=cursor,
        limit=limit,
    )
    return meetings_response(cursors, await services.list_meetings(user_id, query))
