"""The example host app (examples/host-app): its ES256 tokens and JWKS are what the service's
authenticator accepts, its session and token endpoints, and its check of the service's signed
host webhooks (Standard Webhooks, as adapters/host_webhooks.py signs them)."""

from __future__ import annotations

import base64
import json
import stat
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp.test_utils import TestClient, TestServer

from adapters.host_webhooks import signature_header
from domain.errors import NotAuthenticated
from domain.secret import Secret
from entrypoints.service.http.auth import JwtAuthenticator
from entrypoints.service.http.jwks import JwksKeys
from tests.support.host_app import host_app_module

keys_module = host_app_module("keys")
sessions_module = host_app_module("sessions")
notifications = host_app_module("notifications")
config_module = host_app_module("config")
web_module = host_app_module("web")

AUDIENCE = "calendly-connect"
ISSUER = "http://localhost:8090"
SERVICE = "http://127.0.0.1:8000"
SECRET = "whsec_" + base64.b64encode(bytes(range(32))).decode()
OLD_SECRET = "whsec_" + base64.b64encode(bytes(range(32, 64))).decode()


def authenticator(jwks: dict[str, Any]) -> JwtAuthenticator:
    """The service's own token check, over the example's JWKS document."""

    async def fetch(url: str) -> bytes:
        return json.dumps(jwks).encode()

    keys = JwksKeys(["http://example.test/.well-known/jwks.json"], fetch=fetch)
    return JwtAuthenticator((), AUDIENCE, ISSUER, jwks=keys)


# ------------------------------------------------------------------ keys, tokens, JWKS
def test_the_first_start_makes_one_private_key_readable_by_its_owner_only(tmp_path: Path) -> None:
    folder = tmp_path / "keys"
    made = keys_module.SigningKeys.load_or_create(folder)
    files = list(folder.iterdir())
    assert [f.name for f in files] == [f"{made.current.kid}.pem"]
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    # The next start signs with the same key.
    assert keys_module.SigningKeys.load_or_create(folder).current.kid == made.current.kid


def test_the_jwks_publishes_the_public_key_only(tmp_path: Path) -> None:
    keys = keys_module.SigningKeys.load_or_create(tmp_path)
    (jwk,) = keys.jwks()["keys"]
    assert jwk["kid"] == keys.current.kid
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("EC", "P-256", "ES256", "sig")
    assert "d" not in jwk
    # The kid is the key's RFC 7638 thumbprint: 43 base64url characters.
    assert len(jwk["kid"]) == 43
    assert jwk["kid"] == keys_module.thumbprint(keys.current.private)


def test_a_token_carries_what_the_service_checks(tmp_path: Path) -> None:
    keys = keys_module.SigningKeys.load_or_create(tmp_path)
    now = int(time.time())
    issued = keys.issue("alice", audience=AUDIENCE, issuer=ISSUER, now=now)
    header = jwt.get_unverified_header(issued.token)
    assert header == {"alg": "ES256", "kid": keys.current.kid, "typ": "JWT"}
    jwk = jwt.PyJWK.from_dict(keys.jwks()["keys"][0])
    claims = jwt.decode(
        issued.token,
        jwk,
        algorithms=["ES256"],
        audience=AUDIENCE,
        issuer=ISSUER,
    )
    assert claims == {
        "sub": "alice",
        "aud": AUDIENCE,
        "iss": ISSUER,
        "iat": now,
        "exp": now + 15 * 60,
    }
    assert issued.expires_at == claims["exp"]


async def test_the_services_authenticator_accepts_the_examples_token(tmp_path: Path) -> None:
    keys = keys_module.SigningKeys.load_or_create(tmp_path)
    token = keys.issue("alice", audience=AUDIENCE, issuer=ISSUER).token
    principal = await authenticator(keys.jwks()).authenticate(token)
    assert principal.user_id == "alice"


@pytest.mark.parametrize(
    ("audience", "issuer"), [("someone-else", ISSUER), (AUDIENCE, "https://evil.test")]
)
async def test_the_service_refuses_a_token_for_another_audience_or_issuer(
    tmp_path: Path, audience: str, issuer: str
) -> None:
    keys = keys_module.SigningKeys.load_or_create(tmp_path)
    token = keys.issue("alice", audience=audience, issuer=issuer).token
    with pytest.raises(NotAuthenticated):
        await authenticator(keys.jwks()).authenticate(token)


async def test_an_expired_token_is_refused(tmp_path: Path) -> None:
    keys = keys_module.SigningKeys.load_or_create(tmp_path)
    token = keys.issue("alice", audience=AUDIENCE, issuer=ISSUER, now=time.time() - 3600).token
    with pytest.raises(NotAuthenticated, match="expired"):
        await authenticator(keys.jwks()).authenticate(token)


