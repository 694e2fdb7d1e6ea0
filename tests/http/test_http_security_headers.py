"""The browser-facing hygiene the other HTTP tests assume: the policy itself, every HTML answer
carrying it, and the binding cookie's attributes behind TLS and on local http.

The page and popup tests compare the Content-Security-Policy header with the constant; these
tests hold the constant to what it must say, so weakening it fails here.
"""

from __future__ import annotations

import httpx
import pytest
from litestar.testing import AsyncTestClient

from entrypoints.service.http.app import create_app
from entrypoints.service.http.middleware import CONTENT_SECURITY_POLICY
from entrypoints.service.server import http_config
from entrypoints.settings import load_settings
from tests.support.core import build_core
from tests.support.http_app import BASE_URL, Api, Readiness, bearer, make_config, services_of

BINDING = "cc_oauth_binding"


def directives(policy: str) -> dict[str, list[str]]:
    parsed: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *values = part.split()
        assert name not in parsed, f"{name} twice"
        parsed[name] = values
    return parsed


def test_the_policy_allows_no_inline_script_and_no_framing() -> None:
    policy = directives(CONTENT_SECURITY_POLICY)

    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', 'unsafe-eval', data:, *
    assert policy["default-src"] == ["'self'"]
    assert policy["frame-ancestors"] == ["'none'"]  # the popup and the app cannot be framed
    assert policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert "'unsafe-eval'" not in CONTENT_SECURITY_POLICY


@pytest.mark.parametrize(
    ("path", "accept"),
    [
        ("/", "text/html"),
        # The popup's error pages: a missing, an unknown, a denied authorization.
        ("/oauth/calendly/callback", "text/html"),
        ("/oauth/calendly/callback?state=unknown&code=c", "text/html"),
        ("/oauth/calendly/callback?state=unknown&error=access_denied", "*/*"),
    ],
)
async def test_every_html_answer_has_the_policy_and_is_never_stored(
    api: Api, path: str, accept: str
) -> None:
    response = await api.client.get(path, headers={"accept": accept})

    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


async def test_answers_that_carry_tokens_or_personal_data_are_never_stored(api: Api) -> None:
    await api.connect("alice")
    started = await api.start("bob")  # state and authorization URL
    answers = [
        started,
        await api.client.get("/api/calendly/connection", headers=bearer("alice")),
        await api.client.get("/api/meetings", headers=bearer("alice")),
        await api.client.post("/api/calendly/reconnect", headers=bearer("alice")),
        await api.client.get("/api/meetings", headers={"authorization": "Bearer nope"}),
    ]

    for response in answers:
        assert response.headers["cache-control"] == "no-store", response.request.url


def _set_cookie(response: httpx.Response) -> str:
    cookies = [c for c in response.headers.get_list("set-cookie") if c.startswith(BINDING)]
    assert len(cookies) == 1, cookies
    return str(cookies[0]).lower()


@pytest.mark.parametrize(
    ("public_base_url", "secure"),
    [
        # Behind a TLS-terminating proxy the service itself may see plain http: the public
        # address decides.
        ("https://connect.example", True),
        ("http://127.0.0.1:8000", False),  # local development over http
    ],
)
async def test_the_binding_cookie_is_httponly_samesite_and_secure_behind_tls(
    public_base_url: str, secure: bool
) -> None:
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://app@127.0.0.1/app",
            "CALENDLY_OAUTH_CLIENT_ID": "client",
            "CALENDLY_OAUTH_CLIENT_SECRET": "client-secret-value",
            "CALENDLY_WEBHOOK_SIGNING_KEY": "signing-key-value",
            "PUBLIC_BASE_URL": public_base_url,
            "TOKEN_ENCRYPTION_KEY": "k1:" + "A" * 43 + "=",
            "JWT_SECRET": "a-jwt-secret-of-at-least-thirty-two-characters",
        }
    )
    config = http_config(settings)
    assert config.secure_cookies is secure
    core = build_core()
    app = create_app(
        services_of(core, Readiness()),
        make_config(secure_cookies=config.secure_cookies, public_base_url=public_base_url),
    )
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        issued = _set_cookie(await client.post("/api/calendly/connect", headers=bearer("alice")))
        # The callback clears it, with the same attributes.
        cleared = _set_cookie(await client.get("/oauth/calendly/callback?state=unknown&code=c"))

    for cookie in (issued, cleared):
        attributes = [part.strip() for part in cookie.split(";")]
        assert "httponly" in attributes
        assert "samesite=lax" in attributes
        assert "path=/oauth/calendly" in attributes
        assert ("secure" in attributes) is secure
    assert "max-age=0" in cleared
