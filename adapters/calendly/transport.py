"""Requests to Calendly over aiohttp: answers read in full, retries, back-off, a rate budget."""

from __future__ import annotations

import base64
import hashlib
import math
import random
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import aiohttp
import msgspec
import structlog
from multidict import CIMultiDictProxy

from adapters.prometheus import calendly_called, rate_limit_waited
from domain.errors import CalendlyUnavailable, RateLimited
from domain.secret import Secret

from . import wire
from .redaction import readable_body

if TYPE_CHECKING:  # imported only where tracing is on (DR-40): it imports OpenTelemetry
    from adapters.tracing import CalendlySpans

DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=15, connect=5)
# Calendly's rate-limit window is a minute; a reset announced further out is not waited for.
DEFAULT_RATE_LIMIT_WAIT: Final = 60.0
DEFAULT_RETRY_AFTER: Final = 60.0
# Access tokens whose rate-limit window is remembered at once (the oldest is forgotten first).
MAX_BUDGETS: Final = 10_000

log = structlog.get_logger(__name__)
Sleep = Callable[[float], Awaitable[None]]
Timer = Callable[[], float]


def basic_credentials(client_id: str, client_secret: Secret) -> str:
    """The token of HTTP Basic client authentication: base64 of `id:secret` (RFC 7617)."""
    credentials = f"{client_id}:{client_secret.reveal()}".encode()
    return base64.b64encode(credentials).decode("ascii")


@dataclass(frozen=True)
class Answer:
    """One HTTP answer, read in full."""

    status: int
    headers: CIMultiDictProxy[str]
    raw: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def reset_seconds(self) -> float:
        """`X-RateLimit-Reset` (seconds until the window resets), else `Retry-After`, else 60."""
        for name in ("X-RateLimit-Reset", "Retry-After"):
            seconds = _number(self.headers.get(name))
            if seconds is not None:
                return seconds
        return DEFAULT_RETRY_AFTER

    def rate_limit(self) -> int | None:
        """`X-RateLimit-Limit`: the requests a minute this caller may make (by its plan)."""
        limit = _number(self.headers.get("X-RateLimit-Limit"))
        return None if limit is None else int(limit)

    def rate_window(self) -> tuple[int, float] | None:
        """(`X-RateLimit-Remaining`, `X-RateLimit-Reset`) when the answer carries both."""
        remaining = _number(self.headers.get("X-RateLimit-Remaining"))
        reset = _number(self.headers.get("X-RateLimit-Reset"))
        if remaining is None and self.status == 429:
            remaining = 0.0
        if remaining is None or reset is None:
            return None
        return int(remaining), reset


def _number(raw: str | None) -> float | None:
    if raw is None:
        return None
    try:
        value = float(raw.strip())
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


@dataclass
class _Window:
    remaining: int
    resets_at: float
    limit: int | None = None


class RequestBudget:
    """What Calendly last said about each access token's rate-limit window.

    Keyed by a SHA-256 of the token, never the token. Each call counts against the remembered
    `remaining` before it is sent, so concurrent calls do not all spend the last request; a
    window whose reset has passed is forgotten, and so is the oldest when `max_entries` are kept.
    """

    def __init__(self, timer: Timer, max_entries: int = MAX_BUDGETS) -> None:
        self._timer = timer
        self._max_entries = max_entries
        self._windows: dict[bytes, _Window] = {}

    def __len__(self) -> int:
        return len(self._windows)

    def take(self, key: bytes) -> float:
        """Count one call with `key`: 0 to go now, else the seconds until the window resets."""
        window = self._windows.get(key)
        if window is None:
            return 0.0
        now = self._timer()
        if window.resets_at <= now:
            del self._windows[key]
            return 0.0
        if window.remaining > 0:
            window.remaining -= 1
            return 0.0
        return window.resets_at - now

    def observe(
        self, key: bytes, remaining: int, reset_in: float, limit: int | None = None
    ) -> None:
        """Remember the window an answer announced (the latest answer wins)."""
        now = self._timer()
        self._windows.pop(key, None)
        self._windows[key] = _Window(remaining=remaining, resets_at=now + reset_in, limit=limit)
        # Oldest observed first: drop what is over the cap and what has already reset.
        while self._windows:
            oldest = next(iter(self._windows))
            if len(self._windows) <= self._max_entries and self._windows[oldest].resets_at > now:
                break
            del self._windows[oldest]

    def forget(self, key: bytes) -> None:
        """The window was waited out: the next answer says how much is left."""
        self._windows.pop(key, None)

    def limit(self, key: bytes) -> int | None:
        """The limit the latest answer in the current window announced, if any."""
        window = self._windows.get(key)
        if window is None or window.resets_at <= self._timer():
            return None
        return window.limit


