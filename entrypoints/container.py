"""The composition root: the only place that names concrete classes."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import Any

import aiohttp
import psycopg_pool
import structlog
from dependency_injector import containers, providers

from adapters.calendly import AiohttpCalendlyApi
from adapters.calendly.webhook_decoder import MsgspecWebhookDecoder
from adapters.crypto import AesGcmTokenCipher
from adapters.postgres.api_keys import PostgresApiKeyStore
from adapters.postgres.changes import PostgresChangeFeed, PostgresChangeLogRetention
from adapters.postgres.directory import PostgresConnectionDirectory
from adapters.postgres.group_commit import PostgresDeliveryLedger
from adapters.postgres.listener import PostgresChangeListener
from adapters.postgres.live_reads import PostgresChangeReader
from adapters.postgres.maintenance import PostgresMaintenanceQueue
from adapters.postgres.migrations import Migration, discover, missing_migrations
from adapters.postgres.pool import make_pool
from adapters.postgres.readings import PostgresReadings
from adapters.postgres.roles import batch_writer_trouble, check_runtime_role
from adapters.postgres.sealing import TokenCipher
from adapters.postgres.storage_retention import PostgresStorageRetention
from adapters.postgres.unit_of_work import unit_of_work_factory
from adapters.postgres.watching import PostgresLiveWatchers, PostgresWatchedPolling
from adapters.postgres.webhook_health import PostgresWebhookHealth
from adapters.prometheus import MetricsExporter
from adapters.system import SecretsRandomness, SystemClock
from domain.errors import StorageUnavailable
from domain.ports import Clock, UnitOfWorkFactory
from domain.usecases.api_keys import AuthenticateApiKey
from domain.usecases.complete_connect import CompleteConnect
from domain.usecases.complete_meetings import CompleteMeetings
from domain.usecases.disconnect import Disconnect
from domain.usecases.ensure_subscription import EnsureSubscription
from domain.usecases.erase_user import EraseUser
from domain.usecases.handle_webhook_event import HandleWebhookEvent, UnitOfWorkLedger
from domain.usecases.maintain_connection import MaintainConnection, MaintenanceSchedule
from domain.usecases.queries import (
    GetConnectionStatus,
    ListConnections,
    ListMeetings,
    MeetingChanges,
    ReadChanges,
)
from domain.usecases.reconnect import Reconnect
from domain.usecases.refresh_access_token import RefreshAccessToken
from domain.usecases.repair_connection import RepairConnection
from domain.usecases.start_connect import StartConnect
from domain.usecases.sync_meetings import SyncMeetings
from entrypoints.live import LiveHub, keep_registered, mark_watched
from entrypoints.names import process_name
from entrypoints.services import NotReady, Services
from entrypoints.settings import Settings
from entrypoints.webhook_health import WebhookFailures, beat_webhook_health

Pool = psycopg_pool.AsyncConnectionPool[Any]
POOL_OPEN_SECONDS = 30.0
log = structlog.get_logger(__name__)


async def database_pool(settings: Settings) -> AsyncIterator[Pool]:
    """The pool, opened at start-up; refuses to run as a role that could bypass RLS."""
    database = settings.database
    pool = make_pool(
        database.url.reveal(),
        runtime_role=database.runtime_role,
        min_size=database.pool_min_size,
        max_size=database.pool_max_size,
    )
    try:
        try:
            await pool.open(wait=True, timeout=POOL_OPEN_SECONDS)
        except psycopg_pool.PoolTimeout as exc:  # said as "cannot start: ...", no traceback
            raise StorageUnavailable(
                f"the database did not answer within {POOL_OPEN_SECONDS:.0f} s"
            ) from exc
        await check_runtime_role(pool)
        yield pool
    finally:
        await pool.close()


async def delivery_ledger(
    pool: Pool, cipher: TokenCipher, uow: UnitOfWorkFactory
) -> AsyncIterator[PostgresDeliveryLedger]:
    """The webhook path's ledger: concurrent deliveries share a transaction (DR-48); a batch
    that fails is written one delivery per unit of work. Stopping waits for batches in flight.
    Its plain deliveries go out one statement per round for many users where the batch writer
    is ready (DR-61), else one statement each."""
    trouble = await batch_writer_trouble(pool)
    if trouble is not None:  # each delivery by its own statement, as before DR-61
        log.warning(
            "webhooks.batch_writer_unavailable", reason=trouble, fix="calendly-connect doctor"
        )
    ledger = PostgresDeliveryLedger(pool, cipher, UnitOfWorkLedger(uow), together=trouble is None)
    try:
        yield ledger
    finally:
        await ledger.drain()


class Listening:
    """Whether this process's live-update listener holds its connection (for readiness)."""

    def __init__(self) -> None:
        self.connected: Callable[[], bool] = lambda: False


