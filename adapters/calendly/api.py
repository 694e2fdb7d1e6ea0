"""`CalendlyApi` over aiohttp: Calendly's OAuth server and REST API, errors translated."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar, cast
from urllib.parse import quote, urlencode

import aiohttp
import msgspec
import structlog
from multidict import CIMultiDictProxy

from domain.errors import (
    AlreadyExists,
    CalendlyError,
    CalendlyUnavailable,
    InvalidGrant,
    PermissionDenied,
    PlanRequired,
    RateLimited,
    ResourceNotFound,
    TokenRejected,
)
from domain.meetings import Invitee, Meeting
from domain.model import CalendlyAccount, TokenSet
from domain.ports import CalendlyApi, Clock, GrantedTokens, NewSubscription, Subscription
from domain.secret import REDACTED, Secret

from . import translate, wire

DEFAULT_TIMEOUT: Final = aiohttp.ClientTimeout(total=15, connect=5)
# Calendly's rate-limit window is a minute; a reset announced further out is not waited for.
DEFAULT_RATE_LIMIT_WAIT: Final = 60.0
DEFAULT_RETRY_AFTER: Final = 60.0
PLAN_REQUIRED_PREFIX: Final = "Please upgrade your Calendly account"
# Keys whose values are credentials wherever they appear in a body we log or keep.
SECRET_KEYS: Final = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "signing_key",
        "client_secret",
        "code",
        "code_verifier",
        "password",
        "authorization",
    }
)
# A logged non-JSON body (an HTML error page, say) is cut to this many characters.
MAX_LOGGED_TEXT: Final = 2000
# Access tokens whose rate-limit window is remembered at once (the oldest is forgotten first).
MAX_BUDGETS: Final = 10_000

log = structlog.get_logger(__name__)
S = TypeVar("S")
Sleep = Callable[[float], Awaitable[None]]
Timer = Callable[[], float]


def _utc_now() -> datetime:
    return datetime.now(UTC)


def _reveal(value: str | Secret) -> str:
    return value.reveal() if isinstance(value, Secret) else value


def redact(value: object) -> object:
    """A copy of a decoded JSON value with every credential-named key's value replaced."""
    if isinstance(value, dict):
        return {
            k: REDACTED if isinstance(k, str) and k.lower() in SECRET_KEYS else redact(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def basic_credentials(client_id: str, client_secret: Secret) -> str:
    """The token of HTTP Basic client authentication: base64 of `id:secret` (RFC 7617)."""
    credentials = f"{client_id}:{client_secret.reveal()}".encode()
    return base64.b64encode(credentials).decode("ascii")


def _scrub(value: object, secrets: Iterable[Secret]) -> object:
    """Replace the values of `secrets` wherever they occur in strings inside `value`."""
    known = [s.reveal() for s in secrets if s]
    if not known:
        return value

    def walk(v: object) -> object:
        if isinstance(v, str):
            for k in known:
                v = v.replace(k, REDACTED)
            return v
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value)


@dataclass(frozen=True)
class _Answer:
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

    def observe(self, key: bytes, remaining: int, reset_in: float) -> None:
        """Remember the window an answer announced (the latest answer wins)."""
        now = self._timer()
        self._windows.pop(key, None)
        self._windows[key] = _Window(remaining=remaining, resets_at=now + reset_in)
        # Oldest observed first: drop what is over the cap and what has already reset.
        while self._windows:
            oldest = next(iter(self._windows))
            if len(self._windows) <= self._max_entries and self._windows[oldest].resets_at > now:
                break
            del self._windows[oldest]

    def forget(self, key: bytes) -> None:
        """The window was waited out: the next answer says how much is left."""
        self._windows.pop(key, None)


def _budget_key(token: Secret) -> bytes:
    return hashlib.sha256(token.reveal().encode()).digest()


class AiohttpCalendlyApi(CalendlyApi):
    """Calendly over one shared `aiohttp.ClientSession`.

    Retries: GET and DELETE (idempotent) and revoke (idempotent by RFC 7009) are retried on 5xx,
    timeouts and dropped connections with exponential back-off and jitter, and on 429 after
    waiting `X-RateLimit-Reset`, all within `max_read_retries`. The token endpoint is never
    retried (codes and refresh tokens are single-use) and neither is a create (the caller lists
    and adopts instead). `invalid_client` (our own credentials are wrong) is a plain
    `CalendlyError`: it is not the user's grant that failed, so it must not force a reconnect.

    Rate budget: the `X-RateLimit-*` headers of each API answer are remembered per access token.
    When none is left and the window has not reset, the next call with that token waits for the
    reset (at most `max_rate_limit_wait` seconds, else `RateLimited` without calling), so a bulk
    sync slows down before Calendly answers 429. A 429 is `RateLimited`, never `TokenRejected`:
    it must not make a caller refresh the token.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        client_id: str,
        client_secret: Secret,
        auth_base_url: str = "https://auth.calendly.com",
        api_base_url: str = "https://api.calendly.com",
        clock: Clock | Callable[[], datetime] | None = None,
        scope: str | None = None,
        max_read_retries: int = 3,
        retry_base_delay: float = 0.2,
        max_retry_delay: float = 5.0,
        max_rate_limit_wait: float = DEFAULT_RATE_LIMIT_WAIT,
        page_size: int = 100,
        timeout: aiohttp.ClientTimeout = DEFAULT_TIMEOUT,
        sleep: Sleep = asyncio.sleep,
        monotonic: Timer = time.monotonic,
    ) -> None:
        if not 1 <= page_size <= 100:
            raise ValueError("page_size must be between 1 and 100 (Calendly's maximum)")
        if max_read_retries < 0:
            raise ValueError("max_read_retries must not be negative")
        self._session = session
        self._client_id = client_id
        self._client_secret = client_secret
        # What the Basic Authorization header carries; scrubbed from error bodies like the
        # secret itself (a Calendly that echoes the header would otherwise reveal it).
        self._basic_credentials = Secret(basic_credentials(client_id, client_secret))
        self._auth = auth_base_url.rstrip("/")
        self._api = api_base_url.rstrip("/")
        now = getattr(clock, "now", None)
        if clock is None:
            self._now: Callable[[], datetime] = _utc_now
        elif callable(now):
            self._now = now
        else:
            self._now = cast(Callable[[], datetime], clock)
        self._scope = scope
        self._max_retries = max_read_retries
        self._retry_base = retry_base_delay
        self._max_retry_delay = max_retry_delay
        self._max_rate_limit_wait = max_rate_limit_wait
        self._page_size = page_size
        self._timeout = timeout
        self._sleep = sleep
        self._budget = RequestBudget(monotonic)

    # ---------------------------------------------------------------- OAuth
    def authorization_url(self, *, state: str, code_challenge: str, redirect_uri: str) -> str:
        params = {
            "client_id": self._client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "state": state,
            "code_challenge": code_challenge,
            "code_challenge_method": "S256",
        }
        if self._scope:
            params["scope"] = self._scope
        return f"{self._auth}/oauth/authorize?{urlencode(params)}"

    async def exchange_code(
        self, *, code: str, redirect_uri: str, code_verifier: Secret
    ) -> GrantedTokens:
        form: dict[str, str | Secret] = {
            "grant_type": "authorization_code",
            "code": Secret(code),
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        return await self._token(form, secrets=(Secret(code), code_verifier))

    async def refresh(self, refresh_token: Secret) -> GrantedTokens:
        form: dict[str, str | Secret] = {
            "grant_type": "refresh_token",
            "refresh_token": refresh_token,
        }
        return await self._token(form, secrets=(refresh_token,))

    async def _token(
        self, form: Mapping[str, str | Secret], *, secrets: tuple[Secret, ...]
    ) -> GrantedTokens:
        path = "/oauth/token"
        # Client authentication by HTTP Basic, as Calendly documents for web apps.
        answer = await self._send(
            "POST",
            self._auth,
            path,
            form=form,
            basic_auth=True,
            retry=False,
            secrets=secrets,
        )
        if not answer.ok:
            raise self._oauth_error("POST", path, answer, secrets)
        body = _decode("POST", path, answer, wire.TokenResponse)
        tokens = TokenSet(
            access_token=Secret(body.access_token),
            refresh_token=Secret(body.refresh_token),
            expires_at=self._now() + timedelta(seconds=body.expires_in),
        )
        return GrantedTokens(
            tokens=tokens, owner_uri=body.owner, organization_uri=body.organization or None
        )

    async def revoke(self, token: Secret) -> None:
        path = "/oauth/revoke"
        form: dict[str, str | Secret] = {
            "client_id": self._client_id,
            "client_secret": self._client_secret,
            "token": token,
        }
        answer = await self._send("POST", self._auth, path, form=form, retry=True, secrets=(token,))
        if not answer.ok:
            raise self._oauth_error("POST", path, answer, (token,))

    # ------------------------------------------------------------------ API
    async def current_user(self, access_token: Secret) -> CalendlyAccount:
        path = "/users/me"
        answer = await self._api_call("GET", path, access_token)
        user = _decode("GET", path, answer, wire.UserResource).resource
        return CalendlyAccount(
            user_uri=user.uri,
            organization_uri=user.current_organization,
            email=user.email,
            name=user.name,
        )

    async def list_subscriptions(
        self, access_token: Secret, *, organization_uri: str, user_uri: str
    ) -> list[Subscription]:
        path = "/webhook_subscriptions"
        params = {"organization": organization_uri, "scope": "user", "user": user_uri}
        return [
            _subscription(_decode_item("GET", path, raw, wire.WebhookSubscription))
            async for raw in self._collection(path, access_token, params)
        ]

    async def create_subscription(
        self, access_token: Secret, subscription: NewSubscription
    ) -> Subscription:
        path = "/webhook_subscriptions"
        body = wire.CreateWebhookSubscription(
            url=subscription.callback_url,
            events=list(subscription.events),
            organization=subscription.organization_uri,
            scope="user",
            user=subscription.user_uri,
            signing_key=subscription.signing_key,
        )
        answer = await self._api_call(
            "POST",
            path,
            access_token,
            json_body=body,
            retry=False,
            secrets=(subscription.signing_key,),
        )
        created = _decode("POST", path, answer, wire.WebhookSubscriptionResource)
        return _subscription(created.resource)

    async def delete_subscription(self, access_token: Secret, uri: str) -> None:
        await self._api_call("DELETE", f"/webhook_subscriptions/{_segment(uri)}", access_token)

    async def get_subscription(self, access_token: Secret, uri: str) -> Subscription:
        path = f"/webhook_subscriptions/{_segment(uri)}"
        answer = await self._api_call("GET", path, access_token)
        return _subscription(
            _decode("GET", path, answer, wire.WebhookSubscriptionResource).resource
        )

    async def list_scheduled_events(
        self,
        access_token: Secret,
        *,
        user_uri: str,
        min_start_time: datetime,
        max_start_time: datetime | None = None,
    ) -> list[Meeting]:
        path = "/scheduled_events"
        # No `status`: a reconciliation needs the canceled events as much as the active ones.
        params = {
            "user": user_uri,
            "min_start_time": _iso(min_start_time),
            "sort": "start_time:asc",
        }
        if max_start_time is not None:
            params["max_start_time"] = _iso(max_start_time)
        meetings: list[Meeting] = []
        async for raw in self._collection(path, access_token, params):
            event = _lenient_item(path, raw, wire.ScheduledEvent)
            if event is None:
                continue
            if not event.uri:
                _skip(path, "the event has no uri")
                continue
            meetings.append(translate.meeting(event))
        return meetings

    async def list_invitees(self, access_token: Secret, event_uri: str) -> list[Invitee]:
        path = f"/scheduled_events/{_segment(event_uri)}/invitees"
        # Every status: canceled invitees carry the cancellation and the reschedule links.
        params = {"sort": "created_at:asc"}
        invitees: list[Invitee] = []
        async for raw in self._collection(path, access_token, params):
            item = _lenient_item(path, raw, wire.Invitee)
            if item is None:
                continue
            if not item.uri:
                _skip(path, "the invitee has no uri")
                continue
            invitees.append(
                translate.invitee(
                    item, invitee_uri=item.uri, event_uri=event_uri, read_no_show=True
                )
            )
        return invitees

    # -------------------------------------------------------------- plumbing
    async def _collection(
        self, path: str, access_token: Secret, params: Mapping[str, str]
    ) -> AsyncIterator[msgspec.Raw]:
        """Every item of a paginated collection, undecoded, following `next_page_token`."""
        seen_tokens: set[str] = set()
        page_token: str | None = None
        while True:
            query = {**params, "count": str(self._page_size)}
            if page_token is not None:
                query["page_token"] = page_token
            answer = await self._api_call("GET", path, access_token, params=query)
            page = _decode("GET", path, answer, wire.RawPage)
            for item in page.collection:
                yield item
            page_token = page.pagination.next_page_token or None
            if page_token is None:
                return
            if page_token in seen_tokens:
                raise CalendlyUnavailable(
                    answer.status, None, f"Calendly's pagination of GET {path} does not advance"
                )
            seen_tokens.add(page_token)

    async def _api_call(
        self,
        method: str,
        path: str,
        access_token: Secret,
        *,
        params: Mapping[str, str] | None = None,
        json_body: msgspec.Struct | None = None,
        retry: bool | None = None,
        secrets: tuple[Secret, ...] = (),
    ) -> _Answer:
        """A REST call; an error answer is raised as its domain error."""
        # GET and DELETE are idempotent, so retried; anything else only when asked.
        retry = method in ("GET", "DELETE") if retry is None else retry
        all_secrets = (access_token, *secrets)
        answer = await self._send(
            method,
            self._api,
            path,
            bearer=access_token,
            params=params,
            json_body=json_body,
            retry=retry,
            secrets=all_secrets,
        )
        if not answer.ok:
            raise self._api_error(method, path, answer, all_secrets)
        return answer

    async def _send(
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
    ) -> _Answer:
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
                    answer = _Answer(response.status, response.headers, await response.read())
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
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
                problem = type(exc).__name__
                log.warning("calendly.request_failed", method=method, path=path, problem=problem)
                raise CalendlyUnavailable(
                    0, None, f"the request to Calendly failed ({method} {path}: {problem})"
                ) from exc

            window = answer.rate_window() if budget_key is not None else None
            if budget_key is not None and window is not None:
                self._budget.observe(budget_key, *window)
            wait = self._retry_wait(answer, retries) if retry else None
            if wait is not None:
                retries += 1
                self._log_error_answer(method, path, answer, secrets, retry=retries, delay=wait)
                await self._sleep(wait)
                if answer.status == 429 and budget_key is not None:
                    # That wait was the window's reset: do not wait for it a second time.
                    self._budget.forget(budget_key)
                continue
            return answer

    async def _within_budget(self, key: bytes, method: str, path: str) -> None:
        """Wait until the token's rate-limit window has room, or raise RateLimited at once."""
        wait = self._budget.take(key)
        if wait <= 0:
            return
        if wait > self._max_rate_limit_wait:
            log.warning("calendly.rate_budget_exhausted", method=method, path=path, reset=wait)
            raise RateLimited(429, None, wait)
        log.info("calendly.rate_budget_wait", method=method, path=path, delay=wait)
        await self._sleep(wait)
        self._budget.forget(key)

    def _retry_wait(self, answer: _Answer, retries: int) -> float | None:
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

    # ---------------------------------------------------------------- errors
    def _body(self, answer: _Answer, secrets: Iterable[Secret]) -> object:
        """The answer's body, decoded if it is JSON, with every credential removed."""
        try:
            decoded: object = msgspec.json.decode(answer.raw)
        except msgspec.DecodeError:
            decoded = answer.raw[:MAX_LOGGED_TEXT].decode("utf-8", "replace")
        return _scrub(redact(decoded), (*secrets, self._client_secret, self._basic_credentials))

    def _log_error_answer(
        self,
        method: str,
        path: str,
        answer: _Answer,
        secrets: Iterable[Secret],
        **retrying: float,
    ) -> object:
        """Log Calendly's whole error answer (credentials removed); returns the logged body."""
        body = self._body(answer, secrets)
        log.warning(
            "calendly.error_response",
            method=method,
            path=path,
            status=answer.status,
            body=body,
            **retrying,
        )
        return body

    def _api_error(
        self, method: str, path: str, answer: _Answer, secrets: Iterable[Secret]
    ) -> CalendlyError:
        body = self._log_error_answer(method, path, answer, secrets)
        envelope = _convert(body, wire.ApiErrorBody)
        said = (envelope.message or envelope.title or "") if envelope else ""
        status = answer.status
        message = f"Calendly answered {status} to {method} {path}" + (f": {said}" if said else "")
        if status == 429:
            return RateLimited(status, body, answer.reset_seconds())
        if status >= 500:
            return CalendlyUnavailable(status, body, message)
        if status == 401:
            return TokenRejected(status, body, message)
        if status == 403:
            if envelope and (envelope.message or "").startswith(PLAN_REQUIRED_PREFIX):
                return PlanRequired(status, body, message)
            return PermissionDenied(status, body, message)
        if status == 404:
            return ResourceNotFound(status, body, message)
        if status == 409:
            return AlreadyExists(status, body, message)
        return CalendlyError(status, body, message)

    def _oauth_error(
        self, method: str, path: str, answer: _Answer, secrets: Iterable[Secret]
    ) -> CalendlyError:
        body = self._log_error_answer(method, path, answer, secrets)
        parsed = _convert(body, wire.OAuthErrorBody)
        error = parsed.error if parsed else None
        status = answer.status
        message = f"Calendly answered {status} to {method} {path}" + (f": {error}" if error else "")
        if status == 429:
            return RateLimited(status, body, answer.reset_seconds())
        if status >= 500:
            return CalendlyUnavailable(status, body, message)
        if error == "invalid_grant":
            return InvalidGrant(status, body, message)
        if error == "invalid_client" or status == 401:
            return CalendlyError(status, body, f"{message} (check the OAuth client id and secret)")
        return CalendlyError(status, body, message)


def _decode(method: str, path: str, answer: _Answer, kind: type[S]) -> S:
    """A 2xx body as `kind`; one that does not fit is `CalendlyUnavailable` (status kept)."""
    return _decode_raw(method, path, answer.status, answer.raw, kind)


def _decode_item(method: str, path: str, raw: msgspec.Raw, kind: type[S]) -> S:
    """One item of a collection page (which was a 2xx) as `kind`, as strictly as `_decode`."""
    return _decode_raw(method, path, 200, bytes(raw), kind)


def _decode_raw(method: str, path: str, status: int, raw: bytes, kind: type[S]) -> S:
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, RecursionError) as exc:  # RecursionError: absurdly deep JSON
        log.warning(
            "calendly.unparsable_response",
            method=method,
            path=path,
            status=status,
            # msgspec names the JSON path that failed, never a value; the body itself (personal
            # data, maybe live tokens) stays out of the log.
            problem=str(exc),
            size=len(raw),
        )
        raise CalendlyUnavailable(
            status, None, f"Calendly's answer to {method} {path} could not be read"
        ) from exc


