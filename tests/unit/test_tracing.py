"""OpenTelemetry traces (DR-40): nothing at all when off; when on, server spans named after
the route's template and client spans for Calendly, with no secret, token or id in them."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest
from litestar.testing import AsyncTestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from adapters.calendly.api import AiohttpCalendlyApi
from domain.errors import CalendlyError
from domain.secret import Secret
from entrypoints.service.http.app import create_app
from entrypoints.settings import ConfigError, TracingSettings, load_settings
from entrypoints.tracing import Tracing, TracingUnavailable, start_tracing
from tests.support.core import Core, build_core
from tests.support.environment import minimal_env
from tests.support.http_app import (
    BASE_URL,
    Api,
    Readiness,
    booking,
    key_auth,
    make_config,
    new_api_key,
    services_of,
)
from tests.support.sandbox import REDIRECT_URI, SandboxDriver

ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@dataclass
class Traced:
    tracing: Tracing
    exporter: InMemorySpanExporter

    def spans(self) -> list[ReadableSpan]:
        assert self.tracing.flush()
        return list(self.exporter.get_finished_spans())

    def clear(self) -> None:
        assert self.tracing.flush()
        self.exporter.clear()


@pytest.fixture
def traced() -> Iterator[Traced]:
    exporter = InMemorySpanExporter()
    tracing = start_tracing(TracingSettings(), exporter=exporter)
    assert tracing is not None
    yield Traced(tracing, exporter)
    tracing.shutdown()


def every_value(span: ReadableSpan) -> str:
    """The span's name and all its attributes, as one text to search for what must not leak."""
    return json.dumps([span.name, {k: str(v) for k, v in (span.attributes or {}).items()}])


