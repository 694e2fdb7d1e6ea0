"""Logging: JSON and console output, and canary secrets that never reach a line (row 25)."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, quote_plus

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from domain.secret import REDACTED, Secret
from entrypoints.logging import configure_logging, redact_secrets, register_secret, scrub

CANARY = "canary-registered-5c1f0e2d9b"
LOCAL_CANARY = "canary-local-only-8d7e6f5a4b"
UNREGISTERED = "canary-never-registered-3a2b1c"
ENCODABLE = 'canary with/slash+plus "quotes"'

Configure = Callable[..., io.StringIO]


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Each test configures logging afresh; the process-wide state is put back afterwards."""
    root = logging.getLogger()
    handlers, level, hook = root.handlers[:], root.level, sys.excepthook
    uvicorn = {
        name: (logging.getLogger(name).handlers[:], logging.getLogger(name).propagate)
        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    }
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    sys.excepthook = hook
    for name, (saved, propagate) in uvicorn.items():
        logging.getLogger(name).handlers[:] = saved
        logging.getLogger(name).propagate = propagate
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()


@pytest.fixture
def configure() -> Configure:
    register_secret(CANARY)

    def configure(
        fmt: str = "json", level: str = "INFO", stream: io.StringIO | None = None
    ) -> io.StringIO:
        out = io.StringIO() if stream is None else stream
        configure_logging(fmt=fmt, level=level, stream=out)
        return out

    return configure


def json_lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def explode(token: str) -> None:
    """Raises with secrets in its frame: an argument, a local, and the registered canary."""
    held = [LOCAL_CANARY, token]
    raise RuntimeError(f"refresh failed after {len(held)} tries for {CANARY}")


def test_json_lines_parse(configure: Configure) -> None:
    out = configure("json")
    log = structlog.get_logger("calendly")
    log.info("connected", user_id="u-1", attempts=2)
    log.warning("slow", seconds=1.5)
    first, second = json_lines(out)
    assert first["event"] == "connected"
    assert first["level"] == "info"
    assert first["logger"] == "calendly"
    assert first["user_id"] == "u-1"
    assert first["attempts"] == 2
    assert first["timestamp"].endswith("Z")
    assert "T" in first["timestamp"]
    assert second["level"] == "warning"


def test_request_context_is_merged(configure: Configure) -> None:
    out = configure("json")
    structlog.contextvars.bind_contextvars(request_id="req-1", user_id="user-9")
    structlog.get_logger().info("handled")
    logging.getLogger("aiohttp.client").info("outbound")
    lines = json_lines(out)
    assert [(line["request_id"], line["user_id"]) for line in lines] == [
        ("req-1", "user-9"),
        ("req-1", "user-9"),
    ]


def test_registered_canary_never_appears(configure: Configure) -> None:
    out = configure("json")
    log = structlog.get_logger()
    log.info(f"token is {CANARY}", detail={"deep": [{"value": f"x{CANARY}y"}]}, items=(CANARY,))
    log.info("positional %s", CANARY)
    log.info("as an object", obj=ValueError(CANARY))
    register_secret(ENCODABLE)
    log.info("url-encoded", url=f"https://x.example/?q={quote(ENCODABLE, safe='')}")
    log.info("form-encoded", body=f"q={quote_plus(ENCODABLE)}")
    log.info("escaped", text=json.dumps({"value": ENCODABLE}))
    text = out.getvalue()
    assert CANARY not in text
    assert quote(ENCODABLE, safe="") not in text
    assert quote_plus(ENCODABLE) not in text
    assert "canary" not in text
    first = json_lines(out)[0]
    assert first["event"] == f"token is {REDACTED}"
    assert first["detail"] == {"deep": [{"value": f"x{REDACTED}y"}]}


@pytest.mark.parametrize("fmt", ["json", "console"])
def test_exceptions_are_redacted_and_carry_no_locals(configure: Configure, fmt: str) -> None:
    out = configure(fmt)
    try:
        explode(UNREGISTERED)
    except RuntimeError:
        structlog.get_logger().exception("refresh crashed")
    text = out.getvalue()
    assert "RuntimeError" in text
    assert "explode" in text  # the frame is there...
    assert LOCAL_CANARY not in text  # ...but not its locals
    assert UNREGISTERED not in text
    assert CANARY not in text
    assert f"refresh failed after 2 tries for {REDACTED}" in text