async def test_after_a_rotation_both_keys_are_published_and_the_new_one_signs(
    tmp_path: Path,
) -> None:
    old = keys_module.SigningKeys.load_or_create(tmp_path)
    old_token = old.issue("alice", audience=AUDIENCE, issuer=ISSUER).token
    rotated = keys_module.SigningKeys.add_new(tmp_path)
    assert rotated.current.kid != old.current.kid
    assert [k["kid"] for k in rotated.jwks()["keys"]] == [rotated.current.kid, old.current.kid]
    new_token = rotated.issue("bob", audience=AUDIENCE, issuer=ISSUER).token
    assert jwt.get_unverified_header(new_token)["kid"] == rotated.current.kid
    check = authenticator(rotated.jwks())
    assert (await check.authenticate(old_token)).user_id == "alice"
    assert (await check.authenticate(new_token)).user_id == "bob"


# ------------------------------------------------------------------ webhook signatures
BODY = (
    b'{"type":"connection.needs_reauth","timestamp":"2030-01-01T00:00:00Z",'
    b'"data":{"user_id":"alice","sequence":3,"cursor":"9.7","connection":null}}'
)


def service_headers(
    body: bytes = BODY, secrets: tuple[str, ...] = (SECRET,), at: datetime | None = None
) -> dict[str, str]:
    """What the service sends with `body` (adapters/host_webhooks.py signs)."""
    when = at or datetime.now(UTC)
    return {
        "webhook-id": "msg_7",
        "webhook-timestamp": str(int(when.timestamp())),
        "webhook-signature": signature_header([Secret(s) for s in secrets], "msg_7", when, body),
    }


def test_a_webhook_the_service_signed_verifies() -> None:
    notifications.verify_signature(BODY, service_headers(), [SECRET])


def test_the_old_secret_still_verifies_while_rotating() -> None:
    notifications.verify_signature(
        BODY, service_headers(secrets=(OLD_SECRET,)), [SECRET, OLD_SECRET]
    )
    # and the service, holding both, signs with both: either side may rotate first
    notifications.verify_signature(
        BODY, service_headers(secrets=(SECRET, OLD_SECRET)), [OLD_SECRET]
    )


def _without(name: str) -> dict[str, str]:
    headers = service_headers()
    del headers[name]
    return headers


# Built when the test runs, not when it is collected: a signature made at collection can be more
# than 5 minutes old by the time a long suite reaches it.
BAD_SIGNATURES: list[tuple[Callable[[], dict[str, str]], bytes, str]] = [
    (dict, BODY, "Missing required headers"),
    (lambda: _without("webhook-signature"), BODY, "Missing required headers"),
    (lambda: _without("webhook-id"), BODY, "Missing required headers"),
    (lambda: {**service_headers(), "webhook-signature": "v1,abc"}, BODY, "No matching signature"),
    (lambda: service_headers(secrets=(OLD_SECRET,)), BODY, "No matching signature"),
    (service_headers, BODY[:-1] + b" }", "No matching signature"),
    (lambda: {**service_headers(), "webhook-id": "msg_8"}, BODY, "No matching signature"),
    (lambda: service_headers(at=datetime.now(UTC) - timedelta(seconds=400)), BODY, "too old"),
    (lambda: service_headers(at=datetime.now(UTC) + timedelta(seconds=400)), BODY, "too new"),
]


@pytest.mark.parametrize(("headers", "body", "reason"), BAD_SIGNATURES)
def test_a_bad_signature_is_refused(
    headers: Callable[[], dict[str, str]], body: bytes, reason: str
) -> None:
    with pytest.raises(notifications.SignatureInvalid, match=reason):
        notifications.verify_signature(body, headers(), [SECRET])


def test_without_a_secret_every_webhook_is_refused() -> None:
    with pytest.raises(notifications.SignatureInvalid, match="no HOST_WEBHOOK_SECRET"):
        notifications.verify_signature(BODY, service_headers(), [])


# ------------------------------------------------------------------ the app over HTTP
@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    config = config_module.Config(
        public_url=ISSUER,
        service_url=SERVICE,
        audience=AUDIENCE,
        issuer=ISSUER,
        webhook_secrets=(SECRET,),
        data_dir=tmp_path,
    )
    app = web_module.create_app(
        config,
        keys_module.SigningKeys.load_or_create(tmp_path / "keys"),
        sessions_module.SessionCookies.load_or_create(tmp_path / "session.key"),
    )
    async with TestClient(TestServer(app)) as test_client:
        yield test_client


def signed(
    body: dict[str, Any], secret: str = SECRET, msg_id: str = "msg_7"
) -> tuple[bytes, dict[str, str]]:
    raw = json.dumps(body).encode()
    now = datetime.now(UTC)
    return raw, {
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature_header([Secret(secret)], msg_id, now, raw),
        "Content-Type": "application/json",
    }


