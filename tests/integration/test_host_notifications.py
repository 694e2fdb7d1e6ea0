"""Notifications to the host app: written with the status change, delivered signed, retried."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

import aiohttp
import msgspec

from adapters.host_notifications import HostNotifier
from domain.ports import UnitOfWorkFactory
from domain.secret import Secret
from tests.integration.conftest import Pool
from tests.support.connections import T0, add, connection
from tests.support.sandbox import WebhookReceiver


def verify(secret: str, header: str, body: bytes) -> bool:
    parts = dict(part.split("=", 1) for part in header.split(","))
    expected = hmac.new(secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256)
    return hmac.compare_digest(expected.hexdigest(), parts["v1"])


async def test_needs_reauth_and_recovery_reach_the_host_app_signed(
    pool: Pool, pg_uow: UnitOfWorkFactory, receiver: WebhookReceiver
) -> None:
    stored = await add(pg_uow, connection("alice", 1, "00000000-0000-0000-0000-00000000000a"))
    async with pg_uow("alice") as uow:
        broken = await uow.connections.save(stored.needing_reauth("revoked", T0))
        await uow.commit()
    async with pg_uow("alice") as uow:
        assert broken.tokens is not None
        await uow.connections.save(broken.with_tokens(broken.tokens, T0))
        await uow.commit()
    secret = "host-secret-for-this-test-0123456789"
    receiver.script = [500]  # the host app is down once: the first one is retried later
    async with aiohttp.ClientSession() as session:
        notifier = HostNotifier(pool, session, receiver.url, Secret(secret))
        first = await notifier.deliver_pending()
        async with pool.connection() as conn:
            await conn.execute("UPDATE host_notifications SET next_attempt_at = now()")
        second = await notifier.deliver_pending()
    assert (first, second) == (1, 1)
    received: list[dict[str, Any]] = []
    for item in receiver.received:
        assert verify(secret, item.headers["Calendly-Connect-Signature"], item.body)
        received.append(msgspec.json.decode(item.body))
    kinds = [r["type"] for r in received]
    assert kinds == ["connection.needs_reauth", "connection.recovered", "connection.needs_reauth"]
    assert {r["user_id"] for r in received} == {"alice"}


async def test_without_a_host_url_nothing_is_sent(pool: Pool, receiver: WebhookReceiver) -> None:
    async with aiohttp.ClientSession() as session:
        notifier = HostNotifier(pool, session, None, None)
        assert await notifier.deliver_pending() == 0
    assert receiver.received == []
