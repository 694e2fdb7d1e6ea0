"""AiohttpCalendlyApi against the Calendly sandbox over real HTTP: flows, errors, retries, logs."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
import traceback
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from structlog.testing import capture_logs

from adapters.calendly import AiohttpCalendlyApi
from adapters.calendly.api import redact
from calendly_sandbox import OAuthClient
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
from domain.ports import GrantedTokens, NewSubscription
from domain.secret import Secret
from tests.support.sandbox import REDIRECT_URI, SandboxDriver, query_of

NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
EVENTS = ("invitee.created", "invitee.canceled")
MAX_RETRIES = 3
USERS_ME = "GET /users/me"
TOKEN = "POST /oauth/token"
CREATE = "POST /webhook_subscriptions"
LIST = "GET /webhook_subscriptions"
DELETE = "DELETE /webhook_subscriptions/{uuid}"


class RecordingSleep:
    """Stands in for `asyncio.sleep`: remembers each requested delay and returns at once."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)


class FixedClock:
    def now(self) -> datetime:
        return NOW


@dataclasses.dataclass
class Connected:
    granted: GrantedTokens

    @property
    def access(self) -> Secret:
        return self.granted.tokens.access_token

    @property
    def refresh(self) -> Secret:
        return self.granted.tokens.refresh_token


ApiFactory = Callable[..., AiohttpCalendlyApi]


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@pytest.fixture
def sleep() -> RecordingSleep:
    return RecordingSleep()


@pytest.fixture
def make_api(
    sandbox: SandboxDriver, http: aiohttp.ClientSession, sleep: RecordingSleep
) -> ApiFactory:
    def make(client: OAuthClient | None = None, **overrides: Any) -> AiohttpCalendlyApi:
        client = client or sandbox.client
        options: dict[str, Any] = {
            "client_id": client.client_id,
            "client_secret": Secret(client.client_secret),
            "auth_base_url": sandbox.url,
            "api_base_url": sandbox.url,
            "clock": FixedClock(),
            "max_read_retries": MAX_RETRIES,
            "retry_base_delay": 0.001,
            "sleep": sleep,
            **overrides,
        }
        return AiohttpCalendlyApi(http, **options)

    return make


@pytest.fixture
def api(make_api: ApiFactory) -> AiohttpCalendlyApi:
    return make_api()


async def connect(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, email: str, **params: str
) -> Connected:
    """Consent as `email` (PKCE S256) and redeem the code through the adapter."""
    verifier = secrets.token_urlsafe(48)
    code = await sandbox.code_for(email, s256(verifier), **params)
    granted = await api.exchange_code(
        code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier)
    )
    return Connected(granted)


def new_subscription(connected: Connected, n: int = 1, **changes: Any) -> NewSubscription:
    assert connected.granted.organization_uri is not None
    fields: dict[str, Any] = {
        "callback_url": f"https://app.example.com/webhooks/calendly/hook-{n}",
        "events": EVENTS,
        "organization_uri": connected.granted.organization_uri,
        "user_uri": connected.granted.owner_uri,
        "signing_key": Secret(secrets.token_urlsafe(32)),
        **changes,
    }
    return NewSubscription(**fields)


async def count_calls(sandbox: SandboxDriver, route: str) -> int:
    return len(await sandbox.calls(route))