def test_chained_exception_messages_are_redacted(configure: Configure) -> None:
    out = configure("json")
    try:
        try:
            explode(UNREGISTERED)
        except RuntimeError as exc:
            raise ValueError(f"wrapped: {CANARY}") from exc
    except ValueError:
        structlog.get_logger().exception("failed")
    [line] = json_lines(out)
    assert [stack["exc_type"] for stack in line["exception"]] == ["ValueError", "RuntimeError"]
    assert all("locals" not in frame for s in line["exception"] for frame in s["frames"])
    assert CANARY not in out.getvalue()
    assert LOCAL_CANARY not in out.getvalue()


def test_secret_values_show_as_redacted(configure: Configure) -> None:
    out = configure("json")
    structlog.get_logger().info(
        "stored", value=Secret(UNREGISTERED), nested={"list": [Secret(UNREGISTERED)]}
    )
    [line] = json_lines(out)
    assert line["value"] == f"Secret({REDACTED})"
    assert line["nested"] == {"list": [f"Secret({REDACTED})"]}
    assert UNREGISTERED not in out.getvalue()


def test_secret_named_keys_are_redacted_at_any_depth(configure: Configure) -> None:
    out = configure("json")
    structlog.get_logger().info(
        "token response",
        access_token=UNREGISTERED,
        code=UNREGISTERED,
        headers={"Authorization": f"Bearer {UNREGISTERED}", "Set-Cookie": UNREGISTERED},
        body=[{"refresh_token": UNREGISTERED, "webhook_signing_key": UNREGISTERED}],
        csrf_token=UNREGISTERED,
        client_secret=UNREGISTERED,
        missing_token=None,
        event_key="invitee.created",
        status_code=200,
        key_id="k2",
    )
    [line] = json_lines(out)
    assert UNREGISTERED not in out.getvalue()
    assert line["access_token"] == REDACTED
    assert line["code"] == REDACTED
    assert line["headers"] == {"Authorization": REDACTED, "Set-Cookie": REDACTED}
    assert line["body"] == [{"refresh_token": REDACTED, "webhook_signing_key": REDACTED}]
    assert line["missing_token"] is None
    assert line["event_key"] == "invitee.created"
    assert line["status_code"] == 200
    assert line["key_id"] == "k2"


def test_recognisable_credentials_in_text_are_redacted(configure: Configure) -> None:
    out = configure("json")
    log = logging.getLogger("uvicorn.access")
    log.info('"GET /oauth/calendly/callback?code=%s&state=%s HTTP/1.1" 302', UNREGISTERED, "s" * 20)
    log.info('body {"access_token": "%s", "token_type": "Bearer"}', UNREGISTERED)
    log.info("headers Authorization: Bearer %s", UNREGISTERED)
    log.info("upstream answered code=429")
    lines = [line["event"] for line in json_lines(out)]
    assert UNREGISTERED not in out.getvalue()
    assert "s" * 20 not in out.getvalue()
    assert lines[0].startswith(f'"GET /oauth/calendly/callback?code={REDACTED}&state={REDACTED}')
    assert '"token_type": "Bearer"' in lines[1]
    assert lines[3] == "upstream answered code=429"


def test_stdlib_loggers_go_through_the_same_chain(configure: Configure) -> None:
    out = configure("json")
    psycopg = logging.getLogger("psycopg.pool")
    psycopg.warning("connection failed for %s", CANARY)
    try:
        explode(UNREGISTERED)
    except RuntimeError:
        psycopg.exception("pool task failed")
    first, second = json_lines(out)
    assert first["logger"] == "psycopg.pool"
    assert first["level"] == "warning"
    assert first["event"] == f"connection failed for {REDACTED}"
    assert second["exception"][0]["exc_value"].endswith(REDACTED)
    text = out.getvalue()
    assert CANARY not in text
    assert LOCAL_CANARY not in text
    assert UNREGISTERED not in text