async def test_the_page_allows_the_services_origin_and_no_inline_script(
    client: TestClient[Any, Any],
) -> None:
    response = await client.get("/")
    assert response.status == 200
    policy = response.headers["Content-Security-Policy"]
    assert f"script-src 'self' {SERVICE};" in policy
    assert f"connect-src 'self' {SERVICE};" in policy
    assert "unsafe-inline" not in policy
    page = await response.text()
    assert f'<meta name="calendly-connect-url" content="{SERVICE}">' in page
    assert page.count("<script") == page.count('<script type="module" src="/static/') == 1
    script = await client.get("/static/app.js")
    assert script.status == 200
    assert "/client/v1/calendly-connect.js" in await script.text()


async def test_sign_in_sets_an_httponly_cookie_and_answers_a_token(
    client: TestClient[Any, Any],
) -> None:
    nobody = await client.get("/api/session")
    assert (nobody.status, await nobody.json()) == (200, {"user": None})
    response = await client.post("/api/session", json={"user": "  alice  "})
    assert response.status == 200
    body = await response.json()
    assert body["user"] == "alice"
    assert jwt.decode(body["token"], options={"verify_signature": False})["sub"] == "alice"
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert response.headers["Cache-Control"] == "no-store"
    again = await client.post("/api/session/token")
    assert again.status == 200
    assert (await again.json())["user"] == "alice"
    assert (await (await client.get("/api/session")).json())["user"] == "alice"
    out = await client.delete("/api/session")
    assert out.status == 204
    assert (await client.post("/api/session/token")).status == 401


async def test_a_fresh_token_needs_a_genuine_session(client: TestClient[Any, Any]) -> None:
    assert (await client.post("/api/session/token")).status == 401
    forged = {"host_app_session": "eyJ1IjoibWFsbG9yeSIsImV4cCI6OTk5OTk5OTk5OX0.00"}
    assert (await client.post("/api/session/token", cookies=forged)).status == 401


@pytest.mark.parametrize("user", ["", "   ", "x" * 65, "tab\there", None, 42])
async def test_sign_in_refuses_an_unusable_name(client: TestClient[Any, Any], user: Any) -> None:
    response = await client.post("/api/session", json={"user": user})
    assert response.status == 400


async def test_sign_in_from_another_origin_is_refused(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        "/api/session", json={"user": "alice"}, headers={"Origin": "https://evil.test"}
    )
    assert response.status == 403


async def test_the_jwks_endpoint_serves_the_signing_keys(client: TestClient[Any, Any]) -> None:
    response = await client.get("/.well-known/jwks.json")
    assert response.status == 200
    keys = (await response.json())["keys"]
    token = (await (await client.post("/api/session", json={"user": "alice"})).json())["token"]
    assert [k["kid"] for k in keys] == [jwt.get_unverified_header(token)["kid"]]
    principal = await authenticator({"keys": keys}).authenticate(token)
    assert principal.user_id == "alice"


async def test_a_signed_notification_is_kept_for_its_user_once(
    client: TestClient[Any, Any],
) -> None:
    note = {
        "type": "connection.needs_reauth",
        "timestamp": "2030-01-01T00:00:00Z",
        "data": {"user_id": "alice", "sequence": 3, "cursor": "9.3", "connection": None},
    }
    raw, headers = signed(note, msg_id="msg_3")
    first = await client.post("/webhooks/calendly-connect", data=raw, headers=headers)
    assert (first.status, await first.json()) == (200, {"received": True, "duplicate": False})
    # A retried delivery of the same id: acknowledged (so the service stops), kept once.
    again = await client.post("/webhooks/calendly-connect", data=raw, headers=headers)
    assert (again.status, await again.json()) == (200, {"received": True, "duplicate": True})
    await client.post("/api/session", json={"user": "alice"})
    seen = (await (await client.get("/api/notifications")).json())["notifications"]
    assert [(n["id"], n["type"], n["sequence"]) for n in seen] == [
        ("msg_3", "connection.needs_reauth", 3)
    ]
    await client.post("/api/session", json={"user": "bob"})
    assert (await (await client.get("/api/notifications")).json())["notifications"] == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"webhook-id": "msg_1", "webhook-timestamp": "1", "webhook-signature": "v1,AA=="},
        {"webhook-id": "msg_1", "webhook-timestamp": "junk", "webhook-signature": "junk"},
    ],
)
async def test_an_unsigned_or_badly_signed_notification_gets_401(
    client: TestClient[Any, Any], headers: dict[str, str]
) -> None:
    response = await client.post("/webhooks/calendly-connect", data=BODY, headers=headers)
    assert response.status == 401


async def test_a_notification_signed_with_another_secret_gets_401(
    client: TestClient[Any, Any],
) -> None:
    raw, headers = signed({"id": 1}, secret=OLD_SECRET)
    response = await client.post("/webhooks/calendly-connect", data=raw, headers=headers)
    assert response.status == 401


async def test_a_signed_body_that_is_no_notification_gets_400(
    client: TestClient[Any, Any],
) -> None:
    raw, headers = signed({"id": "seven", "type": "x"})
    response = await client.post("/webhooks/calendly-connect", data=raw, headers=headers)
    assert response.status == 400
