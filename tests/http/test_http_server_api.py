"""The server API (/v1) over fakes: API keys only, scopes, every user's data, sessions, erasure."""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import jsonschema_rs
import jwt
import pytest
import structlog
from litestar import Litestar
from litestar.routes import HTTPRoute
from litestar.testing import AsyncTestClient

from domain.api_keys import KEY_PREFIX
from domain.errors import CalendlyUnavailable
from domain.model import ConnectionStatus
from entrypoints.service.http.app import create_app
from entrypoints.service.http.sessions import UserSessions
from tests.support.http_app import (
    BASE_URL,
    SESSION_KEY,
    Api,
    bearer,
    booking,
    key_auth,
    make_config,
    new_api_key,
    services_of,
)

WRITES = [
    ("DELETE", "/v1/users/alice/connection"),
    ("DELETE", "/v1/users/alice"),
    ("POST", "/v1/users/alice/sessions"),
]
READS = [
    ("GET", "/v1/changes"),
    ("GET", "/v1/connections"),
    ("GET", "/v1/users/alice/connection"),
    ("GET", "/v1/users/alice/meetings"),
]


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["type"].endswith(slug), problem
    return problem


def v1_routes(app: Litestar) -> list[tuple[str, str]]:
    """Every method and path the app serves under /v1, with a user id in place of `{user_id}`."""
    found: list[tuple[str, str]] = []
    for route in app.routes:
        if isinstance(route, HTTPRoute) and route.path.startswith("/v1"):
            path = re.sub(r"\{user_id:str\}", "alice", route.path)
            found += [(m, path) for m in route.route_handler_map if m not in ("OPTIONS", "HEAD")]
    return found


# ------------------------------------------------------------------ who may call


async def test_every_v1_route_wants_an_api_key(api: Api, app: Litestar) -> None:
    routes = v1_routes(app)
    assert set(routes) == set(READS + WRITES)  # a new route is checked here by itself
    for method, path in routes:
        response = await api.client.request(method, path)

        problem = assert_problem(response, 401, "not-authenticated")
        assert "ccsk_" in problem["detail"]
        assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(("method", "path"), READS + WRITES)
async def test_a_users_token_is_refused_on_v1_with_a_pointer_to_api_keys(
    api: Api, method: str, path: str
) -> None:
    response = await api.client.request(method, path, headers=bearer("alice"))

    problem = assert_problem(response, 401, "not-authenticated")
    assert "use an API key" in problem["detail"]


async def test_a_user_session_is_refused_on_v1(api: Api) -> None:
    key = await new_api_key(api.core, "write")
    session = await api.client.post("/v1/users/alice/sessions", headers=key_auth(key))
    token = session.json()["access_token"]

    response = await api.client.get("/v1/connections", headers=bearer_token(token))

    assert "use an API key" in assert_problem(response, 401, "not-authenticated")["detail"]


@pytest.mark.parametrize(
    "path", ["/api/calendly/connection", "/api/meetings", "/api/live", "/api/calendly/connect"]
)
async def test_an_api_key_is_refused_on_api(api: Api, path: str) -> None:
    key = await new_api_key(api.core, "write")

    method = "POST" if path.endswith("/connect") else "GET"
    response = await api.client.request(method, path, headers=key_auth(key))

    problem = assert_problem(response, 401, "not-authenticated")
    assert "/api takes a user's token" in problem["detail"]


@pytest.mark.parametrize(
    ("token", "said"),
    [
        pytest.param(KEY_PREFIX + "A" * 43, "not known", id="unknown"),
        pytest.param(KEY_PREFIX + "short", "not an API key", id="too-short"),
        pytest.param(KEY_PREFIX + "!" * 43, "not an API key", id="not-base64url"),
    ],
)
async def test_a_key_that_is_not_one_of_ours_is_401(api: Api, token: str, said: str) -> None:
    response = await api.client.get("/v1/connections", headers=key_auth(token))

    assert said in assert_problem(response, 401, "not-authenticated")["detail"]


