"""Host webhooks' storage (migrations/0009; DR-32, DR-34): the endpoints, their per-user streams
over the change log, and what the dispatcher and `calendly-connect host-webhooks` ask of them.

Every statement runs with the host scope and no tenant (the streams' `host_dispatches` policy,
the change log's `host_reads`), in its own short transaction: nothing here is held open while a
webhook is POSTed.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import msgspec
import psycopg
import psycopg_pool

from domain.changes import Change
from domain.errors import StorageUnavailable

from .changes import ChangeRow, with_snapshots
from .directory import HOST_SCOPE, READ_ONLY
from .unit_of_work import UNAVAILABLE

Pool = psycopg_pool.AsyncConnectionPool[Any]

# A new endpoint starts at the current end of the feed: every transaction below the snapshot's
# xmin has ended, so whatever it wrote is history; anything later is this endpoint's to send.
UPSERT_ENDPOINT: Final = """
INSERT INTO host_webhook_endpoints (name, url, event_types, fan_xid, fan_id)
VALUES (%(name)s, %(url)s, %(event_types)s, pg_snapshot_xmin(pg_current_snapshot()), 0)
ON CONFLICT (name) DO UPDATE SET url = excluded.url, event_types = excluded.event_types
"""
# Fan-out in one statement: lock the endpoint (another dispatcher holding it: nothing to do), read
# the next page of the log after its position and below the horizon (only transactions below the
# snapshot's xmin have all ended, so nothing can later appear before what is read), raise each
# user's stream head (a new stream begins just before the first of that user's changes seen here:
# history from before the endpoint existed is not sent; `replay` does that), move the position.
# Streams are written in user order, as SETTLE locks them, so the two never deadlock.
FAN_OUT: Final = """
WITH endpoint AS (
    SELECT name, fan_xid, fan_id FROM host_webhook_endpoints
    WHERE name = %(name)s FOR UPDATE SKIP LOCKED
), page AS (
    SELECT c.xid, c.id, c.user_id, c.user_seq FROM change_log c, endpoint e
    WHERE (c.xid, c.id) > (e.fan_xid, e.fan_id)
      AND c.xid < pg_snapshot_xmin(pg_current_snapshot())
    ORDER BY c.xid, c.id LIMIT %(limit)s
), heads AS (
    INSERT INTO host_webhook_streams (endpoint, user_id, head_seq, sent_seq)
    SELECT %(name)s, user_id, max(user_seq), min(user_seq) - 1 FROM page
    GROUP BY user_id ORDER BY user_id
    ON CONFLICT (endpoint, user_id) DO UPDATE
    SET head_seq = greatest(host_webhook_streams.head_seq, excluded.head_seq)
    RETURNING 1
), moved AS (
    UPDATE host_webhook_endpoints e SET fan_xid = last.xid, fan_id = last.id
    FROM (SELECT xid, id FROM page ORDER BY xid DESC, id DESC LIMIT 1) last
    WHERE e.name = %(name)s
    RETURNING 1
)
SELECT (SELECT count(*) FROM page) AS fanned, (SELECT count(*) FROM heads) AS streams,
       (SELECT count(*) FROM moved) AS moved
"""
# Due streams of one endpoint, leased: claimable when something is pending, its back-off is
# over, it is not parked, no live lease holds it, and the endpoint is neither disabled nor
# throttled.
CLAIM: Final = """
UPDATE host_webhook_streams s
SET lease_owner = %(owner)s, lease_until = now() + make_interval(secs => %(lease)s)
FROM (
    SELECT s.endpoint, s.user_id FROM host_webhook_streams s
    JOIN host_webhook_endpoints e ON e.name = s.endpoint
    WHERE s.endpoint = %(endpoint)s
      AND s.sent_seq < s.head_seq AND s.next_attempt_at <= now() AND s.parked_at IS NULL
      AND (s.lease_until IS NULL OR s.lease_until < now())
      AND e.disabled_at IS NULL AND (e.throttled_until IS NULL OR e.throttled_until <= now())
      AND NOT s.user_id = ANY(%(busy)s::text[])
    ORDER BY s.next_attempt_at
    FOR UPDATE OF s SKIP LOCKED
    LIMIT %(limit)s
) due
WHERE s.endpoint = due.endpoint AND s.user_id = due.user_id
RETURNING s.endpoint, s.user_id, s.sent_seq, s.head_seq, s.attempts
"""
# Each claimed stream's first page of pending changes: read by its own statement after the claim,
# so with a snapshot taken after the claim's (a head raised by a fan-out that committed before
# the claim saw it is backed by changes this snapshot sees; one statement would read the rows
# with its older snapshot and could miss the newest).
PAGES: Final = """
SELECT c.id, c.xid::text AS xid, c.user_id, c.user_seq, c.kind, c.subject_id::text AS subject_id,
       c.event, c.created_at
