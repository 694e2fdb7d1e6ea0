"""Webhook deliveries over HTTP: raw bytes, signatures, limits, and never a 5xx for junk."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar import Litestar
from litestar.testing import AsyncTestClient

from entrypoints.service.http.app import create_app
from entrypoints.service.http.config import MIB
from entrypoints.service.http.context import OneIn
from entrypoints.webhook_health import WebhookFailures
from tests.support.core import APP_KEY, Core, build_core
from tests.support.deliveries import sign
from tests.support.http_app import (
    BASE_URL,
    Api,
    RawResponse,
    Readiness,
    booking,
    make_config,
    raw_request,
    services_of,
)

JSON_HEADERS = [(b"content-type", b"application/json")]


def rows(api: Api) -> tuple[int, int]:
    """Everything a delivery could have written: event records and meetings."""
    return len(api.core.db.events), len(api.core.db.meetings)


async def test_a_signed_delivery_takes_effect_once_however_often_it_comes(api: Api) -> None:
    host = await api.connect("alice")
    body = booking(host)

    first = await api.deliver(body, user_id="alice")
    second = await api.deliver(body, user_id="alice")

    assert first.status_code == 200
    assert first.json() == {"outcome": "applied"}
    assert second.status_code == 200
    assert second.json() == {"outcome": "duplicate"}
    assert rows(api) == (1, 1)


async def test_the_shared_url_routes_an_app_signed_delivery_by_its_user(api: Api) -> None:
    host = await api.connect("alice")

    response = await api.deliver(booking(host), key=APP_KEY.reveal(), path="/webhooks/calendly")

    assert response.status_code == 200
    assert response.json() == {"outcome": "applied"}
    [(_, row)] = api.core.db.meetings.items()
    assert row.user_id == "alice"


async def test_a_signed_delivery_for_an_unknown_url_is_acknowledged_and_kept_aside(
    api: Api,
) -> None:
    host = api.core.calendly.add_user("nobody@example.com")

    response = await api.deliver(
        booking(host), key=APP_KEY.reveal(), path="/webhooks/calendly/no-such-token"
    )

    assert response.status_code == 200
    assert response.json() == {"outcome": "stored_aside"}
    assert rows(api) == (1, 0)


@pytest.mark.parametrize("tamper", ["wrong-key", "body-byte", "timestamp", "stale", "missing"])
async def test_a_forged_delivery_is_401_and_writes_nothing(api: Api, tamper: str) -> None:
    host = await api.connect("alice")
    connection = api.connection("alice")
    assert connection.signing_key is not None
    key, body, now = connection.signing_key.reveal(), booking(host), api.stamp()
    signature = {
        "wrong-key": sign(body, "not-the-key", now),
        "body-byte": sign(body.replace(b"Guest", b"Guesu"), key, now),
        "timestamp": sign(body, key, now).replace(f"t={now}", f"t={now + 1}"),
        "stale": sign(body, key, now - 181),
        "missing": "",
    }[tamper]

    response = await api.client.post(
        f"/webhooks/calendly/{connection.webhook_token}",
        content=body,
        headers={"content-type": "application/json", "calendly-webhook-signature": signature},
    )

    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["type"].endswith("invalid-signature")
    assert rows(api) == (0, 0)


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "application/jsonx", "json"],
)
async def test_anything_but_json_is_415(api: Api, content_type: str | None) -> None:
    host = await api.connect("alice")
    body = booking(host)
    headers = [] if content_type is None else [(b"content-type", content_type.encode())]
    connection = api.connection("alice")
    assert connection.signing_key is not None
    headers.append(
        (
            b"calendly-webhook-signature",
            sign(body, connection.signing_key.reveal(), api.stamp()).encode(),
        )
    )

    response = await raw_request(
        api.client.app, "POST", f"/webhooks/calendly/{connection.webhook_token}", headers, [body]
    )

    assert response.status == 415
    assert rows(api) == (0, 0)


@pytest.mark.parametrize(
    "content_type", ["application/json; charset=utf-8", "Application/JSON", "application/json;"]
)
async def test_json_with_parameters_is_accepted(api: Api, content_type: str) -> None:
    host = await api.connect("alice")

    response = await api.deliver(booking(host), user_id="alice", content_type=content_type)

    assert response.status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        b'{"event": "\xff\xfe\xc3\x28"}\x80',
        b'{"event": "invitee.created", "payload": {"uri": "\xed\xa0\x80"}}',
        b"\xff\xfe{}",
    ],
)
async def test_a_non_utf8_body_with_a_bad_signature_is_401(api: Api, body: bytes) -> None:
    stale = await api.deliver(body, signature="t=1,v1=" + "0" * 64)
    # A well-formed, current header with a wrong MAC gets as far as decoding the body.
    wrong_key = await api.deliver(body, key="not-a-configured-key")
    unsigned = await api.deliver(body)

    assert [r.status_code for r in (stale, wrong_key, unsigned)] == [401, 401, 401]
    assert rows(api) == (0, 0)


async def test_a_signed_non_utf8_body_is_acknowledged_and_kept_aside(api: Api) -> None:
    body = b'{"event": "\xff\xfe"}'

    response = await api.deliver(body, key=APP_KEY.reveal())

    assert response.status_code == 200
    assert response.json() == {"outcome": "stored_aside"}
    [record] = api.core.db.events.values()
    assert record.payload == body  # the raw bytes, never re-serialised


async def test_a_body_over_the_limit_with_content_length_is_413(api: Api) -> None:
    response = await api.deliver(b" " * (MIB + 1), key=APP_KEY.reveal())

    assert response.status_code == 413
    assert response.json()["status"] == 413
    assert rows(api) == (0, 0)


async def test_a_body_at_the_limit_is_read(api: Api) -> None:
    body = b"{}" + b" " * (MIB - 2)

    response = await api.deliver(body, key=APP_KEY.reveal())

    assert response.status_code == 200
    assert response.json() == {"outcome": "stored_aside"}


async def test_a_declared_length_over_the_limit_is_refused_before_reading(app: Litestar) -> None:
    headers = [*JSON_HEADERS, (b"content-length", str(MIB + 1).encode())]

    response = await raw_request(app, "POST", "/webhooks/calendly", headers, [b"{}"])

    assert response.status == 413
    assert response.chunks_read == 0


async def test_a_chunked_body_over_the_limit_is_abandoned_early(api: Api, app: Litestar) -> None:
    chunk = b" " * (64 * 1024)
    chunks = [chunk] * 40  # 2.5 MiB, no Content-Length

    response = await raw_request(app, "POST", "/webhooks/calendly", JSON_HEADERS, chunks)

    assert response.status == 413
    assert response.chunks_read <= MIB // len(chunk) + 1
    assert rows(api) == (0, 0)


async def test_a_database_outage_is_a_fast_503_and_the_retry_takes_effect_once(api: Api) -> None:
    host = await api.connect("alice")
    body = booking(host)
    api.core.db.unavailable = True

    down = await api.deliver(body, user_id="alice")
    api.core.db.unavailable = False
    retried = await api.deliver(body, user_id="alice")
    again = await api.deliver(body, user_id="alice")

    assert down.status_code == 503
    assert int(down.headers["retry-after"]) > 0
    assert down.json()["type"].endswith("storage-unavailable")
    assert retried.json() == {"outcome": "applied"}
    assert again.json() == {"outcome": "duplicate"}
    assert rows(api) == (1, 1)


header_values = st.one_of(
    st.none(),
    st.binary(max_size=120),
    st.text(alphabet="tv01=,abcdef ", max_size=120).map(str.encode),
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    signature=header_values,
    content_type=st.one_of(st.sampled_from([b"application/json"]), header_values),
    content_length=st.one_of(
        st.none(), st.binary(max_size=12), st.integers(-5, 3 * MIB).map(lambda n: str(n).encode())
    ),
    body=st.binary(max_size=512),
    sign_it=st.booleans(),
    per_connection=st.booleans(),
)
async def test_no_delivery_whatever_its_headers_and_body_gets_a_5xx(
    api: Api,
    signature: bytes | None,
    content_type: bytes | None,
    content_length: bytes | None,
    body: bytes,
    sign_it: bool,
    per_connection: bool,
) -> None:
    headers: list[tuple[bytes, bytes]] = []
    if sign_it:
        signature = sign(body, APP_KEY.reveal(), api.stamp()).encode()
    if signature is not None:
        headers.append((b"calendly-webhook-signature", signature))
    if content_type is not None:
        headers.append((b"content-type", content_type))
    if content_length is not None:
        headers.append((b"content-length", content_length))
    path = "/webhooks/calendly/some-token" if per_connection else "/webhooks/calendly"
    before = rows(api)

    response: RawResponse = await raw_request(api.client.app, "POST", path, headers, [body])

    assert response.status < 500, response.body
    assert response.status in (200, 400, 401, 413, 415), response.status
    assert response.headers["content-type"].startswith(
        "application/json" if response.status == 200 else "application/problem+json"
    )
    if response.status != 200:
        assert rows(api) == before


async def test_a_5xx_answered_to_calendly_goes_on_the_endpoints_health_record(api: Api) -> None:
    # What the health record starts from (DR-45): the route reports a 5xx, and on whose URL;
    # a client's mistake (401) or a success reports nothing.
    failures = WebhookFailures()
    services = dataclasses.replace(services_of(api.core, api.readiness), webhook_failures=failures)
    host = await api.connect("alice")
    connection = api.connection("alice")
    assert connection.signing_key is not None
    path = f"/webhooks/calendly/{connection.webhook_token}"
    body = booking(host)

    def headers(key: str) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "calendly-webhook-signature": sign(body, key, api.stamp()),
        }

    async with AsyncTestClient(app=create_app(services, api.config), base_url=BASE_URL) as client:
        forged = await client.post(path, content=body, headers=headers("not-the-key"))
        assert forged.status_code == 401
        assert failures.take() is None
        api.core.db.unavailable = True
        before = datetime.now(tz=UTC)
        down = await client.post(
            path, content=body, headers=headers(connection.signing_key.reveal())
        )
        api.core.db.unavailable = False
        assert down.status_code == 503
        failed = failures.take()
        assert failed is not None
        assert before <= failed.since <= datetime.now(tz=UTC)
        assert set(failed.tokens) == {connection.webhook_token}  # its connection is checked
        assert not failed.unknown
        fine = await client.post(
            path, content=body, headers=headers(connection.signing_key.reveal())
        )
        assert fine.status_code == 200
        assert failures.take() is None


@pytest.mark.parametrize("path", ["/webhooks/calendly", "/webhooks/calendly/some-token"])
async def test_a_client_that_hangs_up_is_not_a_failure_of_ours(api: Api, path: str) -> None:
    # Anyone can send half a body and go: whatever the app answers the vanished client, it must
    # not count as a 5xx answered to Calendly (else anyone could start a sweep of all, DR-45).
    failures = WebhookFailures()
    services = dataclasses.replace(services_of(api.core, api.readiness), webhook_failures=failures)
    headers = [(b"content-type", b"application/json"), (b"content-length", b"100")]
    app = create_app(services, api.config)
    await raw_request(app, "POST", path, headers, [b'{"ev'], hang_up=True)
    assert failures.take() is None


async def test_accepted_deliveries_are_logged_one_in_n_and_refusals_always(core: Core) -> None:
    """WEBHOOK_LOG_ONE_IN: every delivery is counted and recorded; of the accepted ones only a
    sample gets a request line, while every refusal keeps its own (issue 17)."""
    config = make_config(webhook_log_sample=OneIn(3))
    app = create_app(services_of(core, Readiness()), config)
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        api = Api(core=core, client=client, readiness=Readiness(), config=config)
        host = await api.connect("alice")
        with structlog.testing.capture_logs() as logs:
            for n in range(7):
                response = await api.deliver(booking(host, invitee_id=f"i{n}"), user_id="alice")
                assert response.status_code == 200
            forged = await api.deliver(booking(host), user_id="alice", key="not-the-key")
            assert forged.status_code == 401
    lines = [e for e in logs if e["event"] == "http.request"]
    assert [line["status"] for line in lines] == [200, 200, 200, 401]  # the 1st, 4th, 7th
    assert [line.get("outcome") for line in lines[:3]] == ["applied"] * 3
    assert len(core.db.events) == 7


def _comparable(response: RawResponse) -> tuple[int, str, dict[str, object] | bytes, str | None]:
    """An answer without what differs by design between two requests (the request id)."""
    body: dict[str, object] | bytes = bytes(response.body)
    if response.body:
        try:
            decoded = json.loads(response.body)
        except ValueError:
            pass
        else:
            if isinstance(decoded, dict):
                decoded.pop("request_id", None)
                body = decoded
    return (
        response.status,
        response.headers.get("content-type", ""),
        body,
        response.headers.get("retry-after"),
    )


@settings(max_examples=60, deadline=None)
@given(
    requests=st.lists(
        st.tuples(
            st.sampled_from(["booking", "same-booking", "random", "empty"]),
            st.sampled_from(["own-key", "app-key", "forged", "none"]),
            st.sampled_from(["alice", "shared", "unknown", "nested", "trailing"]),
            st.sampled_from(
                [b"application/json", b"Application/JSON; charset=utf-8", b"text/plain"]
            ),
            st.sampled_from(["exact", "none", "bogus", "huge"]),
            st.booleans(),  # from a browser (Origin)
            st.booleans(),  # the database down
        ),
        min_size=1,
        max_size=6,
    )
)
async def test_the_lean_path_answers_exactly_as_litestar_does(
    requests: list[tuple[str, str, str, bytes, str, bool, bool]],
) -> None:
    """Issue 17's lean path against Litestar's routes, request by request, on two cores that
    start alike: the same statuses, media types, bodies and Retry-After, and the same rows."""
    sides = []
    for fast in (True, False):
        core = build_core()
        config = make_config()
        app = create_app(services_of(core, Readiness()), config, fast_paths=fast)
        client = AsyncTestClient(app=app, base_url=BASE_URL)
        await client.__aenter__()
        api = Api(core=core, client=client, readiness=Readiness(), config=config)
        sides.append((api, await api.connect("alice"), client))
    try:
        for n, (body_kind, key_kind, where, content_type, length, browser, down) in enumerate(
            requests
        ):
            answers = []
            for api, host, _ in sides:
                connection = api.connection("alice")
                assert connection.signing_key is not None
                body = {
                    "booking": booking(host, invitee_id=f"i{n}"),
                    "same-booking": booking(host, invitee_id="again"),
                    "random": b'{"event": "invitee.created", "payload": 7}',
                    "empty": b"",
                }[body_kind]
                path = {
                    "alice": f"/webhooks/calendly/{connection.webhook_token}",
                    "shared": "/webhooks/calendly",
                    "unknown": "/webhooks/calendly/no-such-token",
                    "nested": f"/webhooks/calendly/{connection.webhook_token}/x",
                    "trailing": "/webhooks/calendly/",
                }[where]
                key = {
                    "own-key": connection.signing_key.reveal(),
                    "app-key": APP_KEY.reveal(),
                    "forged": "not-the-key",
                    "none": None,
                }[key_kind]
                headers = [(b"content-type", content_type)]
                if key is not None:
                    headers.append(
                        (b"calendly-webhook-signature", sign(body, key, api.stamp()).encode())
                    )
                declared = {
                    "exact": str(len(body)),
                    "none": None,
                    "bogus": "12x",
                    "huge": str(2 * MIB),
                }[length]
                if declared is not None:
                    headers.append((b"content-length", declared.encode()))
                if browser:
                    headers.append((b"origin", b"https://elsewhere.example"))
                api.core.db.unavailable = down
                answers.append(
                    _comparable(await raw_request(api.client.app, "POST", path, headers, [body]))
                )
                api.core.db.unavailable = False
            assert answers[0] == answers[1]
        fast_core, slow_core = sides[0][0].core, sides[1][0].core
        assert fast_core.db.events.keys() == slow_core.db.events.keys()
    finally:
        for _, _, client in sides:
            await client.__aexit__(None, None, None)