@pytest.mark.parametrize(("method", "path"), WRITES)
async def test_a_read_key_may_not_write(api: Api, method: str, path: str) -> None:
    await api.connect("alice")
    key = await new_api_key(api.core, "read")

    response = await api.client.request(method, path, headers=key_auth(key))

    problem = assert_problem(response, 403, "insufficient-scope")
    assert "'write' scope" in problem["detail"]
    assert api.connection("alice").status is ConnectionStatus.ACTIVE  # nothing happened


@pytest.mark.parametrize(("method", "path"), READS)
async def test_read_and_write_keys_may_read(api: Api, method: str, path: str) -> None:
    await api.connect("alice")
    for scope in ("read", "write"):
        key = await new_api_key(api.core, scope, name=scope)

        response = await api.client.request(method, path, headers=key_auth(key))

        assert response.status_code == 200, response.text
        assert response.headers["cache-control"] == "no-store"


async def test_a_revoked_key_fails_once_the_five_second_cache_lapses(api: Api) -> None:
    key = await new_api_key(api.core)
    assert (await api.client.get("/v1/connections", headers=key_auth(key))).status_code == 200

    await api.core.revoke_api_key(key[: len(KEY_PREFIX) + 8])
    api.core.clock.advance(4.9)
    assert (await api.client.get("/v1/connections", headers=key_auth(key))).status_code == 200
    api.core.clock.advance(0.1)
    response = await api.client.get("/v1/connections", headers=key_auth(key))

    assert "revoked" in assert_problem(response, 401, "not-authenticated")["detail"]


async def test_several_keys_work_at_once_so_they_can_rotate(api: Api) -> None:
    old, new = await new_api_key(api.core, name="old"), await new_api_key(api.core, name="new")
    await api.core.revoke_api_key(old)
    api.core.clock.advance(5)

    assert (await api.client.get("/v1/connections", headers=key_auth(old))).status_code == 401
    assert (await api.client.get("/v1/connections", headers=key_auth(new))).status_code == 200


async def test_keys_are_looked_up_once_per_cache_period_and_use_is_written_later(
    api: Api,
) -> None:
    key = await new_api_key(api.core)
    for _ in range(20):
        response = await api.client.get("/v1/connections", headers=key_auth(key))
        assert response.status_code == 200
    store = api.core.api_keys
    assert store.lookups == 1
    assert store.uses == []  # no request wrote anything

    assert await api.core.authenticate_api_key.flush_usage() == 1
    [stored] = await store.all()
    assert stored.last_used_at == api.core.clock.now()


async def test_the_log_names_the_key_by_its_prefix_and_what_an_erasure_removed(
    api: Api,
) -> None:
    await api.connect("alice")
    key = await new_api_key(api.core, "write")
    with structlog.testing.capture_logs(
        processors=[structlog.contextvars.merge_contextvars]
    ) as logs:
        await api.client.delete("/v1/users/alice", headers=key_auth(key))

    [line] = [e for e in logs if e["event"] == "http.request"]
    assert line["api_key_prefix"] == key[:13]
    assert line["user_id"] == "alice"
    [erased] = [e for e in logs if e["event"] == "server_api.user_erased"]
    assert erased["removed_connections"] == 1
    assert key not in repr(logs)
    assert "api_key_prefix" not in structlog.contextvars.get_contextvars()


# ------------------------------------------------------------------ connections


async def test_the_list_pages_through_every_users_connection_without_a_secret(api: Api) -> None:
    for user in ("carol", "alice", "bob"):
        await api.connect(user)
        api.core.clock.advance(1)
    key = await new_api_key(api.core)

    first = await api.client.get("/v1/connections?limit=2", headers=key_auth(key))
    assert first.status_code == 200, first.text
    page = first.json()
    second = await api.client.get(
        "/v1/connections", params={"limit": 2, "cursor": page["next_cursor"]}, headers=key_auth(key)
    )
    rest = second.json()

    listed = page["connections"] + rest["connections"]
    assert [c["user_id"] for c in listed] == ["carol", "alice", "bob"]  # oldest first
    assert rest["next_cursor"] is None
    assert all(c["status"] == "active" and c["email"] for c in listed)
    for user in ("carol", "alice", "bob"):
        connection = api.connection(user)
        assert connection.tokens is not None
        assert connection.signing_key is not None
        for secret in (
            connection.tokens.access_token.reveal(),
            connection.tokens.refresh_token.reveal(),
            connection.signing_key.reveal(),
            connection.webhook_token,
        ):
            assert secret not in first.text + second.text


