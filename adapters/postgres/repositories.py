"""The repositories over psycopg 3: raw SQL beside the code that uses it, parameters bound."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
import psycopg
from psycopg.types.json import Jsonb

from adapters.text import storable, storable_json, storable_or_none
from domain.errors import AccountAlreadyConnected, ConcurrentUpdate
from domain.meetings import Cancellation, Invitee, Meeting, MeetingStatus
from domain.model import (
    CalendlyAccount,
    Connection,
    ConnectionStatus,
    PendingAuthorization,
    TokenSet,
    WebhookStatus,
)
from domain.ports import (
    AuthorizationRepository,
    ConnectionRepository,
    MaintenanceTrouble,
    MeetingChange,
    MeetingQuery,
    MeetingRepository,
    MeetingView,
    WebhookEventLog,
    WebhookOutcome,
)
from domain.secret import Secret

from .pool import out_of_range, within_range

if TYPE_CHECKING:
    from .unit_of_work import Session as Conn
    from .unit_of_work import TokenCipher

ONE_USER_PER_ACCOUNT = "calendar_connections_one_user_per_account"


# ------------------------------------------------------------------ connections
class ConnectionRow(msgspec.Struct, kw_only=True):
    id: str
    user_id: str
    status: ConnectionStatus
    calendly_user_uri: str | None
    calendly_organization_uri: str | None
    provider_account_email: str | None
    calendly_user_name: str | None
    access_token_enc: bytes | None
    refresh_token_enc: bytes | None
    token_expires_at: datetime | None
    webhook_status: WebhookStatus
    webhook_subscription_uri: str | None
    webhook_signing_key_enc: bytes | None
    webhook_token: str
    last_error: str | None
    version: int
    created_at: datetime
    updated_at: datetime


CONNECTION_COLUMNS = """
    id::text AS id, user_id, status, calendly_user_uri, calendly_organization_uri,
    provider_account_email, calendly_user_name, access_token_enc, refresh_token_enc,
    token_expires_at, webhook_status, webhook_subscription_uri, webhook_signing_key_enc,
    webhook_token, last_error, version, created_at, updated_at
"""
# A constant column list is formatted in; no input ever is.
SELECT_CONNECTION = f"""
SELECT {CONNECTION_COLUMNS} FROM calendar_connections
WHERE user_id = %(user_id)s AND provider = 'calendly'
"""  # noqa: S608
# The worker's trouble with the tenant's connection (the maintenance rows are not per tenant:
# hence the explicit filter).
SELECT_TROUBLE = """
SELECT failures, last_error, retry_at FROM connection_maintenance
WHERE user_id = %(user_id)s AND failures > 0
"""
INSERT_CONNECTION = """
INSERT INTO calendar_connections (
    id, user_id, status, calendly_user_uri, calendly_organization_uri, provider_account_email,
    calendly_user_name, access_token_enc, refresh_token_enc, token_expires_at, webhook_status,
    webhook_subscription_uri, webhook_signing_key_enc, webhook_token, last_error, version,
    created_at, updated_at
) VALUES (
    %(id)s, %(user_id)s, %(status)s, %(calendly_user_uri)s, %(calendly_organization_uri)s,
    %(provider_account_email)s, %(calendly_user_name)s, %(access_token_enc)s,
    %(refresh_token_enc)s, %(token_expires_at)s, %(webhook_status)s,
    %(webhook_subscription_uri)s, %(webhook_signing_key_enc)s, %(webhook_token)s,
    %(last_error)s, 1, %(created_at)s, %(updated_at)s
)
"""
UPDATE_CONNECTION = """
UPDATE calendar_connections SET
    status = %(status)s, calendly_user_uri = %(calendly_user_uri)s,
    calendly_organization_uri = %(calendly_organization_uri)s,
    provider_account_email = %(provider_account_email)s,
    calendly_user_name = %(calendly_user_name)s, access_token_enc = %(access_token_enc)s,
    refresh_token_enc = %(refresh_token_enc)s, token_expires_at = %(token_expires_at)s,
    webhook_status = %(webhook_status)s, webhook_subscription_uri = %(webhook_subscription_uri)s,
    webhook_signing_key_enc = %(webhook_signing_key_enc)s, webhook_token = %(webhook_token)s,
    last_error = %(last_error)s, updated_at = %(updated_at)s, version = version + 1
