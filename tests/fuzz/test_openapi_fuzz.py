"""Schemathesis against the service's own OpenAPI document, with two users configured as peers.

The real service (tests/support/service.py: container, Postgres, uvicorn) runs in this test's
event loop against the sandbox; two users, alice and bob, are connected and have meetings. The
Schemathesis CLI then runs in a subprocess against `/schema/openapi.json` with every check
(`--checks all`: server errors, status codes, content types, headers, response schemas,
positive and negative data, missing headers, unsupported methods, `Allow`, ignored auth,
use-after-free, resource availability, object-level authorization) and with alice and bob as
`peers` in a Web Fuzzing Commons auth document, so its object-level authorization check replays
each user's reads as the other. Deterministic generation (Hypothesis derandomized) and a
bounded number of examples per operation keep the run the same every time and short.

The API names no object by id (every route acts on the caller's own connection and meetings),
so Schemathesis rarely has an id to swap between the peers: the test therefore also checks
cross-user reads itself, before and after the fuzzing, through every endpoint a token reaches.

A second run fuzzes the server API (`/v1` only, where users' tokens get 401) with a `write` API
key made as an operator makes one (`calendly-connect api-keys create`), every check but one
(`use_after_free`, see V1_CONFIG) and the same deterministic generation.

Longer runs: `FUZZ_EXAMPLES=2000 .venv/bin/pytest tests/fuzz` (examples per operation), and
`FUZZ_SEED=<n>` for seeded random generation instead of the deterministic one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.cli import run_cli
from tests.support.journeys import call, connect, sandbox_user_id
from tests.support.sandbox import SandboxDriver
from tests.support.service import RunningService, running_service
from tests.support.sse import EventReader

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
# Unset: deterministic generation (the same cases every run). Set: seeded random generation.
SEED = os.environ.get("FUZZ_SEED")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
# Per request; an event stream is cut after MAX_STREAM_EVENTS events or this long.
REQUEST_TIMEOUT = 5
MAX_STREAM_EVENTS = 2
PEERS = ("alice", "bob")

# `positive_data_acceptance` expects schema-valid requests to succeed. Two parameters are
# capabilities no schema can describe: the OAuth `state` (single use, issued by the service to
# one browser or page, in the callback and in the hand-off's completion) and the meetings
# `cursor` (opaque, issued by the service). Any value Schemathesis invents is refused with 400
# by design, so 400 is an expected answer there, and only there.
CONFIG = """
max-stream-events = {max_stream_events}
request-timeout = {request_timeout}

[auth.wfc]
path = "{auth_path}"
peers = {peers}

[[operations]]
include-operation-id = ["completeConnect", "completeConnectHandOff", "listMeetings"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "404", "409"]
"""

# The server API (/v1), fuzzed with one `write` API key, the host's view of every user. What an
# invented input is answered by design, and only there: an unknown user's connection is a 404;
# a list cursor (issued by the service, signed) is a 400; a change-feed cursor is a position the
# schema describes as digits, so an invented one is a 400 past the positions there can be, or a
# 410 before what retention pruned.
# `use_after_free` is left out: no /v1 DELETE frees what the check then reads. A disconnect
# keeps the connection (`disconnected`), and an erased user reads as one never seen: their
# meetings an empty list, not a 404 (README). The test checks what an erasure leaves itself.
# A user id is documented as `^(?:[^\p{C}\p{Z}]| )+$` (Python's `str.isprintable`). Schemathesis
# reads `\p{C}` and `\p{Z}` as the ASCII and Latin-1 controls and blanks only, so it would take
# unassigned or private-use characters for valid ones; the ids it invents are ASCII, where its
# reading is exact (ids beyond ASCII: tests/http/test_http_server_api.py).
V1_OPERATIONS = (
    "serverListConnections",
    "serverGetConnection",
    "serverDisconnect",
    "serverListMeetings",
    "serverCreateSession",
    "serverEraseUser",
    "serverListChanges",
)
V1_CONFIG = """
max-stream-events = {max_stream_events}
request-timeout = {request_timeout}

[[operations]]
include-path-regex = "^/v1/users/"
generation.codec = "ascii"

[[operations]]
include-operation-id = ["serverGetConnection"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "404"]

[[operations]]
include-operation-id = ["serverListConnections", "serverListMeetings"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]

[[operations]]
include-operation-id = ["serverListChanges"]
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "410"]
"""


@pytest.fixture
async def service(sandbox: SandboxDriver, database_url: str) -> AsyncIterator[RunningService]:
    async with running_service(database_url, sandbox.url) as running:
        yield running


def _markers(value: Any) -> set[str]:
    """Every string inside a JSON value that identifies something (URIs, ids, emails)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            if key != "location":  # the sandbox gives every meeting the same join URL
                found |= _markers(item)
    elif isinstance(value, list):
        for item in value:
            found |= _markers(item)
    elif isinstance(value, str) and ("/" in value or "@" in value or len(value) >= 32):
        found.add(value)
    return found