# ------------------------------------------------------------------- OAuth
def test_authorization_url_has_pkce_and_scope_only_when_configured(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    url = make_api().authorization_url(
        state="st-1", code_challenge="c" * 43, redirect_uri=REDIRECT_URI
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == sandbox.url
    assert parts.path == "/oauth/authorize"
    assert query_of(url) == {
        "client_id": sandbox.client.client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "state": "st-1",
        "code_challenge": "c" * 43,
        "code_challenge_method": "S256",
    }
    scoped = make_api(scope="users:read webhooks:write").authorization_url(
        state="s", code_challenge="c" * 43, redirect_uri=REDIRECT_URI
    )
    assert parse_qs(urlsplit(scoped).query)["scope"] == ["users:read webhooks:write"]


async def test_full_connect_through_the_authorization_url(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, http: aiohttp.ClientSession
) -> None:
    verifier = secrets.token_urlsafe(48)
    url = api.authorization_url(
        state="st-42", code_challenge=s256(verifier), redirect_uri=REDIRECT_URI
    )
    async with http.get(f"{url}&sandbox_login=ada@example.com", allow_redirects=False) as resp:
        assert resp.status == 302
        callback = query_of(resp.headers["Location"])
    assert callback["state"] == "st-42"

    granted = await api.exchange_code(
        code=callback["code"], redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier)
    )
    assert granted.tokens.expires_at == NOW + timedelta(seconds=7200)
    assert granted.tokens.access_token.reveal()
    assert granted.tokens.refresh_token.reveal()
    assert granted.organization_uri is not None

    account = await api.current_user(granted.tokens.access_token)
    assert account.user_uri == granted.owner_uri
    assert account.organization_uri == granted.organization_uri
    assert account.email == "ada@example.com"
    assert account.name == "Ada"


async def test_a_clock_may_be_a_plain_callable(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    later = NOW + timedelta(days=1)
    connected = await connect(make_api(clock=lambda: later), sandbox, "ada@example.com")
    assert connected.granted.tokens.expires_at == later + timedelta(seconds=7200)


async def test_a_code_works_once(api: AiohttpCalendlyApi, sandbox: SandboxDriver) -> None:
    verifier = secrets.token_urlsafe(48)
    code = await sandbox.code_for("ada@example.com", s256(verifier))
    await api.exchange_code(code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier))
    with pytest.raises(InvalidGrant) as caught:
        await api.exchange_code(
            code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier)
        )
    assert caught.value.status == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["error"] == "invalid_grant"