async def live_updates(
    settings: Settings, listening: Listening, pool: Pool
) -> AsyncIterator[LiveHub]:
    """This process's hub of open event streams, rung by a LISTENing database connection, and
    the task that keeps the free-plan connections of the users watching here polled often
    (WATCHED_POLL_SECONDS, DR-42)."""
    hub = LiveHub(heartbeat_seconds=settings.http.live_heartbeat_seconds)
    listener = PostgresChangeListener(
        settings.database.url.reveal(), hub.ring, runtime_role=settings.database.runtime_role
    )
    watched = PostgresWatchedPolling(pool, timedelta(seconds=settings.worker.watched_poll_seconds))
    listening.connected = listener.connected.is_set
    await listener.start()
    marker = asyncio.create_task(
        mark_watched(hub, watched.mark, check=watched.check_opened), name="live-watched-polling"
    )
    watchers = PostgresLiveWatchers(pool, process_name())
    registry = asyncio.create_task(keep_registered(hub, watchers), name="live-watchers")
    try:
        yield hub
    finally:
        for task in (marker, registry):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):  # else purged once stale (DR-57)
            await watchers.forget(hub.registered_users())
        await listener.stop()


async def readiness(
    pool: Pool, listening: Listening, expected: Sequence[Migration]
) -> tuple[NotReady, ...]:
    """What keeps this process from serving: the database (one query, which also says which
    migrations are applied), a migration this code expects and the database lacks, the
    live-update listener. Empty when ready."""
    problems: list[NotReady] = []
    try:
        missing = await missing_migrations(pool, expected)
    except StorageUnavailable:
        problems.append(NotReady("database", "the database does not answer"))
    else:
        if missing:
            names = ", ".join(m.path.name for m in missing[:5]) + (", ..." * (len(missing) > 5))
            problems.append(
                NotReady(
                    "migrations",
                    f"the database lacks {len(missing)} migration(s) this code expects ({names}); "
                    "run `calendly-connect migrate`",
                )
            )
    if not listening.connected():
        problems.append(
            NotReady("live_listener", "the live-update listener is not connected to the database")
        )
    return tuple(problems)


async def webhook_health_beats(health: PostgresWebhookHealth) -> AsyncIterator[WebhookFailures]:
    """This serving process's record of the webhook endpoint's health (DR-45): the failures
    the route reports, beaten into the database every few seconds by a task of its own."""
    failures = WebhookFailures()
    beats = asyncio.create_task(
        beat_webhook_health(health.beat, failures),
        name="webhook-health",
    )
    try:
        yield failures
    finally:
        beats.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beats


def metrics_exporter(settings: Settings, pool: Pool) -> MetricsExporter | None:
    """`/metrics` (METRICS_ENABLED): the processes' sums and the database's readings."""
    metrics = settings.metrics
    if not metrics.enabled:
        return None
    return MetricsExporter(PostgresReadings(pool), metrics.multiproc_dir)


# How often a service process writes when its API keys were last used (DR-30).
API_KEY_USAGE_SECONDS = 60.0


async def _record_api_key_usage(authenticate: AuthenticateApiKey) -> None:
    while True:
        await asyncio.sleep(API_KEY_USAGE_SECONDS)
        try:
            await authenticate.flush_usage()
        except Exception as exc:  # kept for the next round
            log.warning("api_keys.usage_not_recorded", error=type(exc).__name__)


async def api_key_authenticator(pool: Pool, clock: Clock) -> AsyncIterator[AuthenticateApiKey]:
    """The server API's key check, and the task that writes the keys' last use each minute
    (never the request: it only notes the use in memory); a last write at stop.

    It takes the pool itself, not a store built on it, so that the container stops it before
    the pool (resources are stopped after the resources that name them directly).
    """
    authenticate = AuthenticateApiKey(PostgresApiKeyStore(pool), clock)
    recorder = asyncio.create_task(_record_api_key_usage(authenticate), name="api-key-usage")
    try:
        yield authenticate
    finally:
        recorder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await recorder
        try:
            await authenticate.flush_usage()
        except Exception as exc:
            log.warning("api_keys.usage_not_recorded", error=type(exc).__name__)