class Isolation:
    """What belongs to one user, and the check that another user's answers contain none of it."""

    def __init__(self, owner: str, markers: Iterable[str]) -> None:
        self.owner = owner
        self.markers = {m for m in markers if m}
        self.answers = 0

    def check(self, reader: str, where: str, body: str) -> None:
        self.answers += 1
        leaked = sorted(m for m in self.markers if m in body)
        assert not leaked, f"{reader} saw {self.owner}'s {leaked} through {where}"


async def _owned_by(
    http: aiohttp.ClientSession, service: RunningService, user: str
) -> tuple[set[str], list[str]]:
    """Everything identifying `user`'s connection and meetings, and their paging cursors."""
    markers: set[str] = set()
    status, connection = await call(http, service, "GET", "/api/calendly/connection", user)
    if status == 200:
        markers |= {
            connection["calendly_user_uri"],
            connection["email"],
            connection["organization_uri"],
        }
    cursors: list[str] = []
    query = "?limit=1"
    while True:
        status, page = await call(http, service, "GET", f"/api/meetings{query}", user)
        assert status == 200, page
        markers |= _markers(page["meetings"])
        if page["next_cursor"] is None:
            break
        cursors.append(page["next_cursor"])
        query = f"?limit=1&cursor={page['next_cursor']}"
    # Organization URIs are shared inside an organization; here every user has their own.
    return markers, cursors


async def _read_stream(
    http: aiohttp.ClientSession, service: RunningService, user: str, last_event_id: str
) -> str:
    """The first events of `user`'s live stream (resumed from `last_event_id`), as text."""
    headers = {**service.auth(user), "Last-Event-ID": last_event_id}
    async with http.get(f"{service.url}/api/live", headers=headers) as stream:
        assert stream.status == 200
        events = EventReader(stream)
        seen = [await events.next(), await events.next()]  # ready, connection
        with contextlib.suppress(TimeoutError):  # meetings after the id, if there are any
            seen.append(await events.next(seconds=0.5))
    return "\n".join(f"{e.event} {e.id} {e.data}" for e in seen)


async def assert_isolated(
    http: aiohttp.ClientSession, service: RunningService, owner: str, reader: str
) -> Isolation:
    """`reader`'s token reaches nothing of `owner`'s, through any endpoint it can call."""
    markers, cursors = await _owned_by(http, service, owner)
    isolation = Isolation(owner, markers)
    reads = [
        ("GET", "/api/calendly/connection"),
        ("GET", "/api/meetings"),
        ("GET", "/api/meetings?status=active"),
        ("GET", "/api/meetings?status=canceled"),
        ("GET", "/api/meetings?starts_after=1970-01-01T00:00:00Z&limit=200"),
        # The owner's own cursors carry only a position: RLS still scopes the page.
        *(("GET", f"/api/meetings?cursor={cursor}") for cursor in cursors),
        ("POST", "/api/calendly/reconnect"),
    ]
    for method, path in reads:
        status, body = await call(http, service, method, path, reader)
        assert status < 500, (method, path, status, body)
        isolation.check(reader, f"{method} {path}", json.dumps(body))
    for last_event_id in ("", "0"):
        text = await _read_stream(http, service, reader, last_event_id)
        isolation.check(reader, f"GET /api/live (Last-Event-ID: {last_event_id!r})", text)
    return isolation


async def _populate(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession
) -> None:
    """alice and bob connected, each with their own meetings (one canceled)."""
    for user, email in (("alice", "ada@example.com"), ("bob", "bo@example.com")):
        await connect(http, service, user, email)
        calendly_user = await sandbox_user_id(sandbox, email)
        guests = [{"name": f"Guest of {user}", "email": f"guest-of-{user}@example.org"}]
        booked = await sandbox.book(calendly_user, invitees=guests, wait=True)
        await sandbox.book(
            calendly_user, invitees=guests, start_time="2030-04-01T10:00:00Z", wait=True
        )
        invitee = booked["invitees"][0]["uri"].rsplit("/", 1)[1]
        await sandbox.control(
            "POST",
            f"/_sandbox/invitees/{invitee}/cancel",
            {"canceler_type": "invitee", "wait": True},
            expect=201,
        )


def _schemathesis_command(url: str, config: Path, report: Path, *options: str) -> list[str]:
    command = [
        str(SCHEMATHESIS),
        "--config-file",
        str(config),
        "--no-color",
        "run",
        f"{url}/schema/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES),
        "--workers",
        "1",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        *options,
    ]
    if SEED is None:
        command.append("--generation-deterministic")
    else:
        command += ["--seed", SEED]
    return command