async def test_the_list_filters_by_status(api: Api) -> None:
    await api.connect("alice")
    await api.connect("bob")
    key = await new_api_key(api.core, "write")
    await api.client.delete("/v1/users/bob/connection", headers=key_auth(key))

    response = await api.client.get(
        "/v1/connections", params={"status": "disconnected"}, headers=key_auth(key)
    )

    assert [c["user_id"] for c in response.json()["connections"]] == ["bob"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({"cursor": "bm90LWEtY3Vyc29y"}, "cursor"),
        ({"cursor": "!!"}, "cursor"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"status": "happy"}, "status"),
    ],
)
async def test_bad_list_parameters_are_400_naming_them(
    api: Api, query: dict[str, str], parameter: str
) -> None:
    key = await new_api_key(api.core)

    response = await api.client.get("/v1/connections", params=query, headers=key_auth(key))

    problem = assert_problem(response, 400, "invalid-request")
    assert parameter in problem["detail"]


async def test_a_meetings_cursor_is_not_a_connections_cursor(api: Api) -> None:
    host = await api.connect("alice")
    for event in ("e1", "e2"):
        await api.deliver(booking(host, event_id=event, invitee_id=f"{event}-i"), user_id="alice")
    meetings = await api.client.get("/api/meetings?limit=1", headers=bearer("alice"))
    key = await new_api_key(api.core)

    response = await api.client.get(
        "/v1/connections",
        params={"cursor": meetings.json()["next_cursor"]},
        headers=key_auth(key),
    )

    assert_problem(response, 400, "invalid-request")


async def test_one_users_connection_or_404(api: Api) -> None:
    await api.connect("alice")
    key = await new_api_key(api.core)

    found = await api.client.get("/v1/users/alice/connection", headers=key_auth(key))
    missing = await api.client.get("/v1/users/nobody/connection", headers=key_auth(key))

    assert found.status_code == 200
    assert found.json()["user_id"] == "alice"
    assert found.json()["status"] == "active"
    assert_problem(missing, 404, "connection-not-found")


@pytest.mark.parametrize(
    "user_id",
    [
        pytest.param("%00", id="control-character"),
        pytest.param("a%0Ab", id="newline"),
        pytest.param("u" * 256, id="too-long"),
    ],
)
@pytest.mark.parametrize(
    "path", ["/v1/users/{}/connection", "/v1/users/{}/meetings", "/v1/users/{}"]
)
async def test_a_malformed_user_id_is_a_400_naming_it(api: Api, user_id: str, path: str) -> None:
    key = await new_api_key(api.core, "write")
    method = "DELETE" if path.endswith("{}") else "GET"

    response = await api.client.request(method, path.format(user_id), headers=key_auth(key))

    problem = assert_problem(response, 400, "invalid-request")
    assert "user_id" in problem["detail"]


async def test_user_ids_with_other_printable_characters_are_addressed(api: Api) -> None:
    user = "auth0|5f7c8ec7c33c6c004bbafe82 Ünïcode@example.com"
    await api.connect(user)
    key = await new_api_key(api.core)

    response = await api.client.get(
        "/v1/users/auth0%7C5f7c8ec7c33c6c004bbafe82%20%C3%9Cn%C3%AFcode%40example.com/connection",
        headers=key_auth(key),
    )

    assert response.status_code == 200, response.text
    assert response.json()["user_id"] == user


async def test_a_disconnect_on_the_users_behalf_is_the_users_own(api: Api) -> None:
    host = await api.connect("alice")
    key = await new_api_key(api.core, "write")

    response = await api.client.delete("/v1/users/alice/connection", headers=key_auth(key))
    again = await api.client.delete("/v1/users/alice/connection", headers=key_auth(key))

    body = response.json()
    assert response.status_code == 200, response.text
    assert body["connection"]["status"] == "disconnected"
    assert body["subscription_deleted"] is True
    assert body["already_disconnected"] is False
    assert api.core.calendly.active_subscriptions(host) == []
    assert api.core.calendly.count("revoke") == 1
    assert again.json()["already_disconnected"] is True
    assert api.core.calendly.count("revoke") == 1