WHERE id = %(id)s AND version = %(version)s
RETURNING version
"""


def secret_context(connection_id: str, column: str) -> str:
    """What a sealed secret of a connection is bound to: its row and its column."""
    return f"calendar_connections:{connection_id}:{column}"


class PostgresConnectionRepository(ConnectionRepository):
    def __init__(self, conn: Conn, cipher: TokenCipher) -> None:
        self._conn = conn
        self._cipher = cipher

    async def get(self, user_id: str, *, for_update: bool = False) -> Connection | None:
        query = SELECT_CONNECTION + (" FOR UPDATE" if for_update else "")
        cursor = await self._conn.execute(query, {"user_id": user_id})
        row = await cursor.fetchone()
        return None if row is None else self._to_domain(msgspec.convert(row, ConnectionRow))

    async def add(self, connection: Connection) -> Connection:
        try:
            await self._conn.execute(INSERT_CONNECTION, self._to_row(connection))
        except psycopg.errors.UniqueViolation as exc:
            raise self._conflict(exc, connection) from exc
        return msgspec.structs.replace(connection, version=1)

    async def save(self, connection: Connection) -> Connection:
        try:
            cursor = await self._conn.execute(
                UPDATE_CONNECTION, {**self._to_row(connection), "version": connection.version}
            )
        except psycopg.errors.UniqueViolation as exc:
            raise self._conflict(exc, connection) from exc
        row = await cursor.fetchone()
        if row is None:
            raise ConcurrentUpdate(f"connection {connection.id} changed meanwhile")
        return msgspec.structs.replace(connection, version=row["version"])

    async def trouble(self, user_id: str) -> MaintenanceTrouble | None:
        cursor = await self._conn.execute(SELECT_TROUBLE, {"user_id": user_id})
        row = await cursor.fetchone()
        return None if row is None else msgspec.convert(row, MaintenanceTrouble)

    @staticmethod
    def _conflict(exc: psycopg.errors.UniqueViolation, connection: Connection) -> Exception:
        if exc.diag.constraint_name == ONE_USER_PER_ACCOUNT and connection.account is not None:
            return AccountAlreadyConnected(connection.account.user_uri)
        return ConcurrentUpdate(f"connection {connection.id} conflicts with a stored one")

    def _context(self, connection_id: str, column: str) -> str:
        return secret_context(connection_id, column)

    def _seal(self, connection_id: str, column: str, secret: Secret | None) -> bytes | None:
        if secret is None:
            return None
        return self._cipher.encrypt(secret, context=self._context(connection_id, column))

    def _open(self, connection_id: str, column: str, blob: bytes | None) -> Secret | None:
        if blob is None:
            return None
        return self._cipher.decrypt(blob, context=self._context(connection_id, column))

    def _to_row(self, c: Connection) -> dict[str, Any]:
        tokens, account = c.tokens, c.account
        return {
            "id": c.id,
            "user_id": c.user_id,
            "status": c.status.value,
            "calendly_user_uri": account.user_uri if account else None,
            "calendly_organization_uri": account.organization_uri if account else None,
            "provider_account_email": account.email if account else None,
            "calendly_user_name": account.name if account else None,
            "access_token_enc": self._seal(
                c.id, "access_token", tokens.access_token if tokens else None
            ),
            "refresh_token_enc": self._seal(
                c.id, "refresh_token", tokens.refresh_token if tokens else None
            ),
            "token_expires_at": tokens.expires_at if tokens else None,
            "webhook_status": c.webhook_status.value,
            "webhook_subscription_uri": c.subscription_uri,
            "webhook_signing_key_enc": self._seal(c.id, "signing_key", c.signing_key),
            "webhook_token": c.webhook_token,
            "last_error": c.last_error,
            "created_at": c.created_at,
            "updated_at": c.updated_at,
        }

    def _to_domain(self, row: ConnectionRow) -> Connection:
        access = self._open(row.id, "access_token", row.access_token_enc)
        refresh = self._open(row.id, "refresh_token", row.refresh_token_enc)
        tokens = (
            TokenSet(access_token=access, refresh_token=refresh, expires_at=row.token_expires_at)
            if access is not None and refresh is not None and row.token_expires_at is not None
            else None
        )
        account = (
            CalendlyAccount(
                user_uri=row.calendly_user_uri,
                organization_uri=row.calendly_organization_uri,
                email=row.provider_account_email or "",
                name=row.calendly_user_name,
            )
            if row.calendly_user_uri and row.calendly_organization_uri
            else None
        )
        return Connection(
            id=row.id,
            user_id=row.user_id,
            status=row.status,
            account=account,
            tokens=tokens,
            webhook_status=row.webhook_status,
            subscription_uri=row.webhook_subscription_uri,
            signing_key=self._open(row.id, "signing_key", row.webhook_signing_key_enc),
            webhook_token=row.webhook_token,
            version=row.version,
            last_error=row.last_error,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


# ------------------------------------------------------------ OAuth round trips
INSERT_AUTHORIZATION = """
WITH expired AS (DELETE FROM calendly_oauth_states WHERE expires_at < now() - interval '1 day')
INSERT INTO calendly_oauth_states
    (state, user_id, code_verifier_enc, browser_binding, created_at, expires_at)
