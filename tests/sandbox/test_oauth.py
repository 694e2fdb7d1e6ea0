"""The sandbox's OAuth server behaves as Calendly's does, over real HTTP."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from calendly_sandbox import OAuthClient
from tests.support.sandbox import (
    REDIRECT_URI,
    SandboxDriver,
    Tokens,
    parse_consent,
    pkce_pair,
    query_of,
    tokens_of,
)

TOKEN_ROUTE = "POST /oauth/token"
TOKEN_FIELDS = {
    "token_type",
    "access_token",
    "refresh_token",
    "scope",
    "created_at",
    "expires_in",
    "owner",
    "organization",
}
# Survives HTML attribute escaping and URL encoding only if both are done right.
TRICKY_STATE = 'it\'s <b>&"x"=1 é+%41'
UNAUTHENTICATED = {"title": "Unauthenticated", "message": "The access token is invalid"}


# ------------------------------------------------------------------ helpers
def s256(verifier: str) -> str:
    """RFC 7636 S256, computed here rather than trusting the sandbox's own function."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


async def oauth_error(response: aiohttp.ClientResponse) -> str:
    """The RFC 6749 `error` of a JSON error answer (which has exactly error + description)."""
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error", "error_description"}, body
    error: str = body["error"]
    return error


async def exchange(
    sandbox: SandboxDriver, code: str, verifier: str | None = None, **overrides: str
) -> aiohttp.ClientResponse:
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    if verifier is not None:
        form["code_verifier"] = verifier
    form.update(overrides)
    return await sandbox.token_request(form)


async def users_by_email(sandbox: SandboxDriver) -> dict[str, dict[str, Any]]:
    data = await sandbox.control("GET", "/_sandbox/users", expect=200)
    return {u["email"]: u for u in data["users"]}


async def user_id_of(sandbox: SandboxDriver, email: str) -> str:
    user_id: str = (await users_by_email(sandbox))[email]["id"]
    return user_id


async def register_client(sandbox: SandboxDriver, client_id: str, **extra: Any) -> SandboxDriver:
    """Register another OAuth app through the control API and drive the sandbox as it."""
    secret = secrets.token_urlsafe(24)
    body = {
        "client_id": client_id,
        "client_secret": secret,
        "redirect_uris": [REDIRECT_URI],
        **extra,
    }
    created = await sandbox.control("POST", "/_sandbox/clients", body, expect=201)
    assert created == {"client_id": client_id}
    client = OAuthClient(
        client_id=client_id, client_secret=secret, redirect_uris=[REDIRECT_URI], **extra
    )
    return dataclasses.replace(sandbox, client=client)


async def advance(sandbox: SandboxDriver, seconds: float) -> None:
    await sandbox.control("POST", "/_sandbox/clock/advance", {"seconds": seconds}, expect=200)


async def api_status(sandbox: SandboxDriver, token: str) -> tuple[int, Any]:
    status, body, _ = await sandbox.api("GET", "/users/me", token)
    return status, body


async def introspect(sandbox: SandboxDriver, token: str) -> dict[str, Any]:
    response = await sandbox.oauth_post("/oauth/introspect", {"token": token})
    assert response.status == 200, await response.text()
    body: dict[str, Any] = await response.json()
    return body


async def consent_page(sandbox: SandboxDriver, **params: str) -> str:
    response = await sandbox.authorize(**params)
    assert response.status == 200
    assert response.content_type == "text/html"
    return await response.text()


async def post_consent(sandbox: SandboxDriver, fields: dict[str, str]) -> aiohttp.ClientResponse:
    async with sandbox.http.post(
        f"{sandbox.url}/oauth/authorize", data=fields, allow_redirects=False
    ) as response:
        await response.read()
        return response