# --------------------------------------------------------------------- meetings


async def test_a_users_meetings_are_what_the_user_sees_with_the_same_filters(api: Api) -> None:
    alice, bob = await api.connect("alice"), await api.connect("bob")
    starts = ["2030-03-01T10:00:00.000000Z", "2030-03-02T10:00:00.000000Z"]
    for n, start in enumerate(starts):
        body = booking(alice, event_id=f"a{n}", invitee_id=f"a{n}-i", start=start)
        await api.deliver(body, user_id="alice")
    await api.deliver(booking(bob, event_id="b0", invitee_id="b0-i"), user_id="bob")
    key = await new_api_key(api.core)

    for query in ("", "?status=active", "?starts_after=2030-03-02T00:00:00Z", "?limit=1"):
        as_host = await api.client.get(f"/v1/users/alice/meetings{query}", headers=key_auth(key))
        as_user = await api.client.get(f"/api/meetings{query}", headers=bearer("alice"))
        assert as_host.status_code == 200, as_host.text
        assert as_host.json() == as_user.json()
    page = (await api.client.get("/v1/users/alice/meetings?limit=1", headers=key_auth(key))).json()
    rest = await api.client.get(
        "/v1/users/alice/meetings",
        params={"limit": 1, "cursor": page["next_cursor"]},
        headers=key_auth(key),
    )
    listed = page["meetings"] + rest.json()["meetings"]
    assert [m["event_uri"].rsplit("/", 1)[1] for m in listed] == ["a0", "a1"]


@pytest.mark.parametrize(
    ("query", "parameter"),
    [("?starts_after=yesterday", "starts_after"), ("?cursor=abc", "cursor"), ("?limit=0", "limit")],
)
async def test_bad_meetings_filters_are_400(api: Api, query: str, parameter: str) -> None:
    key = await new_api_key(api.core)

    response = await api.client.get(f"/v1/users/alice/meetings{query}", headers=key_auth(key))

    assert parameter in assert_problem(response, 400, "invalid-request")["detail"]


# --------------------------------------------------------------------- sessions