async def http_session() -> AsyncIterator[aiohttp.ClientSession]:
    """One shared client session for every call to Calendly."""
    async with aiohttp.ClientSession() as session:
        yield session


class Container(containers.DeclarativeContainer):
    """Every concrete class, built from the settings, in the order they depend on each other.

    How to follow one setting, without running anything: an environment variable is parsed in
    entrypoints/settings.py by the reader of its group (`_read_calendly` parses
    CALENDLY_WEBHOOK_SIGNING_KEY into `Settings.calendly.webhook_signing_keys`); here it
    appears as `settings.provided.<group>.<field>`, in the provider of the one class that
    receives it (search this file for the field's name: `handle_webhook` passes it to
    HandleWebhookEvent as `app_signing_keys`). Use cases reach the handlers only through
    `Services` (services.py), the worker through `maintain_connection` and `maintenance_queue`.
    """

    settings = providers.Dependency(instance_of=Settings)

    clock = providers.Singleton(SystemClock)
    random = providers.Singleton(SecretsRandomness)
    cipher = providers.Singleton(
        AesGcmTokenCipher,
        keys=settings.provided.encryption.keys,
        active_key_id=settings.provided.encryption.active_key,
    )
    pool = providers.Resource(database_pool, settings=settings)
    session = providers.Resource(http_session)
    listening = providers.Singleton(Listening)
    live = providers.Resource(live_updates, settings=settings, listening=listening, pool=pool)
    webhook_health = providers.Singleton(PostgresWebhookHealth, pool=pool)
    webhook_failures = providers.Resource(webhook_health_beats, health=webhook_health)

    calendly = providers.Singleton(
        AiohttpCalendlyApi,
        session=session,
        client_id=settings.provided.calendly.client_id,
        client_secret=settings.provided.calendly.client_secret,
        auth_base_url=settings.provided.calendly.auth_base_url,
        api_base_url=settings.provided.calendly.api_base_url,
        clock=clock,
        scope=settings.provided.calendly.scope,
    )
    uow = providers.Singleton(unit_of_work_factory, pool, cipher)

    tokens = providers.Singleton(
        RefreshAccessToken,
        uow=uow,
        calendly=calendly,
        clock=clock,
        margin=providers.Factory(
            timedelta, seconds=settings.provided.calendly.refresh_margin_seconds
        ),
    )
    ensure_subscription = providers.Singleton(
        EnsureSubscription,
        uow=uow,
        calendly=calendly,
        tokens=tokens,
        clock=clock,
        random=random,
        callback_base=settings.provided.calendly.webhook_callback_base,
    )
    start_connect = providers.Singleton(
        StartConnect,
        uow=uow,
        calendly=calendly,
        clock=clock,
        random=random,
        redirect_uri=settings.provided.calendly.oauth_redirect_uri,
    )
    complete_connect = providers.Singleton(
        CompleteConnect,
        uow=uow,
        calendly=calendly,
        clock=clock,
        random=random,
        ensure_subscription=ensure_subscription,
        redirect_uri=settings.provided.calendly.oauth_redirect_uri,
    )
    reconnect = providers.Singleton(
        Reconnect,
        uow=uow,
        calendly=calendly,
        tokens=tokens,
        ensure_subscription=ensure_subscription,
        start_connect=start_connect,
        clock=clock,
    )
    disconnect = providers.Singleton(
        Disconnect, uow=uow, calendly=calendly, tokens=tokens, clock=clock
    )
    ledger = providers.Resource(delivery_ledger, pool=pool, cipher=cipher, uow=uow)
    handle_webhook = providers.Singleton(
        HandleWebhookEvent,
        ledger=ledger,
        decoder=providers.Singleton(MsgspecWebhookDecoder),
        clock=clock,
        # CALENDLY_WEBHOOK_SIGNING_KEY: the app's keys, checked in memory first (DR-21).
        app_signing_keys=settings.provided.calendly.webhook_signing_keys,
        tolerance=providers.Factory(
            timedelta, seconds=settings.provided.calendly.webhook_tolerance_seconds
        ),
    )
    sync_meetings = providers.Singleton(
        SyncMeetings, uow=uow, calendly=calendly, tokens=tokens, clock=clock
    )
    complete_meetings = providers.Singleton(
        CompleteMeetings,
        uow=uow,
        calendly=calendly,
        tokens=tokens,
        retry_base=providers.Factory(
            timedelta, seconds=settings.provided.worker.retry_base_seconds
        ),
        retry_max=providers.Factory(timedelta, seconds=settings.provided.worker.retry_max_seconds),
    )
    maintain_connection = providers.Singleton(
        MaintainConnection,
        uow=uow,
        tokens=tokens,
        ensure_subscription=ensure_subscription,
        sync=sync_meetings,
        clock=clock,
        calendly=calendly,
        complete_meetings=complete_meetings,
        schedule=providers.Factory(
            MaintenanceSchedule,
            subscription_check=providers.Factory(
                timedelta, seconds=settings.provided.worker.subscription_check_seconds
            ),
            sync_with_webhooks=providers.Factory(
                timedelta, seconds=settings.provided.worker.sync_interval_seconds
            ),
            sync_without_webhooks=providers.Factory(
                timedelta, seconds=settings.provided.worker.plan_poll_seconds
            ),
            grant_check=providers.Factory(
                timedelta, seconds=settings.provided.worker.grant_check_seconds
            ),
            plan_recheck=providers.Factory(
                timedelta, seconds=settings.provided.worker.plan_recheck_seconds
            ),
            retry_base=providers.Factory(
                timedelta, seconds=settings.provided.worker.retry_base_seconds
            ),
            retry_max=providers.Factory(
                timedelta, seconds=settings.provided.worker.retry_max_seconds
            ),
        ),
    )
    maintenance_queue = providers.Singleton(PostgresMaintenanceQueue, pool=pool)
    repair_connection = providers.Singleton(
        RepairConnection,
        uow=uow,
        calendly=calendly,
        tokens=tokens,
        ensure_subscription=ensure_subscription,
        clock=clock,
    )
    # The server API (/v1): its keys, the host's list across tenants, erasure.
    api_keys = providers.Resource(api_key_authenticator, pool=pool, clock=clock)
    connection_directory = providers.Singleton(PostgresConnectionDirectory, pool=pool)
    change_feed = providers.Singleton(PostgresChangeFeed, pool=pool)
    change_log_retention = providers.Singleton(
        PostgresChangeLogRetention,
        pool=pool,
        days=settings.provided.worker.change_log_retention_days,
    )
    storage_retention = providers.Singleton(
        PostgresStorageRetention,
        pool=pool,
        payload_days=settings.provided.worker.webhook_payload_retention_days,
    )
    erase_user = providers.Singleton(EraseUser, uow=uow, disconnect=disconnect)
    services = providers.Singleton(
        Services,
        start_connect=start_connect,
        complete_connect=complete_connect,
        reconnect=reconnect,
        disconnect=disconnect,
        handle_webhook=handle_webhook,
        connection_status=providers.Singleton(GetConnectionStatus, uow=uow),
        list_meetings=providers.Singleton(ListMeetings, uow=uow),
        meeting_changes=providers.Singleton(
            MeetingChanges, reader=providers.Singleton(PostgresChangeReader, pool=pool)
        ),
        authenticate_api_key=api_keys,
        list_connections=providers.Singleton(ListConnections, directory=connection_directory),
        read_changes=providers.Singleton(ReadChanges, feed=change_feed),
        erase_user=erase_user,
        live_hub=live,
        webhook_failures=webhook_failures,
        readiness=providers.Callable(
            partial, readiness, pool, listening, providers.Callable(discover)
        ),
        metrics=providers.Singleton(metrics_exporter, settings=settings, pool=pool),
    )


async def resolve(value: Any) -> Any:
    """Providers that depend on async resources answer with awaitables."""
    return await value if inspect.isawaitable(value) else value


async def build_services(container: Container) -> Services:
    """Start the container's resources and hand out the services the entrypoints use.

    The pool opens first, on its own: should it fail (a database that is down or never
    answers), the resources that wait for it have not begun waiting, and its error is the one
    thing said. (Started together, each waiting resource had its wait cancelled, and
    dependency_injector logged a traceback for each.)"""
    await resolve(container.pool.init())
    await resolve(container.init_resources())
    services = await resolve(container.services())
    assert isinstance(services, Services)
    return services


# How long a stopping process waits for grants it keeps (DR-23) to reach the database.
DRAIN_SECONDS = 10.0


async def drain_kept_grants(container: Container) -> None:
    """Store what Calendly issued while the database failed, before the pool closes."""
    if not container.pool.initialized:  # never started: nothing can have been kept
        return
    tokens = await resolve(container.tokens())
    lost = await tokens.drain(DRAIN_SECONDS)
    if lost:
        log.error(
            "tokens.kept_grants_lost",
            users=lost,
            detail="the database did not come back before the process stopped: these users "
            "must approve the app again (Reconnect)",
        )