# ------------------------------------------------------------ the full dance
async def test_a_pkce_s256_dance_with_plain_http_returns_exactly_the_documented_token_fields(
    sandbox: SandboxDriver, http: aiohttp.ClientSession
) -> None:
    verifier = secrets.token_urlsafe(64)
    client = sandbox.client
    state = secrets.token_urlsafe(16)
    authorize = {
        "client_id": client.client_id,
        "response_type": "code",
        "redirect_uri": REDIRECT_URI,
        "state": state,
        "code_challenge": s256(verifier),
        "code_challenge_method": "S256",
        "sandbox_login": "ada@example.com",
        "sandbox_name": "Ada Host",
    }
    async with http.get(
        f"{sandbox.url}/oauth/authorize", params=authorize, allow_redirects=False
    ) as response:
        assert response.status == 302
        location = response.headers["Location"]
    assert location.startswith(f"{REDIRECT_URI}?")
    back = parse_qs(urlsplit(location).query)
    assert set(back) == {"code", "state"}
    assert back["state"] == [state]

    basic = base64.b64encode(f"{client.client_id}:{client.client_secret}".encode()).decode()
    form = {
        "grant_type": "authorization_code",
        "code": back["code"][0],
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }
    before = time.time()
    async with http.post(
        f"{sandbox.url}/oauth/token", data=form, headers={"Authorization": f"Basic {basic}"}
    ) as response:
        assert response.status == 200, await response.text()
        assert response.content_type == "application/json"
        assert response.headers["Cache-Control"] == "no-store"
        body = await response.json()
    after = time.time()

    ada = (await users_by_email(sandbox))["ada@example.com"]
    assert set(body) == TOKEN_FIELDS
    assert body["token_type"] == "Bearer"
    assert body["scope"] == "default"
    assert body["expires_in"] == 7200
    assert type(body["created_at"]) is int
    assert before - 1 <= body["created_at"] <= after + 1
    assert body["owner"] == ada["uri"] == f"{sandbox.url}/users/{ada['id']}"
    assert body["organization"] == ada["current_organization"]
    assert body["organization"].startswith(f"{sandbox.url}/organizations/")
    assert body["access_token"] != body["refresh_token"]
    assert min(len(body["access_token"]), len(body["refresh_token"])) > 100
    me = await sandbox.me(body["access_token"])
    assert me["name"] == "Ada Host"
    assert me["uri"] == body["owner"]


async def test_a_client_registered_for_legacy_token_responses_gets_no_organization(
    sandbox: SandboxDriver,
) -> None:
    legacy = await register_client(sandbox, "legacy-client", legacy_token_response=True)
    tokens = await legacy.connect("old@example.com")
    assert set(tokens.body) == TOKEN_FIELDS - {"organization"}
    assert tokens.organization is None
    me = await legacy.me(tokens.access_token)
    assert me["current_organization"].startswith(f"{sandbox.url}/organizations/")
    modern = await sandbox.connect("old@example.com")
    assert modern.organization == me["current_organization"]


# --------------------------------------------------------------- authorize
async def test_authorize_with_an_unknown_client_id_answers_400_html_without_redirecting(
    sandbox: SandboxDriver,
) -> None:
    response = await sandbox.authorize(client_id="nobody", state="st")
    assert response.status == 400
    assert response.content_type == "text/html"
    assert "Location" not in response.headers
    assert "client_id" in await response.text()


@pytest.mark.parametrize(
    "redirect_uri",
    [
        pytest.param(REDIRECT_URI + "/extra", id="suffix"),
        pytest.param(REDIRECT_URI[:-1], id="prefix"),
        pytest.param(REDIRECT_URI + "/", id="trailing-slash"),
        pytest.param(REDIRECT_URI + "?next=/", id="extra-query"),
        pytest.param(REDIRECT_URI.upper(), id="case"),
        pytest.param("https://evil.example/oauth/calendly/callback", id="other-host"),
        pytest.param("", id="empty"),
    ],
)
async def test_authorize_with_a_redirect_uri_not_exactly_registered_answers_400_without_redirecting(
    sandbox: SandboxDriver, redirect_uri: str
) -> None:
    response = await sandbox.authorize(
        redirect_uri=redirect_uri, state="st", sandbox_login="ada@example.com"
    )
    assert response.status == 400
    assert response.content_type == "text/html"
    assert "Location" not in response.headers
    assert "ada@example.com" not in await users_by_email(sandbox)


@pytest.mark.parametrize("response_type", ["token", "id_token", ""])
async def test_authorize_with_a_response_type_other_than_code_redirects_unsupported_response_type(
    sandbox: SandboxDriver, response_type: str
) -> None:
    response = await sandbox.authorize(
        response_type=response_type, state="keep-me", sandbox_login="ada@example.com"
    )
    assert response.status == 302
    location = response.headers["Location"]
    assert location.startswith(f"{REDIRECT_URI}?")
    back = query_of(location)
    assert back["error"] == "unsupported_response_type"
    assert back["state"] == "keep-me"
    assert "code" not in back