def test_uvicorn_handlers_are_replaced_by_propagation(configure: Configure) -> None:
    stray = io.StringIO()
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler(stray))
    logging.getLogger("uvicorn.error").propagate = False
    out = configure("json")
    logging.getLogger("uvicorn.error").info("started %s", CANARY)
    assert stray.getvalue() == ""
    assert json_lines(out)[0]["event"] == f"started {REDACTED}"


def test_console_mode(configure: Configure) -> None:
    out = configure("console")
    structlog.get_logger("calendly").info("connected", user_id="u-1", secret=CANARY)
    logging.getLogger("aiohttp").warning("retrying %s", CANARY)
    text = out.getvalue()
    assert "connected" in text
    assert "user_id=u-1" in text
    assert "[calendly]" in text
    assert "retrying" in text
    assert CANARY not in text
    assert "\x1b[" not in text  # no colours when the stream is not a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])


def test_auto_is_json_off_a_terminal_and_console_on_one(configure: Configure) -> None:
    out = configure("auto")
    structlog.get_logger().info("plain")
    assert json_lines(out)[0]["event"] == "plain"

    tty = configure("auto", stream=TtyStream())
    structlog.get_logger().info("pretty")
    assert "pretty" in tty.getvalue()
    assert not tty.getvalue().lstrip().startswith("{")


def test_configuring_twice_installs_one_handler(configure: Configure) -> None:
    before = len(logging.getLogger().handlers)
    configure("json")
    out = configure("json")
    assert len(logging.getLogger().handlers) == before + 1
    structlog.get_logger().info("once")
    logging.getLogger("x").warning("once too")
    assert [line["event"] for line in json_lines(out)] == ["once", "once too"]


def test_a_logger_made_before_reconfiguration_follows_it(configure: Configure) -> None:
    configure("json")
    log = structlog.get_logger("early")
    log.info("first")
    out = configure("console")
    log.info("second")
    assert "second" in out.getvalue()
    assert not out.getvalue().startswith("{")


def test_level_filters_both_worlds(configure: Configure) -> None:
    out = configure("json", level="warning")
    structlog.get_logger().info("hidden")
    logging.getLogger("aiohttp").info("hidden too")
    structlog.get_logger().warning("shown")
    assert [line["event"] for line in json_lines(out)] == ["shown"]


def test_uncaught_exceptions_are_logged_redacted(configure: Configure) -> None:
    out = configure("json")
    try:
        explode(UNREGISTERED)
    except RuntimeError as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)
    [line] = json_lines(out)
    assert line["level"] == "critical"
    assert line["exception"][0]["exc_type"] == "RuntimeError"
    assert CANARY not in out.getvalue()
    assert LOCAL_CANARY not in out.getvalue()


def test_short_values_are_not_registered(configure: Configure) -> None:
    out = configure("json")
    register_secret("abc1234")
    register_secret(Secret("secret-object-canary-77"))
    structlog.get_logger().info("abc1234 secret-object-canary-77")
    assert json_lines(out)[0]["event"] == f"abc1234 {REDACTED}"


@pytest.mark.parametrize(("fmt", "level"), [("yaml", "INFO"), ("json", "LOUD")])
def test_unknown_format_or_level_is_refused(fmt: str, level: str) -> None:
    with pytest.raises(ValueError, match="unknown log"):
        configure_logging(fmt=fmt, level=level, stream=io.StringIO())


def test_processor_is_usable_on_its_own() -> None:
    register_secret(CANARY)
    event = {"event": CANARY, "password": "hunter22", "n": 1, "deep": {"a": {"b": [CANARY]}}}
    assert redact_secrets(None, "info", event) == {
        "event": REDACTED,
        "password": REDACTED,
        "n": 1,
        "deep": {"a": {"b": [REDACTED]}},
    }


@given(prefix=st.text(), suffix=st.text())
def test_a_registered_canary_never_survives_scrubbing(prefix: str, suffix: str) -> None:
    register_secret(CANARY)
    assert CANARY not in scrub(prefix + CANARY + suffix)
