"""Host webhooks over HTTP: one signed POST (Standard Webhooks, DR-34) and what came of it."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import aiohttp
import msgspec
from standardwebhooks.webhooks import Webhook

from domain.secret import Secret

# Retry-After is honoured up to this (a day); beyond, the back-off's own cap decides.
MAX_RETRY_AFTER: Final = 86_400.0


class Sent(msgspec.Struct, frozen=True, kw_only=True):
    """An attempt's outcome: the status (None: no answer), and how long the endpoint asked us
    to wait (Retry-After, seconds; 0 when it did not say)."""

    status: int | None
    error: str | None = None
    retry_after: float = 0.0

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


def signature_header(
    secrets: Sequence[Secret], msg_id: str, timestamp: datetime, body: bytes
) -> str:
    """`v1,<base64>` per secret, space-separated: every secret signs (rotation)."""
    return " ".join(Webhook(s.reveal()).sign(msg_id, timestamp, body) for s in secrets)


def retry_after_seconds(value: str | None, now: float | None = None) -> float:
    """Retry-After as seconds (a number or an HTTP date); 0 when absent or unreadable."""
    if not value:
        return 0.0
    value = value.strip()
    if value.isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return 0.0
    now = time.time() if now is None else now
    return min(max(0.0, when.timestamp() - now), MAX_RETRY_AFTER)


RESPONSE_READ_LIMIT: Final = 64 * 1024


class HostWebhookSender:
    """POSTs one message; never raises for what the endpoint or the network did."""

    def __init__(self, session: aiohttp.ClientSession, timeout: float = 10.0) -> None:
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def send(self, url: str, secrets: Sequence[Secret], msg_id: str, body: bytes) -> Sent:
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": "calendly-connect-webhooks",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": signature_header(secrets, msg_id, now, body),
        }
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=self._timeout, allow_redirects=False
            ) as response:
                # What the endpoint says is not used: read a little (so the connection can be
                # reused) and never an unbounded body.
                await response.content.read(RESPONSE_READ_LIMIT)
                if 200 <= response.status < 300:
                    return Sent(status=response.status)
                return Sent(
                    status=response.status,
                    error=f"the endpoint answered {response.status}",
                    retry_after=retry_after_seconds(response.headers.get("Retry-After")),
                )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return Sent(status=None, error=f"no answer: {type(exc).__name__}")