async def test_authorize_with_the_plain_challenge_method_redirects_invalid_request(
    sandbox: SandboxDriver,
) -> None:
    verifier, _ = pkce_pair()
    response = await sandbox.authorize(
        code_challenge=verifier,
        code_challenge_method="plain",
        state="keep-me",
        sandbox_login="ada@example.com",
    )
    assert response.status == 302
    back = query_of(response.headers["Location"])
    assert back["error"] == "invalid_request"
    assert back["state"] == "keep-me"
    assert "code" not in back


async def test_authorize_echoes_the_state_exactly_on_success(sandbox: SandboxDriver) -> None:
    state = "a b&c=d/é+%41"
    response = await sandbox.authorize(state=state, sandbox_login="ada@example.com")
    assert response.status == 302
    back = query_of(response.headers["Location"])
    assert back["state"] == state
    assert back["code"]


async def test_authorize_without_sandbox_login_shows_a_consent_form_carrying_the_request(
    sandbox: SandboxDriver,
) -> None:
    await sandbox.create_user("Ada Host", "ada@example.com")
    _, challenge = pkce_pair()
    html = await consent_page(
        sandbox, state="st-1", code_challenge=challenge, code_challenge_method="S256"
    )
    form = parse_consent(html)
    assert (form.method, form.action) == ("post", "/oauth/authorize")
    assert form.hidden == {
        "client_id": sandbox.client.client_id,
        "redirect_uri": REDIRECT_URI,
        "response_type": "code",
        "state": "st-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    ada_id = await user_id_of(sandbox, "ada@example.com")
    assert form.user_choices == [ada_id, "new"]
    assert set(form.plans) == {"standard", "free"}
    assert set(form.decisions) == {"approve", "deny"}


async def test_approving_the_consent_form_as_an_existing_user_issues_a_code_for_that_user(
    sandbox: SandboxDriver,
) -> None:
    await sandbox.create_user("Ada Host", "ada@example.com")
    await sandbox.create_user("Bob Other", "bob@example.com")
    bob_id = await user_id_of(sandbox, "bob@example.com")
    verifier, challenge = pkce_pair()
    form = parse_consent(
        await consent_page(
            sandbox, state=TRICKY_STATE, code_challenge=challenge, code_challenge_method="S256"
        )
    )
    assert bob_id in form.user_choices
    assert form.hidden["state"] == TRICKY_STATE
    response = await post_consent(
        sandbox, {**form.hidden, "decision": "approve", "user_id": bob_id}
    )
    assert response.status == 302
    back = query_of(response.headers["Location"])
    assert back["state"] == TRICKY_STATE
    exchanged = await exchange(sandbox, back["code"], verifier)
    assert exchanged.status == 200, await exchanged.text()
    assert tokens_of(await exchanged.json()).owner == f"{sandbox.url}/users/{bob_id}"


async def test_approving_the_consent_form_as_a_new_user_creates_that_user_on_the_chosen_plan(
    sandbox: SandboxDriver,
) -> None:
    form = parse_consent(await consent_page(sandbox, state="st-3"))
    assert form.user_choices == ["new"]
    response = await post_consent(
        sandbox,
        {
            **form.hidden,
            "decision": "approve",
            "user_id": "new",
            "new_name": "Fay Free",
            "new_email": "fay@example.com",
            "new_plan": "free",
        },
    )
    assert response.status == 302
    back = query_of(response.headers["Location"])
    assert back["state"] == "st-3"
    fay = (await users_by_email(sandbox))["fay@example.com"]
    assert fay["plan"] == "free"
    assert fay["name"] == "Fay Free"
    exchanged = await exchange(sandbox, back["code"])
    assert exchanged.status == 200, await exchanged.text()
    assert tokens_of(await exchanged.json()).owner == fay["uri"]


async def test_a_new_user_without_a_valid_email_gets_the_consent_page_again_not_a_code(
    sandbox: SandboxDriver,
) -> None:
    form = parse_consent(await consent_page(sandbox, state="st"))
    response = await post_consent(
        sandbox,
        {**form.hidden, "decision": "approve", "user_id": "new", "new_name": "X", "new_email": "x"},
    )
    assert response.status == 200
    assert response.content_type == "text/html"
    assert "Location" not in response.headers
    assert parse_consent(await response.text()).hidden == form.hidden
    assert await users_by_email(sandbox) == {}


async def test_denying_the_consent_form_redirects_access_denied_with_the_state(
    sandbox: SandboxDriver,
) -> None:
    form = parse_consent(await consent_page(sandbox, state="st-4"))
    response = await post_consent(
        sandbox,
        {**form.hidden, "decision": "deny", "user_id": "new", "new_email": "no@example.com"},
    )
    assert response.status == 302
    location = response.headers["Location"]
    assert location.startswith(f"{REDIRECT_URI}?")
    back = query_of(location)
    assert back["error"] == "access_denied"
    assert back["state"] == "st-4"
    assert "code" not in back
    assert await users_by_email(sandbox) == {}


async def test_the_sandbox_decision_deny_flag_redirects_access_denied_and_creates_nobody(
    sandbox: SandboxDriver,
) -> None:
    response = await sandbox.authorize(
        state="st-5", sandbox_login="ada@example.com", sandbox_decision="deny"
    )
    assert response.status == 302
    back = query_of(response.headers["Location"])
    assert back["error"] == "access_denied"
    assert back["state"] == "st-5"
    assert "code" not in back
    assert "ada@example.com" not in await users_by_email(sandbox)


# ------------------------------------------------------------ token endpoint
@pytest.mark.parametrize("basic", [True, False], ids=["http-basic", "form-body"])
async def test_the_token_endpoint_accepts_client_credentials_by_basic_auth_or_form_body(
    sandbox: SandboxDriver, basic: bool
) -> None:
    verifier, challenge = pkce_pair()
    code = await sandbox.code_for("ada@example.com", challenge)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }
    response = await sandbox.token_request(form, basic=basic)
    assert response.status == 200, await response.text()
    tokens = tokens_of(await response.json())
    refreshed = await sandbox.token_request(
        {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}, basic=basic
    )
    assert refreshed.status == 200, await refreshed.text()