def _lenient_item(path: str, raw: msgspec.Raw, kind: type[S]) -> S | None:
    """One item of a listing as `kind`, or None (logged) when it does not fit.

    One odd event or invitee must not stop a whole sync; the rest of the page still counts.
    """
    try:
        return msgspec.json.decode(raw, type=kind)
    except (msgspec.DecodeError, RecursionError) as exc:
        _skip(path, str(exc))
        return None


def _skip(path: str, problem: str) -> None:
    # Like `_decode`: the path msgspec names, never the item (personal data).
    log.warning("calendly.item_skipped", method="GET", path=path, problem=problem)


def _segment(uri: str) -> str:
    """The last URI segment, as a path parameter takes it (never validated: IDs vary)."""
    segment = uri.rstrip("/").rsplit("/", 1)[-1]
    if not segment:
        raise ValueError("a Calendly URI is needed")
    return quote(segment, safe="")


def _iso(moment: datetime) -> str:
    """A query time as Calendly writes them: UTC, microseconds, `Z` (naive is taken as UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _convert(body: object, kind: type[S]) -> S | None:
    if not isinstance(body, dict):
        return None
    try:
        return msgspec.convert(body, kind)
    except msgspec.ValidationError:
        return None


def _payload(
    form: Mapping[str, str | Secret] | None, json_body: msgspec.Struct | None
) -> dict[str, str] | bytes | None:
    """The request body with its secrets revealed (built inside the call, never kept)."""
    if form is not None:
        return {k: _reveal(v) for k, v in form.items()}
    if json_body is not None:
        return wire.encode(json_body)
    return None


def _subscription(s: wire.WebhookSubscription) -> Subscription:
    return Subscription(
        uri=s.uri,
        callback_url=s.callback_url,
        events=tuple(s.events),
        state=s.state,
        scope=s.scope,
        user_uri=s.user,
        created_at=s.created(),
    )


__all__ = ["AiohttpCalendlyApi", "redact"]