def _budget_key(token: Secret) -> bytes:
    return hashlib.sha256(token.reveal().encode()).digest()


class Transport:
    """Sends requests to Calendly over one shared `aiohttp.ClientSession`; any answer returns.

    Retries (only when the caller says the request may be repeated): 5xx, timeouts and dropped
    connections with exponential back-off and jitter, and 429 after waiting `X-RateLimit-Reset`,
    all within `max_retries`. A call with a bearer token first waits for that token's rate
    budget (`RequestBudget`): at most `max_rate_limit_wait` seconds, else `RateLimited` without
    calling. The OAuth client's secret and its Basic credentials are removed from every error
    body this transport logs or hands out, besides the secrets each call names.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        client_id: str,
        client_secret: Secret,
        timeout: aiohttp.ClientTimeout,
        max_retries: int,
        retry_base_delay: float,
        max_retry_delay: float,
        max_rate_limit_wait: float,
        sleep: Sleep,
        monotonic: Timer,
        spans: CalendlySpans | None = None,
    ) -> None:
        self._session = session
        # A client span per attempt when tracing is on; None: nothing is traced.
        self._spans = spans
        # What the Basic Authorization header carries; scrubbed from error bodies like the
        # secret itself (a Calendly that echoes the header would otherwise reveal it).
        self._basic_credentials = Secret(basic_credentials(client_id, client_secret))
        self._own_secrets = (client_secret, self._basic_credentials)
        self._timeout = timeout
        self._max_retries = max_retries
        self._retry_base = retry_base_delay
        self._max_retry_delay = max_retry_delay
        self._max_rate_limit_wait = max_rate_limit_wait
        self._sleep = sleep
        self._budget = RequestBudget(monotonic)

    def announced_limit(self, bearer: Secret) -> int | None:
        """What the latest answer to `bearer` in its current window said its limit was."""
        return self._budget.limit(_budget_key(bearer))

    async def send(
        self,
        method: str,
        base: str,
        path: str,
        *,
        bearer: Secret | None = None,
        basic_auth: bool = False,
        params: Mapping[str, str] | None = None,
        form: Mapping[str, str | Secret] | None = None,
        json_body: msgspec.Struct | None = None,
        retry: bool,
        secrets: tuple[Secret, ...],
    ) -> Answer:
        """Send one request, retrying transient failures when `retry`; any answer is returned.

        The credentials sent stay `Secret`s in this frame and are revealed only inside the call
        expression, so no local variable here holds them in the clear. A call with a bearer
        token first waits for that token's rate budget (see `RequestBudget`).
        """
        budget_key = _budget_key(bearer) if bearer is not None else None
        retries = 0
        while True:
            if budget_key is not None:
                await self._within_budget(budget_key, method, path)
            span = self._spans.start(method, base, path, retries) if self._spans else None
            try:
                async with self._session.request(
                    method,
                    f"{base}{path}",
                    params=params,
                    headers=self._headers(bearer, basic_auth, json_body is not None),
                    data=_payload(form, json_body),
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as response:
                    answer = Answer(response.status, response.headers, await response.read())
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
                if span is not None:
                    span.failed(type(exc).__name__)
                calendly_called(method, path, None)
                # ServerTimeoutError and friends are ClientConnectionErrors; TimeoutError is an
                # OSError.
                problem = type(exc).__name__
                if retry and retries < self._max_retries:
                    delay = self._backoff(retries)
                    retries += 1
                    log.warning(
                        "calendly.retry",
                        method=method,
                        path=path,
                        problem=problem,
                        attempt=retries,
                        delay=delay,
                    )
                    await self._sleep(delay)
                    continue
                log.warning("calendly.unreachable", method=method, path=path, problem=problem)
                raise CalendlyUnavailable(
                    0, None, f"Calendly could not be reached ({method} {path}: {problem})"
                ) from exc
            except aiohttp.ClientError as exc:
                if span is not None:
                    span.failed(type(exc).__name__)
                calendly_called(method, path, None)
                problem = type(exc).__name__
                log.warning("calendly.request_failed", method=method, path=path, problem=problem)
                raise CalendlyUnavailable(
                    0, None, f"the request to Calendly failed ({method} {path}: {problem})"
                ) from exc
            except BaseException as exc:  # cancelled: the span still ends
                if span is not None:
                    span.failed(type(exc).__name__)
                raise

            if span is not None:
                span.answered(answer.status)
            calendly_called(method, path, answer.status)
            window = answer.rate_window() if budget_key is not None else None
            if budget_key is not None and window is not None:
                self._budget.observe(budget_key, *window, limit=answer.rate_limit())
            wait = self._retry_wait(answer, retries) if retry else None
            if wait is not None:
                retries += 1
                self.log_error_answer(method, path, answer, secrets, retry=retries, delay=wait)
                if answer.status == 429:
                    rate_limit_waited("retry_after", wait)
                await self._sleep(wait)
                if answer.status == 429 and budget_key is not None:
                    # That wait was the window's reset: do not wait for it a second time.
                    self._budget.forget(budget_key)
                continue
            return answer

    def log_error_answer(
        self,
        method: str,
        path: str,
        answer: Answer,
        secrets: Iterable[Secret],
        **retrying: float,
    ) -> object:
        """Log Calendly's whole error answer (credentials removed); returns the logged body."""
        body = readable_body(answer.raw, (*secrets, *self._own_secrets))
        log.warning(
            "calendly.error_response",
            method=method,
            path=path,
            status=answer.status,
            body=body,
            **retrying,
        )
        return body

    async def _within_budget(self, key: bytes, method: str, path: str) -> None:
        """Wait until the token's rate-limit window has room, or raise RateLimited at once."""
        wait = self._budget.take(key)
        if wait <= 0:
            return
        if wait > self._max_rate_limit_wait:
            log.warning("calendly.rate_budget_exhausted", method=method, path=path, reset=wait)
            rate_limit_waited("refused", 0.0)
            raise RateLimited(429, None, wait)
        log.info("calendly.rate_budget_wait", method=method, path=path, delay=wait)
        rate_limit_waited("budget", wait)
        await self._sleep(wait)
        self._budget.forget(key)

    def _retry_wait(self, answer: Answer, retries: int) -> float | None:
        """How long to wait before retrying `answer`, or None when it is final."""
        if retries >= self._max_retries:
            return None
        if answer.status >= 500:
            return self._backoff(retries)
        if answer.status == 429:
            # Wait out the window Calendly announces, unless that is longer than we may hold on.
            reset = answer.reset_seconds()
            return reset if reset <= self._max_rate_limit_wait else None
        return None

    def _headers(self, bearer: Secret | None, basic_auth: bool, is_json: bool) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        if is_json:
            headers["Content-Type"] = "application/json"
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer.reveal()}"
        elif basic_auth:
            headers["Authorization"] = f"Basic {self._basic_credentials.reveal()}"
        return headers

    def _backoff(self, retries: int) -> float:
        """Exponential back-off with equal jitter: half fixed, half random."""
        ceiling = min(self._max_retry_delay, self._retry_base * 2.0**retries)
        return ceiling / 2 + random.uniform(0, ceiling / 2)


def _reveal(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value


def _payload(
    form: Mapping[str, str | Secret] | None, json_body: msgspec.Struct | None
) -> dict[str, str] | bytes | None:
    """The request body with its secrets revealed (built inside the call, never kept)."""
    if form is not None:
        return {k: _reveal(v) for k, v in form.items()}
    if json_body is not None:
        return wire.encode(json_body)
    return None


__all__ = [
    "DEFAULT_RATE_LIMIT_WAIT",
    "DEFAULT_TIMEOUT",
    "Answer",
    "RequestBudget",
    "Sleep",
    "Timer",
    "Transport",
    "basic_credentials",
]