FROM unnest(%(users)s::text[], %(afters)s::bigint[], %(heads)s::bigint[])
     AS k (user_id, after, head)
CROSS JOIN LATERAL (
    SELECT * FROM change_log l
    WHERE l.user_id = k.user_id AND l.user_seq > k.after AND l.user_seq <= k.head
    ORDER BY l.user_seq LIMIT %(page)s
) c
ORDER BY c.user_id, c.user_seq
"""
ADVANCE: Final = """
UPDATE host_webhook_streams
SET sent_seq = greatest(sent_seq, %(seq)s), attempts = 0, failing_since = NULL, last_error = NULL,
    lease_until = now() + make_interval(secs => %(lease)s)
WHERE endpoint = %(endpoint)s AND user_id = %(user_id)s AND lease_owner = %(owner)s
"""
# Many streams' deliveries at once, each moved up to its own position, its failures forgotten, its
# lease ended and its turn moved to the back (a stream with more to send is due again, after the
# others); only where the owner still holds the lease. The rows are locked in (endpoint, user_id)
# order, as FAN_OUT writes them, so the two never deadlock.
SETTLE: Final = """
WITH done AS (
    SELECT s.endpoint, s.user_id, u.seq FROM host_webhook_streams s
    JOIN unnest(%(endpoints)s::text[], %(users)s::text[], %(seqs)s::bigint[])
         AS u (endpoint, user_id, seq) ON s.endpoint = u.endpoint AND s.user_id = u.user_id
    WHERE s.lease_owner = %(owner)s
    ORDER BY s.endpoint, s.user_id
    FOR UPDATE OF s
)
UPDATE host_webhook_streams s
SET sent_seq = greatest(s.sent_seq, done.seq), attempts = 0, failing_since = NULL,
    last_error = NULL, lease_owner = NULL, lease_until = NULL, next_attempt_at = now()
FROM done
WHERE s.endpoint = done.endpoint AND s.user_id = done.user_id
RETURNING s.endpoint, s.user_id
"""
SUCCEEDED: Final = """
UPDATE host_webhook_endpoints SET last_success_at = now(), last_error = NULL
WHERE name = %(endpoint)s
"""
# 5 s * 3^n, capped, jittered over the upper half (DR-22); never sooner than Retry-After. A
# stream failing for longer than `park_after` is parked: kept, never skipped, until `retry`.
BACK_OFF: Final = """
UPDATE host_webhook_streams
SET attempts = attempts + 1,
    last_error = %(error)s,
    failing_since = coalesce(failing_since, now()),
    next_attempt_at = now() + make_interval(secs => greatest(
        %(retry_after)s::float8,
        least(%(cap)s::float8, %(base)s::float8 * power(3, least(attempts, 30)))
        * (0.5 + 0.5 * %(jitter)s::float8))),
    parked_at = CASE WHEN coalesce(failing_since, now())
                          < now() - make_interval(secs => %(park_after)s) THEN now() END,
    lease_owner = NULL, lease_until = NULL
WHERE endpoint = %(endpoint)s AND user_id = %(user_id)s AND lease_owner = %(owner)s
RETURNING attempts, next_attempt_at, parked_at IS NOT NULL AS parked
"""
ENDPOINT_FAILED: Final = """
UPDATE host_webhook_endpoints
SET last_error = %(error)s,
    throttled_until = CASE WHEN %(throttle)s::float8 > 0
                           THEN now() + make_interval(secs => %(throttle)s::float8)
                           ELSE throttled_until END
WHERE name = %(endpoint)s
"""
DISABLE: Final = """
UPDATE host_webhook_endpoints SET disabled_at = now(), disabled_reason = %(reason)s,
    last_error = %(reason)s
WHERE name = %(endpoint)s AND disabled_at IS NULL
"""
ENABLE: Final = """
UPDATE host_webhook_endpoints SET disabled_at = NULL, disabled_reason = NULL,
    throttled_until = NULL
