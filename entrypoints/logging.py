"""structlog and stdlib logging through one chain that renders, then redacts, every line."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Final, TextIO
from urllib.parse import quote, quote_plus

import structlog
from structlog.processors import ExceptionRenderer
from structlog.tracebacks import ExceptionDictTransformer
from structlog.typing import EventDict, Processor, WrappedLogger

from domain.secret import REDACTED, Secret
from domain.secret_names import (
    SECRET_NAMES,
    SECRET_SUFFIXES,
    SECRET_URL_PARAMETERS,
    is_secret_name,
)
from entrypoints.settings import DispatcherSettings, Settings

# Registered values shorter than this would redact ordinary words; they are ignored.
MIN_SECRET_LENGTH: Final = 8
# Nesting deeper than this is rendered with repr() and scrubbed as one string.
MAX_DEPTH: Final = 20


def _name_pattern(names: Iterable[str]) -> str:
    """A regex for the given names and any name with a secret suffix ('_' matches '-' too)."""

    def spelled(name: str) -> str:
        return re.escape(name).replace("_", "[-_]")

    exact = "|".join(spelled(name) for name in sorted(names, key=lambda n: (-len(n), n)))
    suffixes = "|".join(spelled(suffix) for suffix in SECRET_SUFFIXES)
    return rf"(?:{exact}|[\w.-]*(?:{suffixes}))"


# Secrets inside text that nobody registered: OAuth parameters in URLs and form bodies (the
# callback's `?code=` in an access log line), secret-named fields in JSON bodies, and HTTP
# credentials. The names are the service's one list (domain/secret_names.py). Short values in
# URLs are left alone, so "code=429" in a message survives.
_TEXT_PATTERNS: Final = (
    re.compile(
        rf"(?i)((?:^|(?<=[?&;\s])){_name_pattern(SECRET_URL_PARAMETERS)}=)[^&\s#\"'<>]{{8,}}"
    ),
    re.compile(rf"(?i)(\"{_name_pattern(SECRET_NAMES)}\"\s*:\s*\")[^\"]+"),
    re.compile(r"(?i)(\b(?:bearer|basic)\s+)[A-Za-z0-9._~+/=-]{16,}"),
    # A server API key anywhere: its shown prefix (`ccsk_` and 8 characters) stays readable.
    re.compile(r"((?<![A-Za-z0-9_-])ccsk_[A-Za-z0-9_-]{8})[A-Za-z0-9_-]{8,}"),
)

_registered: set[str] = set()
_registered_pattern: re.Pattern[str] | None = None
_lock = threading.Lock()
# The handler this module installed on the root logger, replaced on reconfiguration.
_installed_handler: logging.Handler | None = None

# These loggers come with their own handlers; they are emptied so records reach the root handler.
_PROPAGATED_LOGGERS: Final = ("uvicorn", "uvicorn.error", "uvicorn.access")


def register_secret(value: str | Secret) -> None:
    """Scrub `value` (and its URL-encoded and escaped forms) from every later log line.

    Values shorter than MIN_SECRET_LENGTH characters are ignored: they would mangle ordinary
    words, and a secret that short is not worth protecting this way.
    """
    text = value.reveal() if isinstance(value, Secret) else value
    if len(text) < MIN_SECRET_LENGTH:
        return
    global _registered_pattern
    with _lock:
        before = len(_registered)
        _registered.update(
            {
                text,
                quote(text, safe=""),
                quote_plus(text, safe=""),
                repr(text)[1:-1],
                json.dumps(text)[1:-1],
            }
        )
        if len(_registered) == before:
            return
        # Longest first, so a secret that contains another is replaced whole.
        alternatives = sorted(_registered, key=len, reverse=True)
        _registered_pattern = re.compile("|".join(re.escape(item) for item in alternatives))


def scrub(text: str) -> str:
    """`text` with registered secrets and recognisable credentials replaced by REDACTED."""
    pattern = _registered_pattern
    if pattern is not None:
        text = pattern.sub(REDACTED, text)
    for known in _TEXT_PATTERNS:
        text = known.sub(rf"\g<1>{REDACTED}", text)
    return text


def redact_secrets(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """Processor: hide secret-named keys, Secret values and registered or recognisable secrets.

    It runs after exceptions are rendered to text, so exception messages are scrubbed as well.
    Objects other than plain data are replaced by their scrubbed repr().
    """
    return {key: _redact_item(key, value, 0) for key, value in event_dict.items()}


def _redact_key(key: object) -> object:
    return scrub(key) if isinstance(key, str) else key


def _redact_item(key: object, value: object, depth: int) -> object:
    if isinstance(key, str) and value is not None and is_secret_name(key):
        return REDACTED
    return _redact_value(value, depth)


def _redact_value(value: object, depth: int) -> object:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, Secret):
        return repr(value)
    if depth < MAX_DEPTH:
        if isinstance(value, Mapping):
            return {
                _redact_key(key): _redact_item(key, item, depth + 1) for key, item in value.items()
            }
        if isinstance(value, list | tuple | set | frozenset):
            return [_redact_value(item, depth + 1) for item in value]
    return scrub(repr(value))


def configure_logging(
    *, fmt: str, level: str, stream: TextIO | None = None, request_level: str = "INFO"
) -> None:
    """Send structlog and stdlib logging to `stream` (stdout by default) as one format.

    `fmt` is "json", "console" or "auto" (JSON unless `stream` is a terminal). Calling it again
    replaces the previous configuration. Run servers with their own logging config disabled
    (uvicorn: `log_config=None`) so their records come here. `request_level` "DEBUG" writes
    each request's line (`http.request`, INFO otherwise) at DEBUG.
    """
    global _installed_handler
    if fmt not in ("json", "console", "auto"):
        raise ValueError(f"unknown log format {fmt!r}; use json, console or auto")
    numeric_level = logging.getLevelNamesMapping().get(level.upper())
    if numeric_level is None:
        raise ValueError(f"unknown log level {level!r}")
    out = sys.stdout if stream is None else stream
    as_json = fmt == "json" or (fmt == "auto" and not _is_tty(out))

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.PositionalArgumentsFormatter(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    # Exceptions become plain data (JSON) or plain text (console) first, never with frame locals,
    # and redaction comes after. The console uses the stdlib layout rather than Rich's: Rich wraps
    # long lines and colours inside strings, which could split a secret past the scrubber.
    render_exception: Processor = (
        ExceptionRenderer(ExceptionDictTransformer(show_locals=False))
        if as_json
        else structlog.processors.format_exc_info
    )
    renderer: Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=_is_tty(out))
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            render_exception,
            redact_secrets,
            renderer,
        ],
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(formatter)
    if request_level.upper() == "DEBUG":
        handler.addFilter(_requests_at_debug)

    root = logging.getLogger()
    if _installed_handler is not None:
        root.removeHandler(_installed_handler)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    _installed_handler = handler
    for name in _PROPAGATED_LOGGERS:
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # An exception nobody caught would otherwise print an unredacted traceback to stderr.
    sys.excepthook = _log_uncaught

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: a logger keeps working, and picks up the new level, after reconfiguration.
        cache_logger_on_first_use=False,
    )


def configure_service_logging(
    settings: Settings | DispatcherSettings, *, level: str | None = None
) -> None:
    """How every command that loaded its settings logs: their format and level (or `level`),
    with every configured secret registered for scrubbing before the first line is written."""
    configure_logging(
        fmt=settings.logging.format,
        level=level or settings.logging.level,
        request_level=settings.logging.requests,
    )
    for value in settings.secret_values():
        register_secret(value)


def _requests_at_debug(record: logging.LogRecord) -> bool:
    """A handler filter: each request's INFO line becomes a DEBUG one (kept only when the
    level lets DEBUG through); its warnings (5xx) stay as they are."""
    event = record.msg
    if record.levelno != logging.INFO or not isinstance(event, dict):
        return True
    if event.get("event") != "http.request":
        return True
    record.levelno, record.levelname = logging.DEBUG, "DEBUG"
    event["level"] = "debug"
    return logging.getLogger().isEnabledFor(logging.DEBUG)


def _log_uncaught(
    exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None
) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("uncaught").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _is_tty(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed stream
        return False