VALUES (%(state)s, %(user_id)s, %(verifier)s, %(binding)s, %(created_at)s, %(expires_at)s)
"""
TAKE_AUTHORIZATION = """
DELETE FROM calendly_oauth_states WHERE state = %(state)s
RETURNING state, user_id, code_verifier_enc, browser_binding, created_at, expires_at
"""


class PostgresAuthorizationRepository(AuthorizationRepository):
    def __init__(self, conn: Conn, cipher: TokenCipher) -> None:
        self._conn = conn
        self._cipher = cipher

    async def add(self, pending: PendingAuthorization) -> None:
        verifier = self._cipher.encrypt(
            pending.code_verifier, context=f"calendly_oauth_states:{pending.state}"
        )
        await self._conn.execute(
            INSERT_AUTHORIZATION,
            {
                "state": pending.state,
                "user_id": pending.user_id,
                "verifier": verifier,
                "binding": pending.browser_binding,
                "created_at": pending.created_at,
                "expires_at": pending.expires_at,
            },
        )

    async def take(self, state: str) -> PendingAuthorization | None:
        cursor = await self._conn.execute(TAKE_AUTHORIZATION, {"state": state})
        row = await cursor.fetchone()
        if row is None:
            return None
        return PendingAuthorization(
            state=row["state"],
            user_id=row["user_id"],
            code_verifier=self._cipher.decrypt(
                row["code_verifier_enc"], context=f"calendly_oauth_states:{row['state']}"
            ),
            browser_binding=row["browser_binding"],
            created_at=row["created_at"],
            expires_at=row["expires_at"],
        )


# --------------------------------------------------------------------- meetings
# The merge rules of domain.meetings, done by Postgres in one statement so that concurrent
# deliveries for one meeting cannot lose each other's changes. Contract tests run the same
# sequences against this and against the in-memory fake that calls the domain's rules.
#
# The advisory lock per user makes one user's changes commit in the order of their change_seq
# values, so a reader that has seen change N can never later find a committed change below N
# (live updates resume from such a cursor). Selecting FROM it orders the lock before the insert.
# change_seq is the user's own counter: a BEFORE INSERT trigger (migrations/0005) sets the
# proposed row's to the user's highest + 1, and EXCLUDED carries it into the update.
APPLY_CHANGE = """
WITH serial AS (
    SELECT pg_advisory_xact_lock(hashtextextended('meetings:' || %(user_id)s, 0))
),
meeting AS (
    INSERT INTO meetings AS t (
        user_id, connection_id, event_uri, name, start_time, end_time, status, location,
        cancellation
    )
    SELECT %(user_id)s, %(connection_id)s, %(event_uri)s, %(name)s, %(start_time)s,
           %(end_time)s, %(status)s, %(location)s, %(cancellation)s
    FROM serial
    ON CONFLICT (connection_id, event_uri) DO UPDATE SET
        name = coalesce(EXCLUDED.name, t.name),
        start_time = coalesce(EXCLUDED.start_time, t.start_time),
        end_time = coalesce(EXCLUDED.end_time, t.end_time),
        status = CASE WHEN 'canceled' IN (t.status, EXCLUDED.status)
                      THEN 'canceled' ELSE 'active' END,
        location = coalesce(EXCLUDED.location, t.location),
        cancellation = coalesce(t.cancellation, EXCLUDED.cancellation),
        change_seq = EXCLUDED.change_seq,
        updated_at = now()
    RETURNING id
)
INSERT INTO meeting_invitees AS i (
    user_id, connection_id, meeting_id, invitee_uri, email, name, timezone, status,
    cancellation, rescheduled, old_invitee_uri, new_invitee_uri, no_show, no_show_changed_at
)
SELECT %(user_id)s, %(connection_id)s, meeting.id, %(invitee_uri)s, %(email)s, %(i_name)s,
       %(timezone)s, %(i_status)s, %(i_cancellation)s, %(rescheduled)s, %(old_invitee_uri)s,
       %(new_invitee_uri)s, coalesce(%(no_show)s, false), %(no_show_at)s