WHERE name = %(endpoint)s
"""
# Its streams go with it (ON DELETE CASCADE).
REMOVE: Final = """
DELETE FROM host_webhook_endpoints WHERE name = %(endpoint)s
"""
RETRY_STREAMS: Final = """
UPDATE host_webhook_streams
SET next_attempt_at = now(), parked_at = NULL, failing_since = NULL, attempts = 0
WHERE (%(endpoint)s::text IS NULL OR endpoint = %(endpoint)s)
  AND (sent_seq < head_seq OR parked_at IS NOT NULL)
"""
RETRY_ENDPOINTS: Final = """
UPDATE host_webhook_endpoints SET throttled_until = NULL
WHERE %(endpoint)s::text IS NULL OR name = %(endpoint)s
"""
# Back to the last change before `since`: for each user with a change since then (in the fanned-
# out part of the feed), its stream is moved back, or created.
REPLAY: Final = """
INSERT INTO host_webhook_streams (endpoint, user_id, head_seq, sent_seq, next_attempt_at)
SELECT e.name, c.user_id, max(c.user_seq),
       coalesce(max(c.user_seq) FILTER (WHERE c.created_at < %(since)s), 0), now()
FROM host_webhook_endpoints e
JOIN change_log c ON (c.xid, c.id) <= (e.fan_xid, e.fan_id)
WHERE (%(endpoint)s::text IS NULL OR e.name = %(endpoint)s)
  AND (%(user_id)s::text IS NULL OR c.user_id = %(user_id)s)
  AND c.user_id IN (SELECT user_id FROM change_log WHERE created_at >= %(since)s)
GROUP BY e.name, c.user_id
HAVING max(c.created_at) >= %(since)s
ON CONFLICT (endpoint, user_id) DO UPDATE
SET sent_seq = least(host_webhook_streams.sent_seq, excluded.sent_seq),
    head_seq = greatest(host_webhook_streams.head_seq, excluded.head_seq),
    next_attempt_at = now(), parked_at = NULL, failing_since = NULL, attempts = 0,
    -- A delivery under way would move the stream past the replay point: its lease ends here.
    lease_owner = NULL, lease_until = NULL
RETURNING endpoint
"""
# The dispatchers say they are alive where the workers do (the doctor tells them apart).
HEARTBEAT: Final = """
INSERT INTO worker_heartbeats (worker_id) VALUES (%(id)s)
ON CONFLICT (worker_id) DO UPDATE SET seen_at = now()
"""
DISPATCHER_PREFIX: Final = "host-webhooks:"
STATUS: Final = """
SELECT e.name, e.url, e.event_types, e.disabled_at, e.disabled_reason, e.throttled_until,
       e.last_error, e.last_success_at,
       coalesce(s.backlog, 0) AS backlog, coalesce(s.failing, 0) AS failing,
       coalesce(s.parked, 0) AS parked, s.streams_error,
       (SELECT count(*) FROM change_log c WHERE (c.xid, c.id) > (e.fan_xid, e.fan_id)) AS fan_lag,
       least(
           (SELECT min(c.created_at) FROM host_webhook_streams w
            JOIN change_log c ON c.user_id = w.user_id AND c.user_seq = w.sent_seq + 1
            WHERE w.endpoint = e.name AND w.sent_seq < w.head_seq),
           (SELECT min(c.created_at) FROM change_log c WHERE (c.xid, c.id) > (e.fan_xid, e.fan_id))
       ) AS oldest_undelivered