async def _schemathesis(
    service: RunningService, workdir: Path, config: str, *options: str
) -> tuple[dict[str, Any], str]:
    """The JSON report and the output of one Schemathesis run with `config` (TOML) and `options`."""
    config_path, report = workdir / "schemathesis.toml", workdir / "report.json"
    config_path.write_text(config, encoding="utf-8")
    process = await asyncio.create_subprocess_exec(
        *_schemathesis_command(service.url, config_path, report, *options),
        cwd=workdir,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 60 + EXAMPLES * 0.5)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode("utf-8", "replace")
    assert report.exists(), text
    result: dict[str, Any] = json.loads(report.read_text(encoding="utf-8"))
    return result, text


def _assert_clean(result: dict[str, Any], output: str, *, selected: int | None = None) -> None:
    """Every selected operation tested to the end, and nothing found (no failure, no error)."""
    operations = result["operations"]
    assert result["stop_reason"] == "completed", output
    assert operations["selected"] == operations["tested"], output
    assert operations["selected"] == (operations["total"] if selected is None else selected), output
    assert operations["errored"] == 0, output
    # No 5xx (not_a_server_error), no response off its schema, no cross-user read, nothing else.
    assert result["failures"] == [], output
    assert result["errors"] == [], output
    assert result["test_cases"]["generated"] >= EXAMPLES * 2, output
    assert result["exit_code"] == 0, output


async def _run_schemathesis(service: RunningService, workdir: Path) -> tuple[dict[str, Any], str]:
    """Every operation, as alice and as bob (peers for the object-level authorization check)."""
    auth = {
        "auth": [
            {
                "name": user,
                "fixedHeaders": [
                    {"name": "Authorization", "value": f"Bearer {service.token_for(user)}"}
                ],
            }
            for user in PEERS
        ]
    }
    auth_path = workdir / "auth.json"
    auth_path.write_text(json.dumps(auth), encoding="utf-8")
    config = CONFIG.format(
        max_stream_events=MAX_STREAM_EVENTS,
        request_timeout=REQUEST_TIMEOUT,
        auth_path=auth_path,
        peers=json.dumps(list(PEERS)),
    )
    return await _schemathesis(service, workdir, config)


async def _create_api_key(database_url: str, scope: str) -> str:
    """A server API key made as an operator makes one: `calendly-connect api-keys create`."""
    environ = {"PATH": os.environ.get("PATH", ""), "DATABASE_URL": database_url}
    code, out, err = await run_cli(
        environ, "api-keys", "create", "--name", "fuzz", "--scope", scope
    )
    assert code == 0, err
    [key] = out.splitlines()  # the key alone on stdout
    assert key.startswith("ccsk_"), out
    return key


@pytest.mark.slow
@pytest.mark.timeout(120 + EXAMPLES)
async def test_the_api_holds_its_openapi_document_under_fuzzing(
    sandbox: SandboxDriver, service: RunningService, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    await _populate(sandbox, service, http)
    before = await assert_isolated(http, service, "alice", "bob")
    assert len(before.markers) >= 6  # the check looks for something: a connection, meetings
    await assert_isolated(http, service, "bob", "alice")

    result, output = await _run_schemathesis(service, tmp_path)

    _assert_clean(result, output)

    # Whatever the fuzzing did (disconnects, reconnects, new connects), still nobody's but theirs.
    await assert_isolated(http, service, "alice", "bob")
    await assert_isolated(http, service, "bob", "alice")


@pytest.mark.slow
@pytest.mark.timeout(120 + EXAMPLES)
async def test_the_server_api_holds_its_openapi_document_under_fuzzing(
    sandbox: SandboxDriver,
    service: RunningService,
    http: aiohttp.ClientSession,
    database_url: str,
    tmp_path: Path,
) -> None:
    await _populate(sandbox, service, http)
    key = await _create_api_key(database_url, "write")
    as_host = {"Authorization": f"Bearer {key}"}
    async with http.get(f"{service.url}/v1/connections", headers=as_host) as response:
        assert response.status == 200, await response.text()
        listed = {c["user_id"] for c in (await response.json())["connections"]}
    assert listed == set(PEERS)  # the key reads something: both users' connections

    config = V1_CONFIG.format(max_stream_events=MAX_STREAM_EVENTS, request_timeout=REQUEST_TIMEOUT)
    result, output = await _schemathesis(
        service,
        tmp_path,
        config,
        "--include-path-regex",
        "^/v1/",
        "--exclude-checks",
        "use_after_free",
        "--header",
        f"Authorization: Bearer {key}",
    )

    _assert_clean(result, output, selected=len(V1_OPERATIONS))
    assert key not in output  # Schemathesis masks the Authorization header it was given
    # An erasure frees the user: their connection is gone, their meetings too.
    for method, path, status in (
        ("DELETE", "/v1/users/alice", 200),
        ("GET", "/v1/users/alice/connection", 404),
        ("GET", "/v1/users/alice/meetings", 200),
    ):
        async with http.request(method, f"{service.url}{path}", headers=as_host) as response:
            assert response.status == status, (method, path, await response.text())
            answer = await response.json()
    assert answer == {"meetings": [], "next_cursor": None}