FROM meeting
WHERE %(invitee_uri)s::text IS NOT NULL
ON CONFLICT (connection_id, invitee_uri) DO UPDATE SET
    email = coalesce(EXCLUDED.email, i.email),
    name = coalesce(EXCLUDED.name, i.name),
    timezone = coalesce(EXCLUDED.timezone, i.timezone),
    status = CASE WHEN 'canceled' IN (i.status, EXCLUDED.status)
                  THEN 'canceled' ELSE 'active' END,
    cancellation = coalesce(i.cancellation, EXCLUDED.cancellation),
    rescheduled = i.rescheduled OR EXCLUDED.rescheduled,
    old_invitee_uri = coalesce(i.old_invitee_uri, EXCLUDED.old_invitee_uri),
    new_invitee_uri = coalesce(i.new_invitee_uri, EXCLUDED.new_invitee_uri),
    no_show = CASE WHEN %(no_show)s::boolean IS NOT NULL
                        AND (i.no_show_changed_at IS NULL
                             OR %(no_show_at)s::timestamptz > i.no_show_changed_at)
                   THEN %(no_show)s::boolean ELSE i.no_show END,
    no_show_changed_at = CASE WHEN %(no_show)s::boolean IS NOT NULL
                                   AND (i.no_show_changed_at IS NULL
                                        OR %(no_show_at)s::timestamptz > i.no_show_changed_at)
                              THEN %(no_show_at)s::timestamptz ELSE i.no_show_changed_at END,
    updated_at = now()
"""

MEETING_COLUMNS = """
SELECT m.id::text AS id, m.event_uri, m.name, m.start_time, m.end_time, m.status, m.location,
       m.cancellation, m.updated_at, m.change_seq,
       coalesce(
           (SELECT json_agg(json_build_object(
                       'invitee_uri', i.invitee_uri, 'email', i.email, 'name', i.name,
                       'timezone', i.timezone, 'status', i.status,
                       'cancellation', i.cancellation, 'rescheduled', i.rescheduled,
                       'old_invitee_uri', i.old_invitee_uri,
                       'new_invitee_uri', i.new_invitee_uri, 'no_show', i.no_show,
                       'no_show_changed_at', i.no_show_changed_at)
                   ORDER BY i.created_at, i.invitee_uri)
            FROM meeting_invitees i WHERE i.meeting_id = m.id),
           '[]'::json) AS invitees
FROM meetings m
"""
LIST_MEETINGS = (
    MEETING_COLUMNS
    + """
WHERE m.user_id = %(user_id)s
  AND (%(status)s::text IS NULL OR m.status = %(status)s::text)
  AND (%(starts_after)s::timestamptz IS NULL OR m.start_time >= %(starts_after)s::timestamptz)
  AND (%(starts_before)s::timestamptz IS NULL OR m.start_time < %(starts_before)s::timestamptz)
  AND (%(after_id)s::text IS NULL
       OR (coalesce(m.start_time, 'infinity'::timestamptz), m.id)
          > (coalesce(%(after_start)s::timestamptz, 'infinity'::timestamptz),
             %(after_id)s::uuid))
