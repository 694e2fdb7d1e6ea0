"""The server API for the host's back end (`/v1`, API keys only; DR-30).

Every user's connection, one user's connection and meetings, a disconnect or an erasure on a
user's behalf, and user sessions for hosts without JWTs of their own. The router in app.py
authenticates the key before any of these runs and checks the scope each names in its `opt`
(none named: `write`). The change feed, `GET /v1/changes`, is here too (DR-31).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated, Final

import msgspec
import structlog
from litestar import delete, get, post
from litestar.di import NamedDependency
from litestar.openapi.spec import Reference, RequestBody, Schema
from litestar.params import FromQuery, JSONBody, Parameter, QueryParameter

from domain.api_keys import ApiKeyScope
from domain.changes import Change, ChangePosition
from domain.meetings import MeetingStatus
from domain.model import MAX_USER_ID_LENGTH, ConnectionStatus, is_user_id
from domain.ports import ConnectionListQuery
from domain.usecases.disconnect import DisconnectCommand
from domain.usecases.views import ConnectionView
from entrypoints.service.http.auth import API_KEY_SCOPE
from entrypoints.service.http.cursors import InvalidCursor, MeetingCursors
from entrypoints.service.http.errors import invalid_parameter, problem_specs
from entrypoints.service.http.openapi import OptionalBodyOperation
from entrypoints.service.http.routes.meetings import (
    Cursor,
    Limit,
    StartsAfter,
    StartsBefore,
    meeting_query,
    meetings_response,
)
from entrypoints.service.http.schemas import (
    ChangeResponse,
    ChangesResponse,
    ConnectionsResponse,
    DisconnectResponse,
    ErasureResponse,
    MeetingResponse,
    MeetingsResponse,
    SessionRequest,
    SessionResponse,
    UserConnectionResponse,
)
from entrypoints.service.http.sessions import UserSessions
from entrypoints.services import Services

log = structlog.get_logger(__name__)

READS: Final = {API_KEY_SCOPE: ApiKeyScope.READ}
WRITES: Final = {API_KEY_SCOPE: ApiKeyScope.WRITE}
TAGS: Final = ["server api"]

# `is_user_id` as a JSON Schema (ECMA-262) pattern: every character printable as Python's
# `str.isprintable` has it, i.e. no control, format, surrogate, private-use or unassigned one
# (`\p{C}`) and no separator (`\p{Z}`) but the space. Documented only: Python's `re` has no `\p`,
# and `_user` checks the id and names it when it is wrong.
USER_ID_PATTERN: Final = r"^(?:[^\p{C}\p{Z}]| )+$"
UserId = Annotated[
    str,
    Parameter(
        description="The app user's id, as the host's sign-in names it (its `sub`): 1 to 255 "
        "printable characters, percent-encoded in the path",
        min_length=1,
        max_length=MAX_USER_ID_LENGTH,
        schema_extra={"pattern": USER_ID_PATTERN},
    ),
]


def _user(user_id: str) -> str:
    """The path's user id, if it is one the service accepts; else a 400 naming it."""
    if not is_user_id(user_id):
        raise invalid_parameter(
            "user_id",
            f"a user id has 1 to {MAX_USER_ID_LENGTH} printable characters",
            source="path",
        )
    structlog.contextvars.bind_contextvars(user_id=user_id)
    return user_id