@pytest.mark.parametrize("basic", [True, False], ids=["http-basic", "form-body"])
async def test_a_wrong_client_secret_is_401_invalid_client_and_spares_the_code(
    sandbox: SandboxDriver, basic: bool
) -> None:
    verifier, challenge = pkce_pair()
    code = await sandbox.code_for("ada@example.com", challenge)
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": REDIRECT_URI,
        "code_verifier": verifier,
    }
    response = await sandbox.token_request(form, basic=basic, secret="wrong")
    assert response.status == 401
    assert await oauth_error(response) == "invalid_client"
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert (await exchange(sandbox, code, verifier)).status == 200


async def test_a_token_request_without_any_client_credentials_is_401_invalid_client(
    sandbox: SandboxDriver,
) -> None:
    code = await sandbox.code_for("ada@example.com")
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    async with sandbox.http.post(f"{sandbox.url}/oauth/token", data=form) as response:
        assert response.status == 401
        assert await oauth_error(response) == "invalid_client"


@pytest.mark.parametrize("grant_type", ["password", "client_credentials", "implicit"])
async def test_an_unknown_grant_type_is_400_unsupported_grant_type(
    sandbox: SandboxDriver, grant_type: str
) -> None:
    response = await sandbox.token_request({"grant_type": grant_type, "code": "x"})
    assert response.status == 400
    assert await oauth_error(response) == "unsupported_grant_type"


@pytest.mark.parametrize(
    "form",
    [
        pytest.param({"grant_type": "authorization_code", "redirect_uri": REDIRECT_URI}, id="code"),
        pytest.param({"grant_type": "refresh_token"}, id="refresh_token"),
        pytest.param({"code": "x", "redirect_uri": REDIRECT_URI}, id="grant_type"),
    ],
)
async def test_a_token_request_missing_a_required_parameter_is_400_invalid_request(
    sandbox: SandboxDriver, form: dict[str, str]
) -> None:
    response = await sandbox.token_request(form)
    assert response.status == 400
    assert await oauth_error(response) == "invalid_request"