ORDER BY coalesce(m.start_time, 'infinity'::timestamptz), m.id
LIMIT %(limit)s
"""
)
CHANGED_MEETINGS = (
    MEETING_COLUMNS
    + """
WHERE m.user_id = %(user_id)s AND m.change_seq > %(after)s
ORDER BY m.change_seq
LIMIT %(limit)s
"""
)
LATEST_CHANGE = """
SELECT coalesce(max(change_seq), 0) AS latest FROM meetings WHERE user_id = %(user_id)s
"""


# Reading never fails on what is stored (RELIABILITY row 34): timestamptz columns come clamped
# by the pool's loader (pool.clamp_times); times inside JSON (the invitees' no-show time, as
# json_build_object writes it, and jsonb cancellations) and jsonb shapes are read leniently here.
class InviteeRow(msgspec.Struct, kw_only=True):
    invitee_uri: str
    email: str | None = None
    name: str | None = None
    timezone: str | None = None
    status: MeetingStatus
    cancellation: Any = None
    rescheduled: bool = False
    old_invitee_uri: str | None = None
    new_invitee_uri: str | None = None
    no_show: bool = False
    no_show_changed_at: str | None = None


class MeetingRow(msgspec.Struct, kw_only=True):
    id: str
    event_uri: str
    name: str | None
    start_time: datetime | None
    end_time: datetime | None
    status: MeetingStatus
    location: Any
    cancellation: Any
    updated_at: datetime
    change_seq: int
    invitees: list[InviteeRow]


def _moment(value: object) -> datetime | None:
    """A time read from JSON: past datetime's range, the nearest bound; not a time, None."""
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return out_of_range(value)
    return within_range(moment if moment.tzinfo else moment.replace(tzinfo=UTC))


def _cancellation(value: object) -> Cancellation | None:
    if not isinstance(value, dict):
        return None

    def text(key: str) -> str | None:
        found = value.get(key)
        return found if isinstance(found, str) else None

    return Cancellation(
        canceled_by=text("canceled_by"),
        reason=text("reason"),
        canceler_type=text("canceler_type"),
        canceled_at=_moment(value.get("canceled_at")),
    )


def _invitee(row: InviteeRow, event_uri: str) -> Invitee:
    return Invitee(
        invitee_uri=row.invitee_uri,
        event_uri=event_uri,
        email=row.email,
        name=row.name,
        timezone=row.timezone,
        status=row.status,
        cancellation=_cancellation(row.cancellation),
        rescheduled=row.rescheduled,
        old_invitee_uri=row.old_invitee_uri,
        new_invitee_uri=row.new_invitee_uri,
        no_show=row.no_show,
        no_show_changed_at=_moment(row.no_show_changed_at),
    )


def _json(value: object) -> Jsonb | None:
    """A jsonb parameter Postgres accepts, whatever strings `value` holds (see `storable`)."""
    return None if value is None else Jsonb(storable_json(msgspec.to_builtins(value)))


