"""Row 15: Calendly answers 5xx, hangs or resets. Reads are retried with back-off; the token
endpoint is never called a second time on its own (codes and refresh tokens are single-use).

AiohttpCalendlyApi talks to the Calendly sandbox through a TCP proxy on loopback that resets
(RST) or black-holes chosen connections, with a 1 s total timeout and tiny back-off delays.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeVar

import aiohttp
import pytest

from adapters.calendly import AiohttpCalendlyApi
from domain.errors import CalendlyUnavailable, InvalidGrant
from domain.secret import Secret
from tests.support.sandbox import SandboxDriver, Tokens
from tests.support.tcp_proxy import Fault, TcpProxy, tcp_proxy

USERS_ME = "GET /users/me"
TOKEN = "POST /oauth/token"
MAX_RETRIES = 3
RETRY_BASE = 0.02
MAX_RETRY_DELAY = 0.08
TIMEOUT_SECONDS = 1.0
TIMEOUT = aiohttp.ClientTimeout(total=TIMEOUT_SECONDS)
# aiohttp itself sends an idempotent request (GET, DELETE) a second time, at once, when its
# connection is reset or closed without an answer (`ClientSession(retry_connection=True)`, the
# default, which the service's session keeps); never a POST.
AIOHTTP_TRIES = 2
# Every test here finishes in a few seconds; this is the bound it is held to.
BUDGET = 15.0
T = TypeVar("T")


@dataclass
class SpySleep:
    """Stands in for `asyncio.sleep`: records each back-off delay and waits a token moment."""

    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        await asyncio.sleep(min(seconds, 0.01))


@dataclass
class Rig:
    sandbox: SandboxDriver
    proxy: TcpProxy
    api: AiohttpCalendlyApi
    sleep: SpySleep
    tokens: Tokens

    async def calls(self, route: str) -> list[int]:
        """The statuses of the calls of `route` that reached the sandbox, in order."""
        return [c["status"] for c in await self.sandbox.calls(route)]

    async def forget_calls(self) -> None:
        await self.sandbox.control("DELETE", "/_sandbox/calls", expect=204)


@pytest.fixture
async def rig(sandbox: SandboxDriver) -> AsyncIterator[Rig]:
    tokens = await sandbox.connect("ada@example.com")
    # A fresh connection per request: "the next connection" is "the next request".
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        tcp_proxy(sandbox.url, hold_limit=10) as proxy,
        aiohttp.ClientSession(connector=connector) as session,
    ):
        sleep = SpySleep()
        api = AiohttpCalendlyApi(
            session,
            client_id=sandbox.client.client_id,
            client_secret=Secret(sandbox.client.client_secret),
            auth_base_url=proxy.url,
            api_base_url=proxy.url,
            max_read_retries=MAX_RETRIES,
            retry_base_delay=RETRY_BASE,
            max_retry_delay=MAX_RETRY_DELAY,
            timeout=TIMEOUT,
            sleep=sleep,
        )
        rig = Rig(sandbox=sandbox, proxy=proxy, api=api, sleep=sleep, tokens=tokens)
        await rig.forget_calls()
        yield rig


async def within_budget(call: Callable[[], Awaitable[T]]) -> tuple[T, float]:
    started = time.monotonic()
    result = await call()
    elapsed = time.monotonic() - started
    assert elapsed < BUDGET, f"took {elapsed:.1f} s"
    return result, elapsed


def assert_backed_off(delays: list[float]) -> None:
    """Each delay is the documented equal-jitter back-off: in [ceiling/2, ceiling]."""
    for attempt, delay in enumerate(delays):
        ceiling = min(MAX_RETRY_DELAY, RETRY_BASE * 2.0**attempt)
        assert ceiling / 2 <= delay <= ceiling, (attempt, delay, ceiling)


async def test_the_proxy_resets_with_an_rst_and_black_holes_in_silence(rig: Rig) -> None:
    """The tool itself: a reset is an RST (ECONNRESET), a black hole never answers."""
    rig.proxy.reset_next(1)
    reader, writer = await asyncio.open_connection(rig.proxy.host, rig.proxy.port)

    async def ask() -> bytes:
        writer.write(b"GET /users/me HTTP/1.1\r\nHost: calendly\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(1), 5)

    with pytest.raises(ConnectionResetError):
        await ask()
    writer.close()

    rig.proxy.black_hole_next(1)
    reader, writer = await asyncio.open_connection(rig.proxy.host, rig.proxy.port)
    writer.write(b"GET /users/me HTTP/1.1\r\nHost: calendly\r\n\r\n")
    await writer.drain()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(reader.read(1), 0.3)
    writer.close()
    assert await rig.calls(USERS_ME) == []


# ------------------------------------------------------------------------------- reads


@pytest.mark.parametrize("after_request", [False, True], ids=["on-accept", "answer-lost"])
async def test_a_reset_on_users_me_is_retried_and_succeeds(rig: Rig, after_request: bool) -> None:
    # Enough resets to need the adapter's own retry, whatever aiohttp retries by itself.
    rig.proxy.reset_next(AIOHTTP_TRIES + 1, after_request=after_request)

    account, _ = await within_budget(lambda: rig.api.current_user(Secret(rig.tokens.access_token)))

    assert account.email == "ada@example.com"
    fault = Fault.RESET_ON_RESPONSE if after_request else Fault.RESET_ON_ACCEPT
    assert rig.proxy.faults_seen(fault) == AIOHTTP_TRIES + 1
    assert rig.proxy.pending_faults == 0
    # The adapter backed off between its attempts: one wait per attempt that aiohttp gave up on.
    assert len(rig.sleep.delays) == 1
    assert_backed_off(rig.sleep.delays)
    assert len(rig.proxy.handled) == AIOHTTP_TRIES + 2  # the resets, then the one that worked
    # Reset on accept: Calendly saw only the last. Answer lost: it answered every one of them.
    assert await rig.calls(USERS_ME) == [200] * (AIOHTTP_TRIES + 2 if after_request else 1)


async def test_a_black_holed_read_times_out_and_is_retried_until_calendly_answers(
    rig: Rig,
) -> None:
    rig.proxy.black_hole_next(2)

    account, elapsed = await within_budget(
        lambda: rig.api.current_user(Secret(rig.tokens.access_token))
    )

    assert account.email == "ada@example.com"
    assert rig.proxy.faults_seen(Fault.BLACK_HOLE) == 2
    assert elapsed >= 2 * TIMEOUT_SECONDS * 0.9  # it did wait both of them out
    assert len(rig.sleep.delays) == 2
    assert_backed_off(rig.sleep.delays)
    assert await rig.calls(USERS_ME) == [200]


async def test_a_read_that_never_gets_through_is_unavailable_after_the_budget(rig: Rig) -> None:
    rig.proxy.reset_next(100)

    with pytest.raises(CalendlyUnavailable):
        await within_budget(lambda: rig.api.current_user(Secret(rig.tokens.access_token)))

    # Bounded: the adapter tries once and MAX_RETRIES more times, backing off in between (and
    # aiohttp tries each of those twice on a reset).
    assert len(rig.sleep.delays) == MAX_RETRIES
    assert_backed_off(rig.sleep.delays)
    assert len(rig.proxy.handled) == (MAX_RETRIES + 1) * AIOHTTP_TRIES
    assert await rig.calls(USERS_ME) == []


async def test_a_5xx_burst_on_a_read_is_retried_with_back_off(rig: Rig) -> None:
    await rig.sandbox.fault(USERS_ME, status=503, count=2)
    await rig.sandbox.fault(USERS_ME, status=500, count=1)

    account, _ = await within_budget(lambda: rig.api.current_user(Secret(rig.tokens.access_token)))

    assert account.email == "ada@example.com"
    assert await rig.calls(USERS_ME) == [503, 503, 500, 200]
    assert len(rig.sleep.delays) == 3
    assert_backed_off(rig.sleep.delays)


async def test_a_slow_but_answering_calendly_is_not_retried(rig: Rig) -> None:
    rig.proxy.delay_next(1, 0.3)

    account, _ = await within_budget(lambda: rig.api.current_user(Secret(rig.tokens.access_token)))

    assert account.email == "ada@example.com"
    assert rig.sleep.delays == []
    assert await rig.calls(USERS_ME) == [200]


# ------------------------------------------------------------------------- token calls


@pytest.mark.parametrize(
    ("fault", "reached_calendly"),
    [
        (Fault.RESET_ON_ACCEPT, 0),
        (Fault.RESET_ON_RESPONSE, 1),
        (Fault.BLACK_HOLE, 0),
        (Fault.SWALLOW_RESPONSE, 1),
    ],
    ids=["reset-before", "reset-after-answer", "timeout-before", "timeout-after-answer"],
)
async def test_a_refresh_that_fails_in_transit_is_never_tried_again(
    rig: Rig, fault: Fault, reached_calendly: int
) -> None:
    after = fault in (Fault.RESET_ON_RESPONSE, Fault.SWALLOW_RESPONSE)
    if fault in (Fault.RESET_ON_ACCEPT, Fault.RESET_ON_RESPONSE):
        rig.proxy.reset_next(1, after_request=after)
    else:
        rig.proxy.black_hole_next(1, after_request=after)

    with pytest.raises(CalendlyUnavailable):
        await within_budget(lambda: rig.api.refresh(Secret(rig.tokens.refresh_token)))

    # One connection, never a second: not at the proxy, not at Calendly.
    assert len(rig.proxy.handled) == 1
    assert rig.sleep.delays == []
    assert len(await rig.calls(TOKEN)) == reached_calendly
    if reached_calendly:
        # Why: Calendly rotated the refresh token; the lost answer held the only new one, and a
        # blind retry with the old token would be answered invalid_grant (a dead connection).
        with pytest.raises(InvalidGrant):
            await rig.api.refresh(Secret(rig.tokens.refresh_token))
    else:
        # Calendly never saw it: the same refresh token still works once the network does.
        granted = await rig.api.refresh(Secret(rig.tokens.refresh_token))
        assert granted.tokens.refresh_token.reveal() != rig.tokens.refresh_token


async def test_a_5xx_from_the_token_endpoint_is_not_retried(rig: Rig) -> None:
    await rig.sandbox.fault(TOKEN, status=503, count=3)

    with pytest.raises(CalendlyUnavailable):
        await within_budget(lambda: rig.api.refresh(Secret(rig.tokens.refresh_token)))

    assert await rig.calls(TOKEN) == [503]
    assert rig.sleep.delays == []
    await rig.sandbox.control("DELETE", "/_sandbox/faults", expect=204)


async def test_a_code_exchange_that_loses_its_answer_is_not_retried(
    rig: Rig, sandbox: SandboxDriver
) -> None:
    from tests.support.sandbox import pkce_pair

    verifier, challenge = pkce_pair()
    code = await sandbox.code_for("bo@example.com", challenge)
    await rig.forget_calls()
    rig.proxy.reset_next(1, after_request=True)

    with pytest.raises(CalendlyUnavailable):
        await within_budget(
            lambda: rig.api.exchange_code(
                code=code,
                redirect_uri=sandbox.client.redirect_uris[0],
                code_verifier=Secret(verifier),
            )
        )

    assert len(rig.proxy.handled) == 1
    assert await rig.calls(TOKEN) == [200]
