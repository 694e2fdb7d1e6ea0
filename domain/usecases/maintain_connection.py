"""One worker pass over one claimed connection: refresh, subscription health, reconciliation."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import msgspec

from domain.errors import (
    CalendlyError,
    RateLimited,
    ReauthorizationRequired,
    StoredSecretUnreadable,
)
from domain.model import Connection, ConnectionStatus, WebhookStatus
from domain.ports import (
    CalendlyApi,
    Clock,
    MaintenanceDue,
    MaintenanceResult,
    UnitOfWorkFactory,
)
from domain.usecases.complete_meetings import CompleteMeetings
from domain.usecases.ensure_subscription import EnsureSubscription
from domain.usecases.refresh_access_token import RefreshAccessToken
from domain.usecases.sync_meetings import SyncMeetings

# Calendly's per-user limit on the Free plan (paid plans: 500 a minute).
FREE_PLAN_LIMIT = 50
# Answers after which a connection's subscription is checked at its retry.
REFUSALS = frozenset({401, 403, 404})


class MaintenanceSchedule(msgspec.Struct, frozen=True, kw_only=True):
    """How often each kind of work recurs when nothing asks for it sooner (DR-45).

    Each costs Calendly calls, so each recurs only as often as it buys something: an idle
    paid-plan connection costs about 1.5 calls a day (a grant check a day, and once a week a
    subscription read and a reconciliation, each with the refresh its token needs by then).
    Sooner when there is a reason: a page opened (the grant, DR-43), our webhook endpoint
    failing Calendly (subscription and reconciliation), a plan change (subscription), a
    repaired or changed subscription (reconciliation), a user watching a free-plan connection
    (polling, DR-42).
    """

    # Proving that Calendly still honours the grant (a revoked one shows within this).
    grant_check: timedelta = timedelta(days=1)
    # Reading the subscription of a connection whose webhooks work. Calendly disables one only
    # after a day of failed deliveries to us, and our own outages trigger a check at once.
    subscription_check: timedelta = timedelta(days=7)
    # Trying again to subscribe where the plan allowed none (it may have been upgraded).
    plan_recheck: timedelta = timedelta(days=1)
    # Reconciliation when webhooks work (a safety net), and polling when they cannot.
    sync_with_webhooks: timedelta = timedelta(days=7)
    # (Polling is sooner while the user watches: the service asks for it, DR-42.)
    sync_without_webhooks: timedelta = timedelta(minutes=30)
    # A connection that needs its user to authorize again is left alone this long.
    dormant: timedelta = timedelta(hours=12)
    # After a failure: 5 s doubling to 30 min (8 failures in a row reach about 10 min).
    retry_base: timedelta = timedelta(seconds=5)
    retry_max: timedelta = timedelta(minutes=30)
    # Recurring work comes back after its interval less up to this share of it, drawn at
    # random: connections made together (a bulk import, an outage's sweep) drift apart.
    spread: float = 0.1

    def next(self, now: datetime, every: timedelta) -> datetime:
        """When work that recurs `every` is due again after `now` (spread, never later)."""
        return now + every * (1.0 - self.spread * random.random())

    def backoff(self, failures: int) -> timedelta:
        """How long to leave a connection alone after its `failures + 1`-th failure in a row.

        Exponential from `retry_base`, capped at `retry_max`, jittered over the upper half
        (connections that failed together do not all come back together).
        """
        base = self.retry_base.total_seconds() * (2 ** min(max(failures, 0), 16))
        capped = min(base, self.retry_max.total_seconds())
        return timedelta(seconds=capped * (0.5 + random.random() / 2))


class MaintainConnection:
    """Does what is due for one connection and says when each kind is due next.

    Nothing is refreshed ahead of time: a call that needs a fresh token refreshes it
    (serialised with every other refresh of the connection). A disabled or missing subscription
    is recreated, create first, and the gap is reconciled at once. Free-plan connections are
    polled; when a subscription becomes possible the polling slows down by itself. When nothing
    else called Calendly, a due grant check makes the one call that proves the grant.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        tokens: RefreshAccessToken,
        ensure_subscription: EnsureSubscription,
        sync: SyncMeetings,
        clock: Clock,
        schedule: MaintenanceSchedule | None = None,
        calendly: CalendlyApi | None = None,
        complete_meetings: CompleteMeetings | None = None,
    ) -> None:
        self._uow = uow
        self._tokens = tokens
        self._ensure = ensure_subscription
        self._sync = sync
        self._clock = clock
        self._schedule = schedule or MaintenanceSchedule()
        # Where a plan change shows without a call of its own (None: not looked for).
        self._calendly = calendly
        # Meetings whose deliveries lacked their details (None: left waiting).
        self._complete = complete_meetings

    async def __call__(self, due: MaintenanceDue) -> MaintenanceResult:
        """What was done and when each kind of work is due next.

        Calendly's errors and a revoked grant are answered here; anything else raises, and
        the caller records it with `failed`, which backs off just the same.
        """
        now = max(self._clock.now(), due.claimed_at or datetime.min.replace(tzinfo=UTC))
        async with self._uow(due.user_id) as uow:
            connection = await uow.connections.get(due.user_id)
        if connection is None or connection.status is not ConnectionStatus.ACTIVE:
            later = now + self._schedule.dormant
            return MaintenanceResult(
                subscription_due=later, sync_due=later, grant_due=later, retry_at=later
            )
        try:
            return await self._maintain(due, connection, now)
        except ReauthorizationRequired as exc:
            later = now + self._schedule.dormant
            return MaintenanceResult(
                subscription_due=later,
                sync_due=later,
                grant_due=later,
                error=exc.reason,
                retry_at=later,
            )
        except CalendlyError as exc:
            # A rate limit says when it resets; anything else backs off exponentially.
            rate_limited = isinstance(exc, RateLimited)
            wait = (
                timedelta(seconds=max(exc.retry_after, 1.0))
                if isinstance(exc, RateLimited)
                else self._schedule.backoff(due.failures)
            )
            retry_at = now + wait
            # Calendly refused the token, the permission or the resource: whatever else is
            # wrong, the retry reads the subscription too (DR-45).
            refused = exc.status in REFUSALS
            enrich = self._complete is not None and _due(due.enrich_due, now)
            return MaintenanceResult(
                enriched=enrich,
                enrich_due=retry_at if enrich else None,
                subscription_due=retry_at if due.subscription_due <= now or refused else None,
                sync_due=retry_at if due.sync_due <= now else None,
                grant_due=retry_at if due.grant_due <= now else None,
                error=f"{type(exc).__name__}: Calendly answered {exc.status}",
                retry_at=retry_at,
                rate_limited=rate_limited,
            )

    def failed(self, due: MaintenanceDue, exc: BaseException) -> MaintenanceResult:
        """The outcome of a pass that raised something unexpected: back off like any failure."""
        error = (
            f"{type(exc).__name__}: the stored credentials cannot be decrypted with the "
            "configured keys"
            if isinstance(exc, StoredSecretUnreadable)
            else f"unexpected {type(exc).__name__}"
        )
        return MaintenanceResult(
            error=error, retry_at=self._clock.now() + self._schedule.backoff(due.failures)
        )

    async def _maintain(
        self, due: MaintenanceDue, connection: Connection, now: datetime
    ) -> MaintenanceResult:
        # No proactive refresh: each call below refreshes the token if it needs one, and a
        # pass with nothing due for Calendly costs nothing (DR-45).
        # First what a user may be looking at: meetings shown without their details (DR-47).
        # A sync looks too: requests made before a disconnect outlive the row that said so.
        read, enriched, enrich_due = 0, False, None
        if self._complete is not None and (_due(due.enrich_due, now) or due.sync_due <= now):
            read, enrich_due = await self._complete(connection)
            enriched = True
        before = (connection.webhook_status, connection.subscription_uri)
        subscription_due = None
        if due.subscription_due <= now:
            connection = await self._ensure(connection)
            subscription_due = self._schedule.next(
                now,
                self._schedule.plan_recheck
                if connection.webhook_status is WebhookStatus.UNAVAILABLE_PLAN
                else self._schedule.subscription_check,
            )
        repaired = (connection.webhook_status, connection.subscription_uri) != before
        webhooks = connection.webhook_status is WebhookStatus.ACTIVE
        if due.sync_due > now and not repaired:
            called = subscription_due is not None or read > 0  # each call proved the grant
            if not called and due.grant_due <= now:  # no call yet: the grant's turn
                await self._tokens.check_grant(due.user_id)
                called = True
            return MaintenanceResult(
                subscription_due=subscription_due or await self._plan_changed(due.user_id, now),
                grant_due=self._schedule.next(now, self._schedule.grant_check) if called else None,
                webhooks=webhooks,
                enriched=enriched,
                enrich_due=enrich_due,
            )
        started = self._clock.now()
        await self._sync(due.user_id, due.synced_at)
        every = (
            self._schedule.sync_with_webhooks if webhooks else self._schedule.sync_without_webhooks
        )
        # `synced_at` is when this sync started: what changed after it is not covered. Every
        # call made here proved the grant too.
        return MaintenanceResult(
            subscription_due=subscription_due or await self._plan_changed(due.user_id, now),
            sync_due=self._schedule.next(started, every),
            grant_due=self._schedule.next(now, self._schedule.grant_check),
            synced_at=started,
            webhooks=webhooks,
            enriched=enriched,
            enrich_due=enrich_due,
        )

    async def _plan_changed(self, user_id: str, now: datetime) -> datetime | None:
        """`now` when the limit Calendly announced on this pass's calls says another plan than
        the subscription's state (a Free plan's 50 a minute beside working webhooks, or more
        beside a plan that refused them): the subscription is checked at the next claim."""
        if self._calendly is None:
            return None
        async with self._uow(user_id) as uow:
            connection = await uow.connections.get(user_id)
        if connection is None or connection.tokens is None:
            return None
        limit = self._calendly.announced_limit(connection.tokens.access_token)
        if limit is None:
            return None
        free = limit <= FREE_PLAN_LIMIT
        status = connection.webhook_status
        if (free and status is WebhookStatus.ACTIVE) or (
            not free and status is WebhookStatus.UNAVAILABLE_PLAN
        ):
            return now
        return None


def _due(moment: datetime | None, now: datetime) -> bool:
    return moment is not None and moment <= now