# ---------------------------------------------------------------------------- off: no cost
def test_tracing_off_imports_no_opentelemetry_module() -> None:
    """Settings without an endpoint, the app built and answering, the server and the worker
    loaded: not one opentelemetry module is in sys.modules (a subprocess: this one has them)."""
    script = textwrap.dedent(
        """
        import asyncio, sys
        from litestar.testing import AsyncTestClient
        from entrypoints.service import server, worker
        from entrypoints.service.http.app import create_app
        from entrypoints.settings import load_settings
        from entrypoints.tracing import start_tracing
        from tests.support.core import build_core
        from tests.support.environment import minimal_env
        from tests.support.http_app import Readiness, make_config, services_of

        settings = load_settings(minimal_env())
        assert start_tracing(settings.tracing) is None
        app = create_app(services_of(build_core(), Readiness()), make_config())

        async def request() -> int:
            async with AsyncTestClient(app=app, base_url="https://api.example") as client:
                await client.post("/webhooks/calendly", content=b"{}")
                return (await client.get("/health/live")).status_code

        assert asyncio.run(request()) == 200, "the app did not answer"
        print(sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry"))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


# ---------------------------------------------------------------------------- server spans
@pytest.fixture
async def traced_api(traced: Traced) -> AsyncIterator[Api]:
    core: Core = build_core()
    readiness = Readiness()
    config = make_config()
    app = create_app(services_of(core, readiness), config, tracer=traced.tracing.tracer)
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        yield Api(core=core, client=client, readiness=readiness, config=config)


def server_spans(traced: Traced) -> list[ReadableSpan]:
    return [span for span in traced.spans() if span.kind == SpanKind.SERVER]


async def test_a_request_gets_a_server_span_named_after_its_route_template(
    traced: Traced, traced_api: Api
) -> None:
    key = await new_api_key(traced_api.core, "read")
    user_id = "user-7f3a9c"
    answered = await traced_api.client.get(
        f"/v1/users/{user_id}/connection?x=query-value",
        headers={**key_auth(key), "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01"},
    )

    (span,) = server_spans(traced)
    assert span.name == "GET /v1/users/{user_id}/connection"
    assert span.attributes is not None
    assert span.attributes["http.route"] == "/v1/users/{user_id}/connection"
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["http.response.status_code"] == answered.status_code
    # The caller's trace is continued.
    assert span.parent is not None
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == PARENT_ID
    # Neither the user id (the host's PII), nor the key, nor the query string.
    text = every_value(span)
    for leak in (user_id, key, "query-value"):
        assert leak not in text


async def test_a_webhook_span_holds_no_token_and_no_body(traced: Traced, traced_api: Api) -> None:
    host = await traced_api.connect("alice")
    traced.clear()
    token = traced_api.connection("alice").webhook_token
    body = booking(host, event_id="event-5d1e", invitee_id="invitee-8b2c")

    answered = await traced_api.deliver(body, user_id="alice")
    assert answered.status_code < 300, answered.text

    (span,) = server_spans(traced)
    assert span.name == "POST /webhooks/calendly/{token}"
    assert span.attributes is not None
    assert span.attributes["http.response.status_code"] == answered.status_code
    text = every_value(span)
    for leak in (str(token), "alice", "event-5d1e", "invitee-8b2c", host.uri):
        assert leak not in text


async def test_a_webhook_never_continues_a_trace_sent_with_it(
    traced: Traced, traced_api: Api
) -> None:
    """Calendly's deliveries come from the internet: a `traceparent` there is anyone's."""
    answered = await traced_api.client.post(
        "/webhooks/calendly",
        content=b"{}",
        headers={
            "Content-Type": "application/json",
            "traceparent": f"00-{TRACE_ID}-{PARENT_ID}-01",
        },
    )
    assert answered.status_code == 401
    (span,) = server_spans(traced)
    assert span.parent is None
    assert format(span.context.trace_id, "032x") != TRACE_ID


async def test_an_unknown_path_is_a_span_without_a_route(traced: Traced, traced_api: Api) -> None:
    answered = await traced_api.client.get("/no/such/path/secret-segment")
    assert answered.status_code == 404
    (span,) = server_spans(traced)
    assert span.name == "GET"
    assert span.attributes is not None
    assert "http.route" not in span.attributes
    assert span.attributes["http.response.status_code"] == 404
    assert "secret-segment" not in every_value(span)


# ---------------------------------------------------------------------------- client spans
def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


async def test_calendly_calls_get_client_spans_with_templates_and_no_ids(
    traced: Traced, sandbox: SandboxDriver, http: aiohttp.ClientSession
) -> None:
    client_secret = sandbox.client.client_secret
    api = AiohttpCalendlyApi(
        http,
        client_id=sandbox.client.client_id,
        client_secret=Secret(client_secret),
        auth_base_url=sandbox.url,
        api_base_url=sandbox.url,
        spans=traced.tracing.calendly_spans,
    )
    verifier = secrets.token_urlsafe(48)
    code = await sandbox.code_for("tracing@example.com", s256(verifier))
    granted = await api.exchange_code(
        code=code, redirect_uri=REDIRECT_URI, code_verifier=Secret(verifier)
    )
    access = granted.tokens.access_token
    account = await api.current_user(access)
    assert account.organization_uri is not None
    await api.list_subscriptions(
        access, organization_uri=account.organization_uri, user_uri=account.user_uri
    )
    missing = f"{sandbox.url}/webhook_subscriptions/{secrets.token_hex(8)}"
    with pytest.raises(CalendlyError):
        await api.get_subscription(access, missing)

    spans = [span for span in traced.spans() if span.kind == SpanKind.CLIENT]
    assert [span.name for span in spans] == [
        "POST /oauth/token",
        "GET /users/me",
        "GET /webhook_subscriptions",
        "GET /webhook_subscriptions/{uuid}",
    ]
    statuses = [(span.attributes or {}).get("http.response.status_code") for span in spans]
    assert statuses == [200, 200, 200, 404]
    assert all((span.attributes or {})["url.template"] == span.name.split(" ")[1] for span in spans)
    leaks = [
        code,
        verifier,
        client_secret,
        access.reveal(),
        granted.tokens.refresh_token.reveal(),
        account.user_uri.rsplit("/", 1)[1],
        account.organization_uri.rsplit("/", 1)[1],
        missing.rsplit("/", 1)[1],
        "?",
    ]
    for span in spans:
        text = every_value(span)
        assert [leak for leak in leaks if leak in text] == [], text


# ---------------------------------------------------------------------------- settings
def test_tracing_is_off_unless_an_endpoint_is_set() -> None:
    assert not load_settings(minimal_env()).tracing.enabled
    disabled = minimal_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318")
    disabled["OTEL_SDK_DISABLED"] = "true"
    assert not load_settings(disabled).tracing.enabled


def test_the_endpoints_and_headers_are_read_as_opentelemetry_reads_them() -> None:
    base = load_settings(
        minimal_env(
            OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318/",
            OTEL_EXPORTER_OTLP_HEADERS="api-key=s3cr%3Dt,x-team=ops",
            OTEL_SERVICE_NAME="calendly-eu",
        )
    )
    assert base.tracing.endpoint == "http://collector:4318/v1/traces"
    assert base.tracing.headers == (("api-key", Secret("s3cr=t")), ("x-team", Secret("ops")))
    assert base.tracing.service_name == "calendly-eu"
    assert "s3cr=t" in base.secret_values()
    traces = load_settings(
        minimal_env(
            OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318",
            OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="https://traces.example.com/otlp/v1/traces",
        )
    )
    assert traces.tracing.endpoint == "https://traces.example.com/otlp/v1/traces"


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("collector:4317", "use the http(s) URL of an OTLP/HTTP endpoint"),
        ("grpc://collector:4317", "use the http(s) URL of an OTLP/HTTP endpoint"),
        ("http://user:pw@collector:4318", "must not contain user:password@"),
        ("http://collector:99999", "cannot be read as a URL"),
    ],
)
def test_a_bad_endpoint_is_refused_with_what_to_write(value: str, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(minimal_env(OTEL_EXPORTER_OTLP_ENDPOINT=value))
    (problem,) = caught.value.problems
    assert problem.startswith("OTEL_EXPORTER_OTLP_ENDPOINT")
    assert said in problem
    assert caught.value.variables == ("OTEL_EXPORTER_OTLP_ENDPOINT",)
    assert "pw" not in problem


def test_a_header_without_a_value_is_refused_without_showing_it() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(
            minimal_env(
                OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318",
                OTEL_EXPORTER_OTLP_HEADERS="api-key=ok,just-a-secret-value",
            )
        )
    (problem,) = caught.value.problems
    assert "OTEL_EXPORTER_OTLP_HEADERS entry 2 is not name=value" in problem
    assert "just-a-secret-value" not in problem


def test_configured_tracing_without_the_packages_names_the_extra(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A None entry in sys.modules makes `import` fail as if the package were not installed.
    monkeypatch.setitem(sys.modules, "opentelemetry.sdk.trace", None)
    settings = load_settings(minimal_env(OTEL_EXPORTER_OTLP_ENDPOINT="http://collector:4318"))
    with pytest.raises(TracingUnavailable) as caught:
        start_tracing(settings.tracing)
    assert "pip install 'calendly-connect[tracing]'" in str(caught.value)
