"""What the entrypoints need from the container: the use cases and a few facts, nothing more."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from adapters.prometheus import MetricsExporter
from domain.usecases.api_keys import AuthenticateApiKey
from domain.usecases.complete_connect import CompleteConnect
from domain.usecases.disconnect import Disconnect
from domain.usecases.erase_user import EraseUser
from domain.usecases.handle_webhook_event import HandleWebhookEvent
from domain.usecases.queries import (
    GetConnectionStatus,
    ListConnections,
    ListMeetings,
    MeetingChanges,
    ReadChanges,
)
from domain.usecases.reconnect import Reconnect
from domain.usecases.start_connect import StartConnect
from entrypoints.live import LiveHub
from entrypoints.webhook_health import WebhookFailures


class NotReady(NamedTuple):
    """One reason the process is not ready: which check, and what is wrong (safe to show)."""

    check: Literal["database", "migrations", "live_listener"]
    detail: str


@dataclass(frozen=True)
class Services:
    """The bridge between the container and the handlers: handlers never see the DI library."""

    start_connect: StartConnect
    complete_connect: CompleteConnect
    reconnect: Reconnect
    disconnect: Disconnect
    handle_webhook: HandleWebhookEvent
    connection_status: GetConnectionStatus
    list_meetings: ListMeetings
    meeting_changes: MeetingChanges
    # The server API (/v1): its keys, every user's connection, erasure on the host's behalf.
    authenticate_api_key: AuthenticateApiKey
    list_connections: ListConnections
    read_changes: ReadChanges
    erase_user: EraseUser
    # Doorbells of this process's open event streams (rung by the database listener).
    live_hub: LiveHub
    # What keeps this process from being ready (empty: ready); the readiness probe's answer.
    readiness: Callable[[], Awaitable[Sequence[NotReady]]]
    # `/metrics` (DR-39); None unless METRICS_ENABLED.
    metrics: MetricsExporter | None = None
    # Where the webhook route reports a 5xx it answered (the health record's beats, DR-45).
    webhook_failures: WebhookFailures | None = None
