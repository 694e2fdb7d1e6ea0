"""A serving process's beats for the webhook endpoint's health record (DR-45).

The webhook route tells `WebhookFailures` when it answers Calendly with a 5xx, and on whose
URL; every `WEBHOOK_HEALTH_BEAT_SECONDS` the process says, in one short transaction, that it
takes deliveries and what it failed (adapters/postgres/webhook_health.py checks those
connections, and turns a gap in everyone's beats, or failures it cannot name, into an outage
that the worker follows up).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import structlog

from adapters.postgres.webhook_health import MAX_FAILED_CONNECTIONS, FailedDeliveries

log = structlog.get_logger(__name__)

WEBHOOK_HEALTH_BEAT_SECONDS = 10.0
Beat = Callable[[FailedDeliveries | None], Awaitable[bool]]


class WebhookFailures:
    """The 5xx this process answered to Calendly since its last beat: since when, and whose."""

    def __init__(self) -> None:
        self._since: datetime | None = None
        self._tokens: set[str] = set()
        self._unknown = False

    def failed(self, token: str | None, at: datetime | None = None) -> None:
        """A delivery to `token`'s URL (None: the shared URL) was answered with a 5xx."""
        at = at or datetime.now(tz=UTC)
        if self._since is None or at < self._since:
            self._since = at
        if token is None or len(self._tokens) >= MAX_FAILED_CONNECTIONS:
            self._unknown = True
        else:
            self._tokens.add(token)

    def take(self) -> FailedDeliveries | None:
        if self._since is None:
            return None
        taken = FailedDeliveries(
            since=self._since, tokens=frozenset(self._tokens), unknown=self._unknown
        )
        self._since, self._tokens, self._unknown = None, set(), False
        return taken

    def give_back(self, failed: FailedDeliveries) -> None:
        """A beat that did not land: its failures go with the next one."""
        if failed.unknown:
            self.failed(None, failed.since)
        for token in failed.tokens:
            self.failed(token, failed.since)


async def beat_webhook_health(
    beat: Beat, failures: WebhookFailures, every: float = WEBHOOK_HEALTH_BEAT_SECONDS
) -> None:
    """Beat for ever. A beat that fails (the database is down) keeps its failures for the next
    one; the gap it leaves is itself recorded as an outage by the first beat that lands."""
    while True:
        failed = failures.take()
        try:
            if await beat(failed):
                log.warning(
                    "webhook.outage_recorded",
                    since=failed.since.isoformat() if failed else None,
                    follow_up="subscriptions checked and meetings reconciled within minutes",
                )
        except Exception as exc:  # the next beat says it again
            if failed is not None:
                failures.give_back(failed)
            log.warning("webhook.health_not_recorded", error=type(exc).__name__)
        await asyncio.sleep(every)