FROM host_webhook_endpoints e
LEFT JOIN (
    SELECT endpoint, sum(head_seq - sent_seq)::bigint AS backlog,
           count(*) FILTER (WHERE attempts > 0 AND parked_at IS NULL) AS failing,
           count(*) FILTER (WHERE parked_at IS NOT NULL) AS parked,
           max(last_error) AS streams_error
    FROM host_webhook_streams GROUP BY endpoint
) s ON s.endpoint = e.name
ORDER BY e.name
"""


class EndpointConfig(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    url: str
    event_types: tuple[str, ...] = ()


class ClaimedStream(msgspec.Struct, frozen=True, kw_only=True):
    endpoint: str
    user_id: str
    sent_seq: int
    head_seq: int
    attempts: int


class BackedOff(msgspec.Struct, frozen=True, kw_only=True):
    attempts: int
    next_attempt_at: datetime
    parked: bool


class EndpointStatus(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    url: str
    event_types: list[str]
    disabled_at: datetime | None
    disabled_reason: str | None
    throttled_until: datetime | None
    last_error: str | None
    last_success_at: datetime | None
    # Changes known but not delivered (sum over streams of head_seq - sent_seq) ...
    backlog: int
    # ... and changes in the feed not fanned out yet.
    fan_lag: int
    oldest_undelivered: datetime | None
    failing: int
    parked: int
    streams_error: str | None

    @property
    def state(self) -> str:
        if self.disabled_at is not None:
            return "disabled"
        if self.parked:
            return "parked"
        if self.failing:
            return "failing"
        return "ok"


class PostgresHostWebhooks:
    """What the dispatcher and the CLI do to the endpoints and streams, one transaction each."""

    def __init__(self, pool: Pool) -> None:
        self._pool = pool

    async def _run(self, query: str, params: dict[str, Any], read_only: bool = False) -> Any:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                async with conn.pipeline():
                    if read_only:
                        await conn.execute(READ_ONLY)
                    await conn.execute(HOST_SCOPE)
                    cursor = await conn.execute(query, params)
                return await cursor.fetchall() if cursor.description else cursor.rowcount
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def upsert_endpoints(self, endpoints: Sequence[EndpointConfig]) -> None:
        try:
            async with self._pool.connection() as conn, conn.transaction():
                await conn.execute(HOST_SCOPE)
                for endpoint in endpoints:
                    await conn.execute(
                        UPSERT_ENDPOINT,
                        {
                            "name": endpoint.name,
                            "url": endpoint.url,
                            "event_types": list(endpoint.event_types),
                        },
                    )
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    async def fan_out(self, endpoint: str, limit: int = 1000) -> int:
        """Raise the streams' heads for the next `limit` changes after the endpoint's position
        (below the horizon), and move the position: how many changes that was (0 also when
        another dispatcher holds the endpoint)."""
        rows = await self._run(FAN_OUT, {"name": endpoint, "limit": limit})
        return int(rows[0]["fanned"])

    async def claim(
        self, endpoint: str, owner: str, limit: int, lease_seconds: float = 60.0
    ) -> list[ClaimedStream]:
        if limit <= 0:
            return []
        rows = await self._run(
            CLAIM,
            {
                "endpoint": endpoint,
                "owner": owner,
                "limit": limit,
                "lease": lease_seconds,
                "busy": [],
            },
        )
        return [msgspec.convert(r, ClaimedStream) for r in rows]

    async def claim_with_pending(
        self,
        endpoint: str,
        owner: str,
        limit: int,
        lease_seconds: float = 60.0,
        page: int = 100,
        busy: Sequence[str] = (),
    ) -> list[tuple[ClaimedStream, list[Change]]]:
        """`claim` (leaving out the users in `busy`: the owner's streams still being sent), and
        each claimed stream's first `page` pending changes with their subjects now: one
        transaction, four statements at most, however many streams."""
        if limit <= 0:
            return []
        params = {
            "endpoint": endpoint,
            "owner": owner,
            "limit": limit,
            "lease": lease_seconds,
            "busy": list(busy),
        }
        try:
            async with self._pool.connection() as conn, conn.transaction():
                async with conn.pipeline():
                    await conn.execute(HOST_SCOPE)
                    cursor = await conn.execute(CLAIM, params)
                streams = sorted(
                    (msgspec.convert(r, ClaimedStream) for r in await cursor.fetchall()),
                    key=lambda stream: stream.user_id,
                )
                if not streams:
                    return []
                cursor = await conn.execute(
                    PAGES,
                    {
                        "users": [s.user_id for s in streams],
                        "afters": [s.sent_seq for s in streams],
                        "heads": [s.head_seq for s in streams],
                        "page": page,
                    },
                )
                rows = [msgspec.convert(r, ChangeRow) for r in await cursor.fetchall()]
                changes = await with_snapshots(conn, rows)
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc
        pending: dict[str, list[Change]] = {stream.user_id: [] for stream in streams}
        for change in changes:
            pending[change.user_id].append(change)
        return [(stream, pending[stream.user_id]) for stream in streams]

    async def settle(
        self, owner: str, done: Sequence[tuple[ClaimedStream, int]]
    ) -> set[tuple[str, str]]:
        """Streams delivered up to their positions and released, in one statement: the
        (endpoint, user_id) of those the owner still held (the others are unchanged). A deadlock
        is tried again (the statement is idempotent), though the lock order should prevent one."""
        if not done:
            return set()
        params = {
            "owner": owner,
            "endpoints": [stream.endpoint for stream, _ in done],
            "users": [stream.user_id for stream, _ in done],
            "seqs": [seq for _, seq in done],
        }
        for attempt in range(3):
            try:
                async with self._pool.connection() as conn, conn.transaction():
                    async with conn.pipeline():
                        await conn.execute(HOST_SCOPE)
                        cursor = await conn.execute(SETTLE, params)
                    rows = await cursor.fetchall()
                return {(row["endpoint"], row["user_id"]) for row in rows}
            except psycopg.errors.DeadlockDetected:
                if attempt == 2:
                    raise StorageUnavailable("the database kept deadlocking") from None
            except UNAVAILABLE as exc:
                raise StorageUnavailable("the database is unavailable") from exc
        raise AssertionError("unreachable")

    async def pending(self, stream: ClaimedStream, limit: int = 100) -> list[Change]:
        """The stream's undelivered changes in user_seq order, each with its subject now (the
        page `claim_with_pending` reads, for one stream)."""
        params = {
            "users": [stream.user_id],
            "afters": [stream.sent_seq],
            "heads": [stream.head_seq],
            "page": limit,
        }
        try:
            async with self._pool.connection() as conn, conn.transaction():
                async with conn.pipeline():
                    await conn.execute(READ_ONLY)
                    await conn.execute(HOST_SCOPE)
                    cursor = await conn.execute(PAGES, params)
                rows = [msgspec.convert(r, ChangeRow) for r in await cursor.fetchall()]
                return await with_snapshots(conn, rows)
        except UNAVAILABLE as exc:
            raise StorageUnavailable("the database is unavailable") from exc

    def _ours(self, stream: ClaimedStream, owner: str) -> dict[str, Any]:
        return {"endpoint": stream.endpoint, "user_id": stream.user_id, "owner": owner}

    async def advance(
        self, stream: ClaimedStream, owner: str, seq: int, lease_seconds: float = 60.0
    ) -> bool:
        """Delivered (or not asked for) up to `seq`, the lease renewed; False when the lease is
        no longer ours (nothing changes then)."""
        params = {**self._ours(stream, owner), "seq": seq, "lease": lease_seconds}
        moved = await self._run(ADVANCE, params)
        return bool(moved)

    async def succeeded(self, endpoint: str) -> None:
        await self._run(SUCCEEDED, {"endpoint": endpoint})

    async def back_off(
        self,
        stream: ClaimedStream,
        owner: str,
        error: str,
        *,
        jitter: float,
        retry_after: float = 0.0,
        base: float = 5.0,
        cap: float = 12 * 3600.0,
        park_after: float = 72 * 3600.0,
    ) -> BackedOff | None:
        params = {
            **self._ours(stream, owner),
            "error": error[:500],
            "jitter": jitter,
            "retry_after": retry_after,
            "base": base,
            "cap": cap,
            "park_after": park_after,
        }
        rows = await self._run(BACK_OFF, params)
        await self._run(
            ENDPOINT_FAILED,
            {"endpoint": stream.endpoint, "error": error[:500], "throttle": retry_after},
        )
        return msgspec.convert(rows[0], BackedOff) if rows else None

    async def disable(self, endpoint: str, reason: str) -> None:
        await self._run(DISABLE, {"endpoint": endpoint, "reason": reason[:500]})

    async def enable(self, endpoint: str) -> bool:
        return bool(await self._run(ENABLE, {"endpoint": endpoint}))

    async def remove(self, endpoint: str) -> bool:
        """Forget an endpoint and its streams (one no longer configured holds the change log's
        pruning back, DR-35); a dispatcher still configured with it adds it back, at the end of
        the feed."""
        return bool(await self._run(REMOVE, {"endpoint": endpoint}))

    async def retry(self, endpoint: str | None = None) -> int:
        await self._run(RETRY_ENDPOINTS, {"endpoint": endpoint})
        return int(await self._run(RETRY_STREAMS, {"endpoint": endpoint}))

    async def replay(
        self, since: datetime, endpoint: str | None = None, user_id: str | None = None
    ) -> int:
        """Streams moved back (or created) to resend every change from `since` on."""
        rows = await self._run(REPLAY, {"since": since, "endpoint": endpoint, "user_id": user_id})
        return len(rows)

    async def heartbeat(self, owner: str) -> None:
        await self._run(HEARTBEAT, {"id": DISPATCHER_PREFIX + owner})

    async def status(self) -> list[EndpointStatus]:
        rows = await self._run(STATUS, {}, read_only=True)
        return [msgspec.convert(r, EndpointStatus) for r in rows]