def json_body(form: dict[str, str]) -> dict[str, Any]:
    return {"json": form}


def multipart_body(form: dict[str, str]) -> dict[str, Any]:
    data = aiohttp.FormData(form)
    data.add_field("attachment", b"", filename="empty.bin")  # forces multipart/form-data
    return {"data": data}


@pytest.mark.parametrize("encode", [json_body, multipart_body], ids=["json", "multipart"])
async def test_a_token_request_that_is_not_url_encoded_is_400_invalid_request_and_spares_the_code(
    sandbox: SandboxDriver, encode: Callable[[dict[str, str]], dict[str, Any]]
) -> None:
    code = await sandbox.code_for("ada@example.com")
    client = sandbox.client
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT_URI}
    async with sandbox.http.post(
        f"{sandbox.url}/oauth/token",
        headers={
            "Authorization": aiohttp.encode_basic_auth(client.client_id, client.client_secret)
        },
        **encode(form),
    ) as response:
        assert response.status == 400
        assert await oauth_error(response) == "invalid_request"
    assert (await exchange(sandbox, code)).status == 200


async def test_an_authorization_code_is_single_use(sandbox: SandboxDriver) -> None:
    verifier, challenge = pkce_pair()
    code = await sandbox.code_for("ada@example.com", challenge)
    first = await exchange(sandbox, code, verifier)
    assert first.status == 200
    second = await exchange(sandbox, code, verifier)
    assert second.status == 400
    assert await oauth_error(second) == "invalid_grant"


async def test_an_authorization_code_expires_after_ten_minutes(sandbox: SandboxDriver) -> None:
    early = await sandbox.code_for("ada@example.com")
    late = await sandbox.code_for("ada@example.com")
    await advance(sandbox, 599)
    assert (await exchange(sandbox, early)).status == 200
    await advance(sandbox, 2)
    response = await exchange(sandbox, late)
    assert response.status == 400
    assert await oauth_error(response) == "invalid_grant"


@pytest.mark.parametrize(
    "redirect_uri",
    [REDIRECT_URI + "/other", "http://localhost:9/oauth/calendly/callback", None],
    ids=["suffix", "other-host", "missing"],
)
async def test_redeeming_a_code_with_another_redirect_uri_is_invalid_grant(
    sandbox: SandboxDriver, redirect_uri: str | None
) -> None:
    code = await sandbox.code_for("ada@example.com")
    form = {"grant_type": "authorization_code", "code": code}
    if redirect_uri is not None:
        form["redirect_uri"] = redirect_uri
    response = await sandbox.token_request(form)
    assert response.status == 400
    assert await oauth_error(response) == "invalid_grant"


@pytest.mark.parametrize("send_verifier", [True, False], ids=["wrong-verifier", "no-verifier"])
async def test_a_pkce_code_redeemed_without_its_verifier_is_invalid_grant(
    sandbox: SandboxDriver, send_verifier: bool
) -> None:
    _, challenge = pkce_pair()
    code = await sandbox.code_for("ada@example.com", challenge)
    someone_elses = pkce_pair()[0] if send_verifier else None
    response = await exchange(sandbox, code, someone_elses)
    assert response.status == 400
    assert await oauth_error(response) == "invalid_grant"


async def test_a_code_issued_to_one_client_cannot_be_redeemed_by_another(
    sandbox: SandboxDriver,
) -> None:
    other = await register_client(sandbox, "other-client")
    verifier, challenge = pkce_pair()
    code = await sandbox.code_for("ada@example.com", challenge)
    response = await exchange(other, code, verifier)
    assert response.status == 400
    assert await oauth_error(response) == "invalid_grant"
    theirs = await other.code_for("ada@example.com")
    assert (await exchange(other, theirs)).status == 200


# ------------------------------------------------------------------ refresh
async def refresh_ok(sandbox: SandboxDriver, refresh_token: str) -> Tokens:
    response = await sandbox.refresh(refresh_token)
    assert response.status == 200, await response.text()
    return tokens_of(await response.json())