@get(
    "/connections",
    operation_id="serverListConnections",
    tags=TAGS,
    opt=READS,
    responses=problem_specs(400, 401, 503),
)
async def list_connections(
    services: NamedDependency[Services],
    connection_cursors: NamedDependency[MeetingCursors],
    status: FromQuery[ConnectionStatus | None] = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> ConnectionsResponse:
    """Every user's connection (never a token), oldest first; page on with `next_cursor`.

    Each carries its `user_id`. `status` keeps only connections in that state. A connection
    made while you page appears on a later page; none is listed twice.
    """
    after = None
    if cursor is not None:
        try:
            start, connection_id = connection_cursors.decode(cursor)
        except InvalidCursor as exc:
            raise invalid_parameter("cursor", str(exc)) from exc
        if start is None:
            raise invalid_parameter("cursor", "the cursor is not one this service issued")
        after = (start, connection_id)
    page = await services.list_connections(
        ConnectionListQuery(status=status, after=after, limit=limit)
    )
    return ConnectionsResponse(
        connections=tuple(
            UserConnectionResponse.of_user(item.user_id, item.connection)
            for item in page.connections
        ),
        next_cursor=connection_cursors.encode(page.next_after) if page.next_after else None,
    )


@get(
    "/users/{user_id:str}/connection",
    operation_id="serverGetConnection",
    tags=TAGS,
    opt=READS,
    responses=problem_specs(400, 401, 404, 503),
)
async def get_connection(
    services: NamedDependency[Services], user_id: UserId
) -> UserConnectionResponse:
    """One user's connection (never a token); 404 when the user never connected."""
    user = _user(user_id)
    return UserConnectionResponse.of_user(user, await services.connection_status(user))


@delete(
    "/users/{user_id:str}/connection",
    operation_id="serverDisconnect",
    tags=TAGS,
    opt=WRITES,
    status_code=200,
    responses=problem_specs(400, 401, 403, 502, 503),
)
async def disconnect(services: NamedDependency[Services], user_id: UserId) -> DisconnectResponse:
    """Disconnect the user's Calendly on their behalf, as their own `DELETE
    /api/calendly/connection` does: the subscription deleted, the grant revoked, the tokens
    wiped, meetings kept. Idempotent (`already_disconnected`). Needs a `write` key.
    """
    result = await services.disconnect(DisconnectCommand(user_id=_user(user_id)))
    if result.revoke_failed:
        log.warning("calendly.revoke_failed", detail="local tokens were wiped anyway")
    log.info("server_api.disconnected", already=result.already_disconnected)
    return DisconnectResponse.of(result)


@get(
    "/users/{user_id:str}/meetings",
    operation_id="serverListMeetings",
    tags=TAGS,
    opt=READS,
    responses=problem_specs(400, 401, 503),
)
async def list_meetings(
    services: NamedDependency[Services],
    cursors: NamedDependency[MeetingCursors],
    user_id: UserId,
    status: FromQuery[MeetingStatus | None] = None,
    starts_after: StartsAfter = None,
    starts_before: StartsBefore = None,
    cursor: Cursor = None,
    limit: Limit = 50,
) -> MeetingsResponse:
    """The user's meetings as `GET /api/meetings` answers them to the user: the same filters,
    order and paging (empty for a user who never connected)."""
    user = _user(user_id)
    query = meeting_query(
        cursors,
        status=status,
        starts_after=starts_after,
        starts_before=starts_before,
        cursor=cursor,
        limit=limit,
    )
    return meetings_response(cursors, await services.list_meetings(user, query))


@dataclass
class SessionOperation(OptionalBodyOperation):
    """The body is `SessionRequest` and nothing more: it forbids unknown members (a 400), which
    Litestar leaves out of the document, so its fields are said to be its only members here."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.request_body, RequestBody):
            return
        members: dict[str, Schema | Reference] = {
            name: Schema() for name in SessionRequest.__struct_encode_fields__
        }
        for media in (self.request_body.content or {}).values():
            body = media.schema
            if isinstance(body, Schema) and body.one_of:  # SessionRequest's component or null
                body.one_of = [
                    Schema(all_of=[schema], properties=members, additional_properties=False)
                    if isinstance(schema, Reference)
                    else schema
                    for schema in body.one_of
                ]


@post(
    "/users/{user_id:str}/sessions",
    operation_id="serverCreateSession",
    tags=TAGS,
    opt=WRITES,
    status_code=201,
    responses=problem_specs(400, 401, 403, 503),
    operation_class=SessionOperation,
)
async def create_session(
    sessions: NamedDependency[UserSessions],
    user_id: UserId,
    data: JSONBody[SessionRequest | None] = None,
) -> SessionResponse:
    """A short-lived token for the user (15 minutes unless `ttl_seconds`, 60 to 3600).

    Hand it to the user's browser: `/api/...` and the live stream take it as they take the
    host's own tokens (the JS client's `getToken`), so a host with cookie sessions needs no JWT
    set-up. It is refused on `/v1`. Needs a `write` key.
    """
    user = _user(user_id)
    ttl = (data or SessionRequest()).ttl_seconds
    token, expires_at = sessions.issue(user, timedelta(seconds=ttl))
    log.info("server_api.session_issued", ttl_seconds=ttl)
    return SessionResponse(user_id=user, access_token=token, expires_at=expires_at)


@delete(
    "/users/{user_id:str}",
    operation_id="serverEraseUser",
    tags=TAGS,
    opt=WRITES,
    status_code=200,
    responses=problem_specs(400, 401, 403, 409, 502, 503),
)
async def erase_user(services: NamedDependency[Services], user_id: UserId) -> ErasureResponse:
    """Erase the user: disconnect at Calendly (the subscription deleted, the grant revoked),
    then delete their connection, meetings, invitees, recorded deliveries and every other row
    kept for them. Answers what was removed. Idempotent: a user erased before, or never seen,
    answers 200 with `already_disconnected` and zero counts. If Calendly cannot be reached
    while a subscription exists, nothing is deleted (502/503): try again. Needs a `write` key.
    """
    user = _user(user_id)
    result = await services.erase_user(user)
    removed = msgspec.structs.asdict(result.erased)
    log.info("server_api.user_erased", **{f"removed_{k}": v for k, v in removed.items()})
    return ErasureResponse.of(user, result)


# A position in the change feed, `<transaction id>.<change id>`: a place to resume from, not a
# secret (an API key already reads everything), so not signed, and good for as long as the
# service runs: a back end may keep it for days. "0.0" is the beginning.
_CHANGE_CURSOR: Final = re.compile(r"(0|[1-9][0-9]{0,19})\.(0|[1-9][0-9]{0,18})")
FEED_START: Final = ChangePosition(0, 0)
ChangeCursor = Annotated[
    str | None,
    QueryParameter(
        description="`next_cursor` of the previous page (or of any change); absent: from the "
        "beginning",
        min_length=3,
        max_length=40,
        pattern=r"^[0-9]+\.[0-9]+$",
    ),
]


def change_cursor(position: ChangePosition) -> str:
    return f"{position.xid}.{position.id}"


def _position(after: str | None) -> ChangePosition | None:
    if after is None:
        return None
    found = _CHANGE_CURSOR.fullmatch(after)
    if found is None or int(found[1]) >= 2**64 or int(found[2]) >= 2**63:
        raise invalid_parameter("after", "not a cursor of the change feed, e.g. 0.0")
    position = ChangePosition(int(found[1]), int(found[2]))
    return None if position == FEED_START else position


@get(
    "/changes",
    operation_id="serverListChanges",
    tags=TAGS,
    opt=READS,
    responses=problem_specs(400, 401, 410, 503),
)
async def list_changes(
    services: NamedDependency[Services],
    after: ChangeCursor = None,
    limit: Limit = 100,
) -> ChangesResponse:
    """Every change to any user's connection or meetings, in one order, from `after` on.

    Resume with `next_cursor` and you get every change committed since, none twice, whatever
    commits at the same time (a change appears once the transactions before it have ended).
    Each item names the user, a per-user sequence number, the event (`connection.connected`,
    `.reconnected`, `.disconnected`, `.needs_reauth`, `.recovered`, `.webhooks_disabled`,
    `.webhooks_unavailable_plan`, `.updated`; `meeting.created`, `.updated`, `.canceled`,
    `.rescheduled`; `invitee.no_show_set`, `.no_show_cleared`) and the connection or meeting
    as it is now. An empty page means nothing new yet: ask again later with `next_cursor`.
    A cursor older than the log keeps (CHANGE_LOG_RETENTION_DAYS) answers 410 `cursor-expired`:
    resync from /v1/connections and the users' meetings, then follow the feed from the start.
    """
    page = await services.read_changes(_position(after), limit)
    return ChangesResponse(
        changes=tuple(_change(change) for change in page.changes),
        next_cursor=change_cursor(page.next_after or FEED_START),
    )


def _change(change: Change) -> ChangeResponse:
    listed = change.connection
    return ChangeResponse(
        cursor=change_cursor(change.position),
        user_id=change.user_id,
        user_seq=change.user_seq,
        kind=change.kind,
        event=change.event,
        subject_id=change.subject_id,
        created_at=change.created_at,
        connection=(
            UserConnectionResponse.of_user(listed.user_id, ConnectionView.listed(listed))
            if listed is not None
            else None
        ),
        meeting=MeetingResponse.of(change.meeting) if change.meeting is not None else None,
    )
