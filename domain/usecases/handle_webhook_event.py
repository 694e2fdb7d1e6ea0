"""Take one webhook delivery: verify, route, deduplicate and apply, in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Literal

import msgspec

from domain.errors import InvalidSignature, UnusablePayload
from domain.model import Connection
from domain.ports import Clock, UnitOfWork, UnitOfWorkFactory, WebhookOutcome
from domain.secret import Secret
from domain.signature import check_timestamp, parse_signature_header, signed_with
from domain.webhooks import InboundWebhook, WebhookDecoder, digest

DEFAULT_TOLERANCE = timedelta(seconds=180)


class WebhookCommand(msgspec.Struct, frozen=True, kw_only=True):
    body: bytes
    signature: str | None
    # The path segment of the callback URL (each connection has its own); None for the
    # shared URL, where the delivery is routed by its `created_by` and hosts.
    webhook_token: str | None = None


class WebhookResult(msgspec.Struct, frozen=True, kw_only=True):
    outcome: Literal["applied", "ignored", "duplicate", "stored_aside"]
    user_id: str | None = None
    event: str | None = None
    reason: str | None = None


class HandleWebhookEvent:
    """The promise: nothing takes effect unless signed; what is signed is acknowledged.

    Raises InvalidSignature (answer 401, nothing stored) when no configured key verifies the
    delivery within the tolerance. Everything signed returns a result (answer 2xx) once its
    effect, or its record when it cannot be used, is committed: duplicates take no effect.
    """

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        decoder: WebhookDecoder,
        clock: Clock,
        app_signing_keys: Sequence[Secret],
        tolerance: timedelta = DEFAULT_TOLERANCE,
    ) -> None:
        self._uow = uow
        self._decoder = decoder
        self._clock = clock
        self._app_keys = tuple(app_signing_keys)
        self._tolerance = tolerance

    async def __call__(self, command: WebhookCommand) -> WebhookResult:
        header = parse_signature_header(command.signature)
        check_timestamp(header, self._clock.now(), self._tolerance)
        app_signed = signed_with(header, command.body, self._app_keys)
        inbound: InboundWebhook | None
        try:
            inbound, problem = self._decoder.decode(command.body), None
        except UnusablePayload as exc:
            inbound, problem = None, exc.reason
        async with self._uow() as uow:
            connection = await self._route(uow, command, inbound)
            own_key = connection.signing_key if connection is not None else None
            if not app_signed and not (
                own_key is not None and signed_with(header, command.body, (own_key,))
            ):
                raise InvalidSignature("no configured signing key matches")
            outcome, reason = self._judge(inbound, problem, connection)
            usable = connection if connection is not None and connection.is_connected else None
            key = inbound.dedup_key() if inbound else f"unparsable:sha256:{digest(command.body)}"
            scope = usable.id if usable is not None else "unrouted"
            is_new = await uow.webhook_events.record(
                event_id=f"{scope}:{key}",
                event_type=inbound.event if inbound else "unknown",
                payload=command.body,
                connection=usable,
                outcome=outcome,
                reason=reason,
            )
            if not is_new:
                return WebhookResult(
                    outcome="duplicate",
                    user_id=usable.user_id if usable else None,
                    event=inbound.event if inbound else None,
                )
            if outcome == "applied" and usable is not None and inbound and inbound.change:
                await uow.meetings.apply(usable, inbound.change)
            await uow.commit()
        return WebhookResult(
            outcome="stored_aside" if outcome == "unusable" else outcome,
            user_id=usable.user_id if usable else None,
            event=inbound.event if inbound else None,
            reason=reason,
        )

    @staticmethod
    async def _route(
        uow: UnitOfWork, command: WebhookCommand, inbound: InboundWebhook | None
    ) -> Connection | None:
        route = None
        if command.webhook_token is not None:
            route = await uow.route(webhook_token=command.webhook_token, calendly_user_uri=None)
        elif inbound is not None:
            candidates = [inbound.created_by, *inbound.host_user_uris]
            for uri in dict.fromkeys(c for c in candidates if c):
                route = await uow.route(webhook_token=None, calendly_user_uri=uri)
                if route is not None:
                    break
        if route is None:
            return None
        await uow.act_as(route.user_id)
        return await uow.connections.get(route.user_id)

    @staticmethod
    def _judge(
        inbound: InboundWebhook | None, problem: str | None, connection: Connection | None
    ) -> tuple[WebhookOutcome, str | None]:
        if inbound is None:
            return "unusable", problem or "the payload cannot be read"
        if connection is None or not connection.is_connected:
            return "unusable", "no connected user for this delivery"
        if connection.account is None or not inbound.concerns(connection.account.user_uri):
            return "unusable", "the delivery is not about this connection's Calendly user"
        if inbound.change is None:
            return "ignored", f"{inbound.event} is stored but not acted on"
        return "applied", None