async def test_a_refresh_rotates_to_a_new_pair_whose_refresh_token_works(
    sandbox: SandboxDriver,
) -> None:
    first = await sandbox.connect("ada@example.com")
    second = await refresh_ok(sandbox, first.refresh_token)
    assert second.access_token != first.access_token
    assert second.refresh_token != first.refresh_token
    assert set(second.body) == TOKEN_FIELDS
    assert second.body["expires_in"] == 7200
    assert (second.owner, second.organization) == (first.owner, first.organization)
    assert (await sandbox.me(second.access_token))["uri"] == first.owner
    third = await refresh_ok(sandbox, second.refresh_token)
    assert third.refresh_token not in {first.refresh_token, second.refresh_token}


async def test_reusing_a_rotated_refresh_token_is_400_invalid_grant(
    sandbox: SandboxDriver,
) -> None:
    first = await sandbox.connect("ada@example.com")
    second = await refresh_ok(sandbox, first.refresh_token)
    reused = await sandbox.refresh(first.refresh_token)
    assert reused.status == 400
    assert await oauth_error(reused) == "invalid_grant"
    # The failed reuse does not take down the pair that replaced it.
    await refresh_ok(sandbox, second.refresh_token)


async def test_an_unknown_refresh_token_is_400_invalid_grant(sandbox: SandboxDriver) -> None:
    response = await sandbox.refresh("sbx_rt_made_up")
    assert response.status == 400
    assert await oauth_error(response) == "invalid_grant"


async def test_a_refresh_token_of_another_client_is_invalid_grant(sandbox: SandboxDriver) -> None:
    tokens = await sandbox.connect("ada@example.com")
    other = await register_client(sandbox, "other-client")
    response = await other.refresh(tokens.refresh_token)
    assert response.status == 400
    assert await oauth_error(response) == "invalid_grant"
    await refresh_ok(sandbox, tokens.refresh_token)


async def test_the_old_access_token_keeps_working_after_a_refresh_until_it_expires(
    sandbox: SandboxDriver,
) -> None:
    first = await sandbox.connect("ada@example.com")
    await advance(sandbox, 3600)
    second = await refresh_ok(sandbox, first.refresh_token)
    assert (await api_status(sandbox, first.access_token))[0] == 200
    await advance(sandbox, 3601)
    assert await api_status(sandbox, first.access_token) == (401, UNAUTHENTICATED)
    assert (await api_status(sandbox, second.access_token))[0] == 200


async def test_an_access_token_expires_after_two_hours(sandbox: SandboxDriver) -> None:
    tokens = await sandbox.connect("ada@example.com")
    await advance(sandbox, 7199)
    assert (await api_status(sandbox, tokens.access_token))[0] == 200
    await advance(sandbox, 2)
    assert await api_status(sandbox, tokens.access_token) == (401, UNAUTHENTICATED)
    fresh = await refresh_ok(sandbox, tokens.refresh_token)
    assert (await api_status(sandbox, fresh.access_token))[0] == 200


async def test_the_access_token_ttl_setting_shortens_expires_in_and_the_token_life(
    sandbox: SandboxDriver,
) -> None:
    changed = await sandbox.settings(access_token_ttl=30)
    assert changed["access_token_ttl"] == 30
    tokens = await sandbox.connect("ada@example.com")
    assert tokens.body["expires_in"] == 30
    assert (await api_status(sandbox, tokens.access_token))[0] == 200
    await advance(sandbox, 31)
    assert await api_status(sandbox, tokens.access_token) == (401, UNAUTHENTICATED)


async def test_expire_tokens_ends_access_tokens_while_the_refresh_token_still_works(
    sandbox: SandboxDriver,
) -> None:
    tokens = await sandbox.connect("ada@example.com")
    user_id = await user_id_of(sandbox, "ada@example.com")
    result = await sandbox.control("POST", f"/_sandbox/users/{user_id}/expire_tokens", expect=200)
    assert result == {"expired": 1}
    assert await api_status(sandbox, tokens.access_token) == (401, UNAUTHENTICATED)
    fresh = await refresh_ok(sandbox, tokens.refresh_token)
    assert (await api_status(sandbox, fresh.access_token))[0] == 200


