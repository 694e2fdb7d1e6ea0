"""A serving process's beats for the webhook endpoint's health record (DR-45).

The webhook route tells `WebhookFailures` when it answers Calendly with a 5xx; every
`WEBHOOK_HEALTH_BEAT_SECONDS` the process says, in one short transaction, that it takes
deliveries and since when it failed, if it did (adapters/postgres/webhook_health.py turns that,
or a gap in everyone's beats, into an outage that the worker follows up).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

log = structlog.get_logger(__name__)

WEBHOOK_HEALTH_BEAT_SECONDS = 10.0
Beat = Callable[[datetime, datetime | None], Awaitable[bool]]


class WebhookFailures:
    """The first 5xx this process answered to Calendly since its last beat."""

    def __init__(self) -> None:
        self._since: datetime | None = None

    def failed(self, at: datetime | None = None) -> None:
        at = at or datetime.now(tz=UTC)
        if self._since is None or at < self._since:
            self._since = at

    def take(self) -> datetime | None:
        since, self._since = self._since, None
        return since


async def beat_webhook_health(
    beat: Beat,
    failures: WebhookFailures,
    now: Callable[[], datetime],
    every: float = WEBHOOK_HEALTH_BEAT_SECONDS,
) -> None:
    """Beat for ever. A beat that fails (the database is down) keeps its failures for the next
    one; the gap it leaves is itself recorded as an outage by the first beat that lands."""
    while True:
        since = failures.take()
        try:
            if await beat(now(), since):
                log.warning(
                    "webhook.outage_recorded",
                    since=since.isoformat() if since else None,
                    follow_up="subscriptions checked and meetings reconciled within minutes",
                )
        except Exception as exc:  # the next beat says it again
            if since is not None:
                failures.failed(since)
            log.warning("webhook.health_not_recorded", error=type(exc).__name__)
        await asyncio.sleep(every)
