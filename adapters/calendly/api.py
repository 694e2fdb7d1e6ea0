"""`CalendlyApi` over aiohttp: the endpoints of Calendly's OAuth server and REST API."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, cast
from urllib.parse import quote, urlencode

import aiohttp
import msgspec
from msgspec.structs import replace

from adapters.prometheus import token_refreshed
from domain.errors import CalendlyUnavailable, InvalidGrant, ResourceNotFound, TokenRejected
from domain.meetings import Invitee, Meeting
from domain.model import CalendlyAccount, TokenSet
from domain.ports import CalendlyApi, Clock, GrantedTokens, NewSubscription, Subscription
from domain.secret import Secret

from . import translate, wire
from .errors import api_error, decode, decode_item, lenient_item, oauth_error, skip_item
from .transport import DEFAULT_RATE_LIMIT_WAIT, DEFAULT_TIMEOUT, Answer, Sleep, Timer, Transport

if TYPE_CHECKING:  # imported only where tracing is on (DR-40): it imports OpenTelemetry
    from adapters.tracing import CalendlySpans


def _utc_now() -> datetime:
    return datetime.now(UTC)


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
        spans: CalendlySpans | None = None,
    ) -> None:
        if not 1 <= page_size <= 100:
            raise ValueError("page_size must be between 1 and 100 (Calendly's maximum)")
        if max_read_retries < 0:
            raise ValueError("max_read_retries must not be negative")
        self._client_id = client_id
        self._client_secret = client_secret
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
        self._page_size = page_size
        self._transport = Transport(
            session,
            client_id=client_id,
            client_secret=client_secret,
            timeout=timeout,
            max_retries=max_read_retries,
            retry_base_delay=retry_base_delay,
            max_retry_delay=max_retry_delay,
            max_rate_limit_wait=max_rate_limit_wait,
            sleep=sleep,
            monotonic=monotonic,
            spans=spans,
        )

    # ---------------------------------------------------------------- OAuth
    def announced_limit(self, access_token: Secret) -> int | None:
        return self._transport.announced_limit(access_token)

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
        try:
            granted = await self._token(form, secrets=(refresh_token,))
        except (InvalidGrant, TokenRejected):
            token_refreshed("rejected")
            raise
        except Exception:
            token_refreshed("failed")
            raise
        token_refreshed("ok")
        return granted

    async def _token(
        self, form: Mapping[str, str | Secret], *, secrets: tuple[Secret, ...]
    ) -> GrantedTokens:
        path = "/oauth/token"
        # Client authentication by HTTP Basic, as Calendly documents for web apps.
        answer = await self._transport.send(
            "POST",
            self._auth,
            path,
            form=form,
            basic_auth=True,
            retry=False,
            secrets=secrets,
        )
        if not answer.ok:
            body = self._transport.log_error_answer("POST", path, answer, secrets)
            raise oauth_error("POST", path, answer, body)
        body = decode("POST", path, answer, wire.TokenResponse)
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
        answer = await self._transport.send(
            "POST", self._auth, path, form=form, retry=True, secrets=(token,)
        )
        if not answer.ok:
            body = self._transport.log_error_answer("POST", path, answer, (token,))
            raise oauth_error("POST", path, answer, body)

    # ------------------------------------------------------------------ API
    async def current_user(self, access_token: Secret) -> CalendlyAccount:
        path = "/users/me"
        answer = await self._api_call("GET", path, access_token)
        user = decode("GET", path, answer, wire.UserResource).resource
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
            _subscription(decode_item("GET", path, raw, wire.WebhookSubscription))
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
        created = decode("POST", path, answer, wire.WebhookSubscriptionResource)
        return _subscription(created.resource)

    async def delete_subscription(self, access_token: Secret, uri: str) -> None:
        await self._api_call("DELETE", f"/webhook_subscriptions/{_segment(uri)}", access_token)

    async def get_subscription(self, access_token: Secret, uri: str) -> Subscription:
        path = f"/webhook_subscriptions/{_segment(uri)}"
        answer = await self._api_call("GET", path, access_token)
        return _subscription(decode("GET", path, answer, wire.WebhookSubscriptionResource).resource)

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
            event = lenient_item(path, raw, wire.ScheduledEvent)
            if event is None:
                continue
            if not event.uri:
                skip_item(path, "the event has no uri")
                continue
            meetings.append(translate.meeting(event))
        return meetings

    async def get_scheduled_event(self, access_token: Secret, event_uri: str) -> Meeting:
        # Only the URI's last segment is used, sent to the configured API: a URI a delivery
        # names never chooses where the user's token goes.
        try:
            path = f"/scheduled_events/{_segment(event_uri)}"
        except ValueError:  # nothing is sent: no event can have that name
            raise ResourceNotFound(404, None, "the URI names no scheduled event") from None
        answer = await self._api_call("GET", path, access_token)
        event = decode("GET", path, answer, wire.ScheduledEventResource).resource
        # Merged under the URI the meeting is stored by (the delivery's), whatever the answer's.
        return replace(translate.meeting(event), event_uri=event_uri)

    async def list_invitees(self, access_token: Secret, event_uri: str) -> list[Invitee]:
        path = f"/scheduled_events/{_segment(event_uri)}/invitees"
        # Every status: canceled invitees carry the cancellation and the reschedule links.
        params = {"sort": "created_at:asc"}
        invitees: list[Invitee] = []
        async for raw in self._collection(path, access_token, params):
            item = lenient_item(path, raw, wire.Invitee)
            if item is None:
                continue
            if not item.uri:
                skip_item(path, "the invitee has no uri")
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
            page = decode("GET", path, answer, wire.RawPage)
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
    ) -> Answer:
        """A REST call; an error answer is raised as its domain error."""
        # GET and DELETE are idempotent, so retried; anything else only when asked.
        retry = method in ("GET", "DELETE") if retry is None else retry
        all_secrets = (access_token, *secrets)
        answer = await self._transport.send(
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
            body = self._transport.log_error_answer(method, path, answer, all_secrets)
            raise api_error(method, path, answer, body)
        return answer


def _segment(uri: str) -> str:
    """The last URI segment, as a path parameter takes it (never validated: IDs vary)."""
    segment = uri.rstrip("/").rsplit("/", 1)[-1]
    if segment in ("", ".", ".."):  # ".." would climb out of the path the call names
        raise ValueError("a Calendly URI is needed")
    return quote(segment, safe="")


def _iso(moment: datetime) -> str:
    """A query time as Calendly writes them: UTC, microseconds, `Z` (naive is taken as UTC)."""
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


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


__all__ = ["AiohttpCalendlyApi"]