async def test_revoke_app_ends_both_the_access_and_the_refresh_token(
    sandbox: SandboxDriver,
) -> None:
    tokens = await sandbox.connect("ada@example.com")
    bystander = await sandbox.connect("bob@example.com")
    user_id = await user_id_of(sandbox, "ada@example.com")
    result = await sandbox.control("POST", f"/_sandbox/users/{user_id}/revoke_app", expect=200)
    assert result == {"revoked": 1}
    assert await api_status(sandbox, tokens.access_token) == (401, UNAUTHENTICATED)
    refreshed = await sandbox.refresh(tokens.refresh_token)
    assert refreshed.status == 400
    assert await oauth_error(refreshed) == "invalid_grant"
    assert (await api_status(sandbox, bystander.access_token))[0] == 200
    again = await sandbox.connect("ada@example.com")
    assert (await api_status(sandbox, again.access_token))[0] == 200


# --------------------------------------------------------------- rate limit
async def test_the_ninth_token_request_of_a_user_within_a_minute_is_429_until_the_window_resets(
    sandbox: SandboxDriver,
) -> None:
    tokens = await sandbox.connect("ada@example.com")  # token request 1
    for _ in range(7):  # token requests 2..8
        tokens = await refresh_ok(sandbox, tokens.refresh_token)
    limited = await sandbox.refresh(tokens.refresh_token)  # token request 9
    assert limited.status == 429
    assert limited.headers["X-RateLimit-Limit"] == "8"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    assert 1 <= int(limited.headers["X-RateLimit-Reset"]) <= 60
    # Another user has a budget of their own.
    await sandbox.connect("bob@example.com")
    await advance(sandbox, 61)
    # The refused request did not use up the refresh token.
    again = await sandbox.refresh(tokens.refresh_token)
    assert again.status == 200, await again.text()
    assert again.headers["X-RateLimit-Remaining"] == "7"


async def test_a_code_exchange_counts_against_the_token_request_limit(
    sandbox: SandboxDriver,
) -> None:
    tokens = await sandbox.connect("ada@example.com")
    for _ in range(6):
        tokens = await refresh_ok(sandbox, tokens.refresh_token)
    code = await sandbox.code_for("ada@example.com")
    eighth = await exchange(sandbox, code)
    assert eighth.status == 200
    assert eighth.headers["X-RateLimit-Remaining"] == "0"
    ninth = await exchange(sandbox, await sandbox.code_for("ada@example.com"))
    assert ninth.status == 429


# ------------------------------------------------------------------- revoke
@pytest.mark.parametrize("which", ["access_token", "refresh_token"])
async def test_revoking_either_token_of_a_pair_ends_api_access_and_the_refresh_token(
    sandbox: SandboxDriver, which: str
) -> None:
    tokens = await sandbox.connect("ada@example.com")
    other = await sandbox.connect("ada@example.com")
    # The documented form: client_id, client_secret and token in the body.
    response = await sandbox.oauth_post(
        "/oauth/revoke", {"token": getattr(tokens, which)}, basic=False
    )
    assert response.status == 200
    assert await api_status(sandbox, tokens.access_token) == (401, UNAUTHENTICATED)
    refreshed = await sandbox.refresh(tokens.refresh_token)
    assert refreshed.status == 400
    assert await oauth_error(refreshed) == "invalid_grant"
    assert (await api_status(sandbox, other.access_token))[0] == 200


async def test_revoking_an_unknown_token_answers_200(sandbox: SandboxDriver) -> None:
    response = await sandbox.oauth_post("/oauth/revoke", {"token": "sbx_at_never_issued"})
    assert response.status == 200
    assert response.content_type == "application/json"


async def test_revoking_without_a_token_is_400_invalid_request(sandbox: SandboxDriver) -> None:
    response = await sandbox.oauth_post("/oauth/revoke", {})
    assert response.status == 400
    assert await oauth_error(response) == "invalid_request"


@pytest.mark.parametrize("path", ["/oauth/revoke", "/oauth/introspect"])
async def test_revoke_and_introspect_with_bad_client_credentials_are_401_invalid_client(
    sandbox: SandboxDriver, path: str
) -> None:
    tokens = await sandbox.connect("ada@example.com")
    response = await sandbox.oauth_post(path, {"token": tokens.access_token}, secret="wrong")
    assert response.status == 401
    assert await oauth_error(response) == "invalid_client"
    assert (await api_status(sandbox, tokens.access_token))[0] == 200