def bearer_token(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_a_session_is_a_users_token_on_api(api: Api) -> None:
    await api.connect("alice")
    key = await new_api_key(api.core, "write")

    before = datetime.now(tz=UTC).replace(microsecond=0)
    response = await api.client.post("/v1/users/alice/sessions", headers=key_auth(key))

    assert response.status_code == 201, response.text
    session = response.json()
    assert session["user_id"] == "alice"
    assert session["token_type"] == "Bearer"
    lasts = datetime.fromisoformat(session["expires_at"]) - before
    assert timedelta(minutes=15) <= lasts <= timedelta(minutes=15, seconds=2)
    status = await api.client.get(
        "/api/calendly/connection", headers=bearer_token(session["access_token"])
    )
    assert status.status_code == 200, status.text
    assert status.json()["email"] == "alice@example.com"


@pytest.mark.parametrize("ttl", [60, 3600])
async def test_a_session_lasts_as_long_as_asked(api: Api, ttl: int) -> None:
    key = await new_api_key(api.core, "write")

    response = await api.client.post(
        "/v1/users/alice/sessions", json={"ttl_seconds": ttl}, headers=key_auth(key)
    )

    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == ttl
    assert claims["sub"] == "alice"


@pytest.mark.parametrize(
    "body",
    [{"ttl_seconds": 59}, {"ttl_seconds": 3601}, {"ttl_seconds": "an hour"}, {"ttl": 60}, [60]],
)
async def test_a_bad_session_length_is_a_400(api: Api, body: object) -> None:
    key = await new_api_key(api.core, "write")

    response = await api.client.post("/v1/users/alice/sessions", json=body, headers=key_auth(key))

    assert_problem(response, 400, "invalid-request")


def session_from(keys: tuple[tuple[str, bytes], ...], *, issued_ago: float = 0) -> str:
    then = datetime.now(tz=UTC) - timedelta(seconds=issued_ago)
    token, _ = UserSessions(keys, now=lambda: then).issue("alice", timedelta(seconds=60))
    return token


@pytest.mark.parametrize(
    ("token", "said"),
    [
        pytest.param(session_from((("k1", SESSION_KEY),), issued_ago=120), "expired", id="expired"),
        pytest.param(session_from((("k1", b"x" * 32),)), "not valid", id="another-key"),
        pytest.param(session_from((("k9", SESSION_KEY),)), "no longer configured", id="old-kid"),
        pytest.param(
            jwt.encode(
                {"sub": "alice", "exp": int(time.time()) + 60},
                "e2e-shared-secret-for-hs256-tokens-0123456789",
                headers={"kid": "calendly-connect-session:k1"},
            ),
            "not valid",
            id="host-token-posing-as-a-session",
        ),
    ],
)
async def test_a_session_not_issued_here_is_refused(api: Api, token: str, said: str) -> None:
    response = await api.client.get("/api/calendly/connection", headers=bearer_token(token))

    assert said in assert_problem(response, 401, "not-authenticated")["detail"]


async def test_sessions_work_when_the_host_signs_in_with_jwks_only(api: Api) -> None:
    config = make_config(
        jwt_secrets=(), jwt_jwks_urls=("https://auth.example/jwks.json",), cursor_key=b"c" * 32
    )
    app = create_app(services_of(api.core, api.readiness), config)
    await api.connect("alice")
    key = await new_api_key(api.core, "write")
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        session = await client.post("/v1/users/alice/sessions", headers=key_auth(key))
        token = session.json()["access_token"]

        response = await client.get("/api/calendly/connection", headers=bearer_token(token))

    assert response.status_code == 200, response.text


def test_session_keys_come_from_every_encryption_key_the_active_one_first() -> None:
    keys = (("new", b"n" * 32), ("old", b"o" * 32))
    derived = [(kid, UserSessions.key_from_encryption_key(key)) for kid, key in keys]
    old_session = session_from((derived[1],))

    sessions = UserSessions(derived)
    token, _ = sessions.issue("alice")

    assert jwt.get_unverified_header(token)["kid"] == "calendly-connect-session:new"
    assert sessions.verify(old_session, jwt.get_unverified_header(old_session))[0] == "alice"
    assert derived[0][1] != b"n" * 32  # the encryption key itself is never a session key


# ---------------------------------------------------------------------- erasure


async def test_an_erasure_disconnects_then_removes_the_users_data_and_no_one_elses(
    api: Api,
) -> None:
    alice, bob = await api.connect("alice"), await api.connect("bob")
    for user, host in (("alice", alice), ("bob", bob)):
        await api.deliver(booking(host, event_id=f"{user}-e", invitee_id=f"{user}-i"), user_id=user)
    key = await new_api_key(api.core, "write")

    response = await api.client.delete("/v1/users/alice", headers=key_auth(key))

    assert response.status_code == 200, response.text
    assert response.json() == {
        "user_id": "alice",
        "subscription_deleted": True,
        "revoke_failed": False,
        "already_disconnected": False,
        "removed": {
            "connections": 1,
            "meetings": 1,
            "invitees": 1,
            "webhook_deliveries": 1,
            "oauth_states": 0,
            "host_notifications": 0,
            "maintenance": 0,
            "changes": 0,
        },
    }
    db = api.core.db
    assert "alice" not in db.connections
    assert all(row.user_id == "bob" for row in db.meetings.values())
    assert len(db.invitees) == 1
    assert [e.user_id for e in db.events.values()] == ["bob"]
    assert api.core.calendly.active_subscriptions(alice) == []
    assert api.core.calendly.count("revoke") == 1
    assert api.connection("bob").status is ConnectionStatus.ACTIVE
    missing = await api.client.get("/v1/users/alice/connection", headers=key_auth(key))
    assert_problem(missing, 404, "connection-not-found")


@pytest.mark.parametrize("user", ["alice", "never-seen"])
async def test_erasing_again_or_an_unknown_user_answers_200_with_nothing_removed(
    api: Api, user: str
) -> None:
    await api.connect("alice")
    key = await new_api_key(api.core, "write")
    await api.client.delete("/v1/users/alice", headers=key_auth(key))

    response = await api.client.delete(f"/v1/users/{user}", headers=key_auth(key))

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["already_disconnected"] is True
    assert set(body["removed"].values()) == {0}


async def test_an_erasure_calendly_cannot_hear_about_deletes_nothing(api: Api) -> None:
    host = await api.connect("alice")
    await api.deliver(booking(host), user_id="alice")
    key = await new_api_key(api.core, "write")
    api.core.calendly.fail_next("delete_subscription", CalendlyUnavailable(503, None), times=5)

    response = await api.client.delete("/v1/users/alice", headers=key_auth(key))

    assert_problem(response, 502, "calendly-unavailable")
    assert api.connection("alice").status is ConnectionStatus.ACTIVE
    assert len(api.core.db.meetings) == 1


# ---------------------------------------------------------------------- the document


async def test_the_document_names_the_key_scheme_apart_from_the_users(api: Api) -> None:
    document = (await api.client.get("/schema/openapi.json")).json()

    schemes = document["components"]["securitySchemes"]
    assert schemes["apiKey"]["scheme"] == "bearer"
    assert "ccsk_" in schemes["apiKey"]["description"]
    assert schemes["bearer"]["bearerFormat"] == "JWT"
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in ("get", "post", "delete"):
                continue
            if path.startswith("/v1/"):
                assert operation["security"] == [{"apiKey": []}], (method, path)
            elif path.startswith("/api/"):
                assert operation["security"] == [{"bearer": []}], (method, path)
    user_id = document["paths"]["/v1/users/{user_id}/meetings"]["get"]["parameters"]
    assert {"name": "user_id", "in": "path"}.items() <= next(
        p for p in user_id if p["name"] == "user_id"
    ).items()


# What the Schemathesis run of /v1 (tests/fuzz) found: the document let through what the service
# refuses with a 400. Judged by the validator Schemathesis itself uses (JSON Schema 2020-12).


def _validator(document: dict[str, Any], schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """`schema` of `document`, its `$ref`s to the components resolved."""
    return jsonschema_rs.validator_for({**schema, "components": document["components"]})


@pytest.mark.parametrize(
    "user_id",
    [
        pytest.param("alice", id="ascii"),
        pytest.param("auth0|5f7c Ünïcode@example.com", id="printable-unicode"),
        pytest.param("a\x1bb", id="control"),
        pytest.param("a\u00a0b", id="no-break-space"),
        pytest.param("a\u200bb", id="format"),
        pytest.param("a\u2028b", id="line-separator"),
        pytest.param("a\ue000b", id="private-use"),
        pytest.param("\xd7\U000bebc2", id="unassigned"),
    ],
)
async def test_the_document_takes_a_user_id_exactly_when_the_service_does(
    api: Api, user_id: str
) -> None:
    document = (await api.client.get("/schema/openapi.json")).json()
    key = await new_api_key(api.core)

    response = await api.client.get(
        f"/v1/users/{quote(user_id, safe='')}/connection", headers=key_auth(key)
    )

    assert response.status_code in (400, 404), response.text  # 404: taken, never connected
    taken = response.status_code == 404
    parameters = [
        (method, path, parameter["schema"])
        for path, item in document["paths"].items()
        for method, operation in item.items()
        for parameter in operation.get("parameters", [])
        if path.startswith("/v1/") and parameter["name"] == "user_id"
    ]
    assert len(parameters) == 5
    for method, path, schema in parameters:
        assert _validator(document, schema).is_valid(user_id) is taken, (method, path)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (None, 201),
        ({}, 201),
        ({"ttl_seconds": 60}, 201),
        ({"ttl": 60}, 400),
        ({"ttl_seconds": 60, "scope": "admin"}, 400),
    ],
)
async def test_the_document_takes_a_session_body_exactly_when_the_service_does(
    api: Api, body: object, status: int
) -> None:
    document = (await api.client.get("/schema/openapi.json")).json()
    key = await new_api_key(api.core, "write")
    operation = document["paths"]["/v1/users/{user_id}/sessions"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]

    response = await api.client.post(
        "/v1/users/alice/sessions",
        content=json.dumps(body),
        headers={**key_auth(key), "content-type": "application/json"},
    )

    assert response.status_code == status, response.text
    assert _validator(document, schema).is_valid(body) is (status == 201)