async def test_a_wrong_verifier_is_an_invalid_grant(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    code = await sandbox.code_for("ada@example.com", s256(secrets.token_urlsafe(48)))
    with pytest.raises(InvalidGrant):
        await api.exchange_code(
            code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(secrets.token_urlsafe(48))
        )


async def test_refresh_rotates_and_the_old_refresh_token_is_dead(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    first = await connect(api, sandbox, "ada@example.com")
    second = await api.refresh(first.refresh)
    assert second.tokens.refresh_token != first.refresh
    assert second.tokens.access_token != first.access
    assert second.owner_uri == first.granted.owner_uri
    assert second.tokens.expires_at == NOW + timedelta(seconds=7200)
    assert (await api.current_user(second.tokens.access_token)).user_uri == second.owner_uri

    with pytest.raises(InvalidGrant):
        await api.refresh(first.refresh)


async def test_wrong_client_credentials_are_not_an_invalid_grant(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    api = make_api(client_secret=Secret("not-the-secret"))
    verifier = secrets.token_urlsafe(48)
    code = await sandbox.code_for("ada@example.com", s256(verifier))
    with pytest.raises(CalendlyError) as caught:
        await api.exchange_code(
            code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier)
        )
    # Our own configuration is wrong: no subclass that would make a caller blame the user's grant.
    assert type(caught.value) is CalendlyError
    assert caught.value.status == 401
    assert "invalid_client" in str(caught.value)


async def test_revoke_kills_the_access_token_and_its_refresh_token(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    connected = await connect(api, sandbox, "ada@example.com")
    await api.revoke(connected.access)
    with pytest.raises(TokenRejected) as caught:
        await api.current_user(connected.access)
    assert caught.value.status == 401
    with pytest.raises(InvalidGrant):
        await api.refresh(connected.refresh)
    # RFC 7009: revoking a dead token again is not an error.
    await api.revoke(connected.access)


async def test_a_legacy_token_response_has_no_organization(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    legacy = OAuthClient(
        client_id="legacy-client",
        client_secret=secrets.token_urlsafe(24),
        redirect_uris=[REDIRECT_URI],
        legacy_token_response=True,
    )
    body = {
        "client_id": legacy.client_id,
        "client_secret": legacy.client_secret,
        "redirect_uris": legacy.redirect_uris,
        "legacy_token_response": True,
    }
    await sandbox.control("POST", "/_sandbox/clients", body, expect=201)
    api = make_api(client=legacy)
    connected = await connect(api, dataclasses.replace(sandbox, client=legacy), "old@example.com")

    assert connected.granted.organization_uri is None
    account = await api.current_user(connected.access)
    assert account.user_uri == connected.granted.owner_uri
    assert account.organization_uri.startswith(f"{sandbox.url}/organizations/")


# ----------------------------------------------------------- subscriptions
async def test_create_list_across_pages_and_delete(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    api = make_api(page_size=2)
    ada = await connect(api, sandbox, "ada@example.com")
    assert ada.granted.organization_uri is not None
    created = [
        await api.create_subscription(ada.access, new_subscription(ada, n)) for n in (1, 2, 3)
    ]
    assert [s.callback_url for s in created] == [
        f"https://app.example.com/webhooks/calendly/hook-{n}" for n in (1, 2, 3)
    ]
    assert all(s.is_active and s.scope == "user" for s in created)
    assert all(s.user_uri == ada.granted.owner_uri and s.events == EVENTS for s in created)
    assert all(s.created_at is not None for s in created)

    await sandbox.control("DELETE", "/_sandbox/calls", expect=204)
    listed = await api.list_subscriptions(
        ada.access, organization_uri=ada.granted.organization_uri, user_uri=ada.granted.owner_uri
    )
    assert [s.uri for s in listed] == [s.uri for s in created]
    pages = await sandbox.calls(LIST)
    assert len(pages) == 2
    first, second = (query_of(call["path"]) for call in pages)
    assert first["count"] == second["count"] == "2"
    assert first["scope"] == "user"
    assert first["user"] == ada.granted.owner_uri
    assert first["organization"] == ada.granted.organization_uri
    assert "page_token" not in first
    assert second["page_token"]

    await api.delete_subscription(ada.access, created[1].uri)
    remaining = await api.list_subscriptions(
        ada.access, organization_uri=ada.granted.organization_uri, user_uri=ada.granted.owner_uri
    )
    assert [s.uri for s in remaining] == [created[0].uri, created[2].uri]
    with pytest.raises(ResourceNotFound) as caught:
        await api.delete_subscription(ada.access, created[1].uri)
    assert caught.value.status == 404


async def test_the_signing_key_is_sent_with_the_subscription(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    created = await api.create_subscription(ada.access, new_subscription(ada))
    data = await sandbox.control("GET", "/_sandbox/subscriptions", expect=200)
    (stored,) = data["subscriptions"]
    assert stored["uri"] == created.uri
    assert stored["has_signing_key"] is True


@pytest.mark.parametrize("page_size", [0, 101])
def test_a_page_size_beyond_calendlys_range_is_refused(
    make_api: ApiFactory, page_size: int
) -> None:
    with pytest.raises(ValueError, match="page_size"):
        make_api(page_size=page_size)


async def test_an_empty_list_is_one_call(api: AiohttpCalendlyApi, sandbox: SandboxDriver) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    assert ada.granted.organization_uri is not None
    listed = await api.list_subscriptions(
        ada.access, organization_uri=ada.granted.organization_uri, user_uri=ada.granted.owner_uri
    )
    assert listed == []
    assert await count_calls(sandbox, LIST) == 1


async def test_deleting_an_old_style_id_is_not_validated_locally(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    with pytest.raises(ResourceNotFound):
        await api.delete_subscription(
            ada.access, f"{sandbox.url}/webhook_subscriptions/AAAAAAAAAAAAAAAA"
        )
    (call,) = await sandbox.calls(DELETE)
    assert call["path"] == "/webhook_subscriptions/AAAAAAAAAAAAAAAA"


async def test_a_second_hook_with_the_same_url_already_exists(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await api.create_subscription(ada.access, new_subscription(ada))
    with pytest.raises(AlreadyExists) as caught:
        await api.create_subscription(ada.access, new_subscription(ada))
    assert caught.value.status == 409
    assert caught.value.body == {
        "title": "Already Exists",
        "message": "Hook with this url already exists",
    }


async def test_a_free_plan_needs_an_upgrade_but_can_still_read(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    free = await connect(api, sandbox, "free@example.com", sandbox_plan="free")
    assert free.granted.organization_uri is not None
    with pytest.raises(PlanRequired) as caught:
        await api.create_subscription(free.access, new_subscription(free))
    assert caught.value.status == 403
    listed = await api.list_subscriptions(
        free.access, organization_uri=free.granted.organization_uri, user_uri=free.granted.owner_uri
    )
    assert listed == []


async def test_another_organization_is_permission_denied(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    bob = await connect(api, sandbox, "bob@example.com")
    with pytest.raises(PermissionDenied) as caught:
        await api.create_subscription(bob.access, new_subscription(ada))
    assert not isinstance(caught.value, PlanRequired)
    assert caught.value.status == 403


async def test_an_invalid_argument_is_a_plain_calendly_error(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    with pytest.raises(CalendlyError) as caught:
        await api.create_subscription(ada.access, new_subscription(ada, callback_url="ftp://x"))
    assert type(caught.value) is CalendlyError
    assert caught.value.status == 400
    assert isinstance(caught.value.body, dict)
    assert caught.value.body["details"]


# ----------------------------------------------------------- rate limits
async def test_a_429_on_a_read_waits_out_the_reset_and_retries(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=429, reset_seconds=1)
    account = await api.current_user(ada.access)
    assert account.user_uri == ada.granted.owner_uri
    assert sleep.delays == [1.0]
    assert [c["status"] for c in await sandbox.calls(USERS_ME)] == [429, 200]


async def test_a_429_beyond_the_retry_budget_is_rate_limited(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=429, reset_seconds=2, count=MAX_RETRIES + 1)
    with pytest.raises(RateLimited) as caught:
        await api.current_user(ada.access)
    assert caught.value.retry_after == 2
    assert sleep.delays == [2.0] * MAX_RETRIES
    assert await count_calls(sandbox, USERS_ME) == MAX_RETRIES + 1


async def test_a_reset_longer_than_we_may_wait_is_rate_limited_at_once(
    make_api: ApiFactory, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    api = make_api(max_rate_limit_wait=5)
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=429, reset_seconds=30)
    with pytest.raises(RateLimited) as caught:
        await api.current_user(ada.access)
    assert caught.value.retry_after == 30
    assert sleep.delays == []


async def test_a_429_on_create_is_not_retried(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(CREATE, status=429, reset_seconds=7)
    with pytest.raises(RateLimited) as caught:
        await api.create_subscription(ada.access, new_subscription(ada))
    assert caught.value.retry_after == 7
    assert sleep.delays == []
    assert await count_calls(sandbox, CREATE) == 1


async def test_a_429_at_the_token_endpoint_is_not_retried(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(TOKEN, status=429, reset_seconds=9)
    with pytest.raises(RateLimited) as caught:
        await api.refresh(ada.refresh)
    assert caught.value.retry_after == 9
    assert sleep.delays == []
    assert await count_calls(sandbox, TOKEN) == 2  # the code exchange and this one


async def test_the_real_token_rate_limit_is_rate_limited(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    await sandbox.settings(token_requests_per_minute=1)
    ada = await connect(api, sandbox, "ada@example.com")
    with pytest.raises(RateLimited) as caught:
        await api.refresh(ada.refresh)
    assert 0 < caught.value.retry_after <= 60
    # The refresh token was not spent: a later refresh still works.
    await sandbox.settings(token_requests_per_minute=8)
    await api.refresh(ada.refresh)


# -------------------------------------------------- 5xx, resets, timeouts
async def test_a_read_is_retried_through_two_server_errors(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=500, count=2)
    with capture_logs() as logs:
        account = await api.current_user(ada.access)
    assert account.email == "ada@example.com"
    assert [c["status"] for c in await sandbox.calls(USERS_ME)] == [500, 500, 200]
    assert len(sleep.delays) == 2
    # Exponential with jitter: each wait within [half, all] of base * 2**n.
    assert 0.0005 <= sleep.delays[0] <= 0.001
    assert 0.001 <= sleep.delays[1] <= 0.002
    retries = [e for e in logs if e["event"] == "calendly.error_response"]
    assert [e["status"] for e in retries] == [500, 500]
    assert all(e["log_level"] == "warning" and e["path"] == "/users/me" for e in retries)
    assert retries[0]["body"]["title"] == "Internal Server Error"


async def test_server_errors_beyond_the_budget_are_unavailable(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=503, count=MAX_RETRIES + 1)
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.current_user(ada.access)
    assert caught.value.status == 503
    assert len(sleep.delays) == MAX_RETRIES


async def test_a_token_request_is_never_retried_after_a_server_error(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    verifier = secrets.token_urlsafe(48)
    code = await sandbox.code_for("ada@example.com", s256(verifier))
    await sandbox.fault(TOKEN, status=500, count=5)
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.exchange_code(
            code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier)
        )
    assert caught.value.status == 500
    assert await count_calls(sandbox, TOKEN) == 1
    assert sleep.delays == []


async def test_a_token_request_is_never_retried_after_a_reset_connection(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(TOKEN, reset_connection=True)
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.refresh(ada.refresh)
    assert caught.value.status == 0
    assert isinstance(caught.value.__cause__, aiohttp.ClientError | OSError)
    assert await count_calls(sandbox, TOKEN) == 2  # the code exchange and this one
    assert sleep.delays == []


async def test_a_read_is_retried_after_a_reset_connection(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    # aiohttp itself resends an idempotent request once after a dropped connection (RFC 9112
    # 9.3.1.1), so two resets are needed before the adapter's own retry has to step in.
    await sandbox.fault(USERS_ME, reset_connection=True, count=2)
    account = await api.current_user(ada.access)
    assert account.user_uri == ada.granted.owner_uri
    assert 1 <= len(sleep.delays) <= 2
    assert [c["status"] for c in await sandbox.calls(USERS_ME)][-1] == 200


async def test_connections_reset_beyond_the_budget_are_unavailable(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, reset_connection=True, count=100)
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.current_user(ada.access)
    assert caught.value.status == 0
    assert len(sleep.delays) == MAX_RETRIES


async def test_a_create_is_not_retried_after_a_reset_connection(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(CREATE, reset_connection=True)
    with pytest.raises(CalendlyUnavailable):
        await api.create_subscription(ada.access, new_subscription(ada))
    assert await count_calls(sandbox, CREATE) == 1
    assert sleep.delays == []


async def test_a_delete_is_retried_after_a_server_error(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    created = await api.create_subscription(ada.access, new_subscription(ada))
    await sandbox.fault(DELETE, status=502)
    await api.delete_subscription(ada.access, created.uri)
    assert [c["status"] for c in await sandbox.calls(DELETE)] == [502, 204]
    assert len(sleep.delays) == 1


async def test_a_read_that_times_out_is_retried(
    make_api: ApiFactory, sandbox: SandboxDriver, sleep: RecordingSleep
) -> None:
    api = make_api(timeout=aiohttp.ClientTimeout(total=0.2))
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, latency_ms=600)
    account = await api.current_user(ada.access)
    assert account.email == "ada@example.com"
    assert len(sleep.delays) == 1


async def test_an_unreachable_calendly_is_unavailable(
    make_api: ApiFactory, sleep: RecordingSleep
) -> None:
    # Port 9 (discard) on loopback: nothing listens there in a test environment.
    api = make_api(api_base_url="http://127.0.0.1:9")
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.current_user(Secret("whatever"))
    assert caught.value.status == 0
    assert len(sleep.delays) == MAX_RETRIES


async def test_a_2xx_that_cannot_be_read_is_unavailable(
    api: AiohttpCalendlyApi, sandbox: SandboxDriver
) -> None:
    ada = await connect(api, sandbox, "ada@example.com")
    await sandbox.fault(USERS_ME, status=200, body={"resource": {"uri": "x"}})
    with pytest.raises(CalendlyUnavailable) as caught:
        await api.current_user(ada.access)
    assert caught.value.status == 200


# ---------------------------------------------------------- secrets in logs
async def test_no_secret_reaches_a_log_line_or_an_exception(
    make_api: ApiFactory, sandbox: SandboxDriver
) -> None:
    api = make_api(max_read_retries=1)
    ada = await connect(api, sandbox, "ada@example.com")
    signing_key = Secret(f"canary-signing-{secrets.token_hex(8)}")
    canaries = [
        ada.access.reveal(),
        ada.refresh.reveal(),
        signing_key.reveal(),
        sandbox.client.client_secret,
    ]
    # Calendly echoing credentials back: any under a telling key, and what the call itself sent
    # (which the adapter knows, so it can find it) inside free text.
    read_echo = {
        "title": "Internal Server Error",
        "message": f"token {ada.access.reveal()} is odd",
        "refresh_token": ada.refresh.reveal(),
        "details": [{"parameter": "x", "signing_key": signing_key.reveal()}],
    }
    echo = {
        "title": "Invalid Argument",
        "message": f"token {ada.access.reveal()} and key {signing_key.reveal()} are odd",
        "access_token": ada.access.reveal(),
        "details": [{"parameter": "signing_key", "signing_key": signing_key.reveal()}],
    }
    oauth_echo = {
        "error": "invalid_grant",
        "error_description": f"{ada.refresh.reveal()} / {sandbox.client.client_secret}",
        "refresh_token": ada.refresh.reveal(),
    }
    token_200 = {"access_token": ada.access.reveal(), "refresh_token": "r", "expires_in": "soon"}
    errors: list[BaseException] = []
    with capture_logs() as logs:
        await sandbox.fault(CREATE, status=400, body=echo)
        with pytest.raises(CalendlyError) as create_error:
            await api.create_subscription(
                ada.access, new_subscription(ada, signing_key=signing_key)
            )
        errors.append(create_error.value)

        await sandbox.fault(USERS_ME, status=500, body=read_echo, count=2)
        with pytest.raises(CalendlyUnavailable) as read_error:
            await api.current_user(ada.access)
        errors.append(read_error.value)

        await sandbox.fault(TOKEN, status=400, body=oauth_echo)
        with pytest.raises(InvalidGrant) as grant_error:
            await api.refresh(ada.refresh)
        errors.append(grant_error.value)

        await sandbox.fault(TOKEN, status=200, body=token_200)
        with pytest.raises(CalendlyUnavailable) as parse_error:
            await api.refresh(ada.refresh)
        errors.append(parse_error.value)

        await sandbox.fault(USERS_ME, status=200, body={"resource": read_echo})
        with pytest.raises(CalendlyUnavailable) as api_parse_error:
            await api.current_user(ada.access)
        errors.append(api_parse_error.value)

    assert [e["event"] for e in logs] == [
        "calendly.error_response",  # create, 400
        "calendly.error_response",  # read, 500, retried
        "calendly.error_response",  # read, 500 again, final
        "calendly.error_response",  # token, invalid_grant
        "calendly.unparsable_response",  # token, 200 that cannot be read
        "calendly.unparsable_response",  # read, 200 that cannot be read
    ]
    assert all(e["log_level"] == "warning" for e in logs)
    everything = repr(logs) + "".join(
        f"{e}{e!r}{e.args!r}{getattr(e, 'body', None)!r}" + "".join(traceback.format_exception(e))
        for e in errors
    )
    for canary in canaries:
        assert canary not in everything
    assert grant_error.value.body == {
        "error": "invalid_grant",
        "error_description": "********** / **********",
        "refresh_token": "**********",
    }


def test_redact_replaces_credential_keys_at_any_depth() -> None:
    body = {
        "title": "x",
        "Access_Token": "a",
        "details": [{"parameter": "code", "code": "c", "nested": {"client_secret": "s"}}],
    }
    assert redact(body) == {
        "title": "x",
        "Access_Token": "**********",
        "details": [
            {"parameter": "code", "code": "**********", "nested": {"client_secret": "**********"}}
        ],
    }