class PostgresMeetingRepository(MeetingRepository):
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def apply(self, connection: Connection, change: MeetingChange) -> None:
        # Every source's meetings (webhooks, sync) are written here, so this is where their
        # text is made storable: a NUL or a lone surrogate would fail the statement, and then
        # every retry of it (RELIABILITY row 31).
        m, i = change.meeting, change.invitee
        await self._conn.execute(
            APPLY_CHANGE,
            {
                "user_id": connection.user_id,
                "connection_id": connection.id,
                "event_uri": storable(m.event_uri),
                "name": storable_or_none(m.name),
                "start_time": m.start_time,
                "end_time": m.end_time,
                "status": m.status.value,
                "location": _json(m.location),
                "cancellation": _json(m.cancellation),
                "invitee_uri": storable(i.invitee_uri) if i else None,
                "email": storable_or_none(i.email) if i else None,
                "i_name": storable_or_none(i.name) if i else None,
                "timezone": storable_or_none(i.timezone) if i else None,
                "i_status": i.status.value if i else None,
                "i_cancellation": _json(i.cancellation) if i else None,
                "rescheduled": i.rescheduled if i else False,
                "old_invitee_uri": storable_or_none(i.old_invitee_uri) if i else None,
                "new_invitee_uri": storable_or_none(i.new_invitee_uri) if i else None,
                "no_show": change.no_show,
                "no_show_at": change.no_show_at,
            },
        )

    async def list(self, user_id: str, query: MeetingQuery) -> Sequence[MeetingView]:
        after_start, after_id = query.after if query.after is not None else (None, None)
        cursor = await self._conn.execute(
            LIST_MEETINGS,
            {
                "user_id": user_id,
                "status": query.status.value if query.status else None,
                "starts_after": query.starts_after,
                "starts_before": query.starts_before,
                "after_start": after_start,
                "after_id": after_id,
                "limit": query.limit,
            },
        )
        return self._views(await cursor.fetchall())

    async def changed_since(self, user_id: str, after: int, limit: int) -> Sequence[MeetingView]:
        cursor = await self._conn.execute(
            CHANGED_MEETINGS, {"user_id": user_id, "after": after, "limit": limit}
        )
        return self._views(await cursor.fetchall())

    async def latest_change(self, user_id: str) -> int:
        cursor = await self._conn.execute(LATEST_CHANGE, {"user_id": user_id})
        row = await cursor.fetchone()
        return int(row["latest"]) if row else 0

    @staticmethod
    def _views(rows: Sequence[dict[str, Any]]) -> Sequence[MeetingView]:
        views = []
        for raw in rows:
            row = msgspec.convert(raw, MeetingRow, strict=False)
            meeting = Meeting(
                event_uri=row.event_uri,
                name=row.name,
                start_time=row.start_time,
                end_time=row.end_time,
                status=row.status,
                location=row.location if isinstance(row.location, dict) else None,
                cancellation=_cancellation(row.cancellation),
            )
            invitees = tuple(_invitee(i, row.event_uri) for i in row.invitees)
            views.append(
                MeetingView(
                    id=row.id,
                    meeting=meeting,
                    invitees=invitees,
                    updated_at=row.updated_at,
                    change_seq=row.change_seq,
                )
            )
        return views


# ----------------------------------------------------------- webhook deliveries
RECORD_EVENT = """
INSERT INTO calendly_webhook_events
    (event_id, event_type, payload, raw_payload, user_id, connection_id, outcome, reason)
VALUES (%(event_id)s, %(event_type)s, %(payload)s::jsonb, %(raw)s, %(user_id)s,
        %(connection_id)s, %(outcome)s, %(reason)s)
ON CONFLICT (event_id) DO NOTHING
"""
# No RETURNING: a row nobody may read (an unrouted delivery) could not be returned under RLS.


def _jsonb_text(body: bytes) -> str | None:
    """The body as text Postgres' jsonb accepts, or None (then it is kept as raw bytes)."""
    if b"\\u0000" in body:
        return None  # valid JSON, but jsonb refuses NUL characters
    try:
        msgspec.json.decode(body)
        return body.decode("utf-8")
    # RecursionError: nested deeper than msgspec may follow (RELIABILITY row 32).
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


class PostgresWebhookEventLog(WebhookEventLog):
    def __init__(self, conn: Conn) -> None:
        self._conn = conn

    async def record(
        self,
        *,
        event_id: str,
        event_type: str,
        payload: bytes,
        connection: Connection | None,
        outcome: WebhookOutcome,
        reason: str | None = None,
    ) -> bool:
        text = _jsonb_text(payload)
        cursor = await self._conn.execute(
            RECORD_EVENT,
            {
                # Made of the delivery's own text (its URIs, a decoder's message): storable.
                "event_id": storable(event_id),
                "event_type": storable(event_type),
                "payload": text,
                "raw": None if text is not None else payload,
                "user_id": connection.user_id if connection else None,
                "connection_id": connection.id if connection else None,
                "outcome": outcome,
                "reason": storable_or_none(reason),
            },
        )
        return cursor.rowcount == 1