async def test_a_client_cannot_revoke_another_clients_token(sandbox: SandboxDriver) -> None:
    tokens = await sandbox.connect("ada@example.com")
    other = await register_client(sandbox, "other-client")
    response = await other.oauth_post("/oauth/revoke", {"token": tokens.access_token})
    assert response.status == 200
    assert (await api_status(sandbox, tokens.access_token))[0] == 200


# --------------------------------------------------------------- introspect
async def test_introspecting_an_active_token_names_its_client_and_owner(
    sandbox: SandboxDriver,
) -> None:
    tokens = await sandbox.connect("ada@example.com")
    access = await introspect(sandbox, tokens.access_token)
    assert access["active"] is True
    assert access["client_id"] == sandbox.client.client_id
    assert access["owner"] == tokens.owner
    assert access["organization"] == tokens.organization
    assert access["token_type"] == "Bearer"
    assert access["scope"] == "default"
    assert access["exp"] - access["iat"] == 7200
    refresh = await introspect(sandbox, tokens.refresh_token)
    assert refresh["active"] is True
    assert refresh["owner"] == tokens.owner


Scenario = Callable[[SandboxDriver], Awaitable[str]]


async def revoked_access_token(sandbox: SandboxDriver) -> str:
    tokens = await sandbox.connect("ada@example.com")
    response = await sandbox.oauth_post("/oauth/revoke", {"token": tokens.access_token})
    assert response.status == 200
    return tokens.access_token


async def revoked_refresh_token(sandbox: SandboxDriver) -> str:
    tokens = await sandbox.connect("ada@example.com")
    response = await sandbox.oauth_post("/oauth/revoke", {"token": tokens.access_token})
    assert response.status == 200
    return tokens.refresh_token


async def expired_access_token(sandbox: SandboxDriver) -> str:
    tokens = await sandbox.connect("ada@example.com")
    await advance(sandbox, 7201)
    return tokens.access_token


async def used_refresh_token(sandbox: SandboxDriver) -> str:
    tokens = await sandbox.connect("ada@example.com")
    await refresh_ok(sandbox, tokens.refresh_token)
    return tokens.refresh_token


async def unknown_token(sandbox: SandboxDriver) -> str:
    return "sbx_at_never_issued"


async def other_clients_token(sandbox: SandboxDriver) -> str:
    other = await register_client(sandbox, "other-client")
    return (await other.connect("ada@example.com")).access_token


@pytest.mark.parametrize(
    "scenario",
    [
        revoked_access_token,
        revoked_refresh_token,
        expired_access_token,
        used_refresh_token,
        unknown_token,
        other_clients_token,
    ],
)
async def test_introspecting_a_dead_or_foreign_token_says_only_that_it_is_inactive(
    sandbox: SandboxDriver, scenario: Scenario
) -> None:
    token = await scenario(sandbox)
    assert await introspect(sandbox, token) == {"active": False}


# ----------------------------------------------------------------- call log
async def test_the_call_log_counts_every_token_request_with_its_status_and_user(
    sandbox: SandboxDriver,
) -> None:
    before = await sandbox.calls(TOKEN_ROUTE)
    assert before == []
    first = await sandbox.connect("ada@example.com")
    second = await refresh_ok(sandbox, first.refresh_token)
    reused = await sandbox.refresh(first.refresh_token)
    assert reused.status == 400
    third = await sandbox.refresh(second.refresh_token)
    assert third.status == 200
    unknown = await sandbox.token_request({"grant_type": "refresh_token", "refresh_token": "x"})
    assert unknown.status == 400
    stale = await sandbox.refresh(second.refresh_token)
    assert stale.status == 400
    unauthenticated = await sandbox.token_request(
        {"grant_type": "refresh_token", "refresh_token": second.refresh_token}, secret="wrong"
    )
    assert unauthenticated.status == 401

    calls = await sandbox.calls(TOKEN_ROUTE)
    assert [c["status"] for c in calls] == [200, 200, 400, 200, 400, 400, 401]
    assert all(c["route"] == TOKEN_ROUTE and c["method"] == "POST" for c in calls)
    owner = first.owner
    assert [c["user"] for c in calls] == [owner, owner, owner, owner, None, owner, None]
    assert [c["seq"] for c in calls] == sorted(c["seq"] for c in calls)
    authorize_calls = await sandbox.calls("GET /oauth/authorize")
    assert [c["status"] for c in authorize_calls] == [302]
