"""The names under which the service treats a value as secret, wherever it appears."""

from __future__ import annotations

from typing import Final

# A field, key, header or parameter with one of these names holds a secret: in a log line, in
# a body Calendly answered, in a form or a URL. This is the one list; the log redactor
# (entrypoints/logging.py) and the Calendly adapter's redaction both read it.
SECRET_NAMES: Final = frozenset(
    {
        "access_token",
        "refresh_token",
        "id_token",
        "token",
        "code",
        "code_verifier",
        "client_secret",
        "signing_key",
        "webhook_signing_key",
        "authorization",
        "proxy_authorization",
        "password",
        "passwd",
        "cookie",
        "set_cookie",
        "jwt",
        "secret",
        "api_key",
        "private_key",
        "encryption_key",
        "database_url",
        "dsn",
    }
)
# Any name ending so is secret as well (`csrf_token`, `host_webhook_secret`, ...).
SECRET_SUFFIXES: Final = ("_token", "_secret", "_password")
# In a URL, OAuth's `state` is secret too: whoever holds it can finish someone else's connect.
# As a field name it is not (a subscription's or a connection's state: "active", "disabled").
SECRET_URL_PARAMETERS: Final = SECRET_NAMES | {"state"}


def is_secret_name(name: str) -> bool:
    """Whether a value called `name` is secret (any case, '-' read as '_')."""
    normalized = name.lower().replace("-", "_")
    return normalized in SECRET_NAMES or normalized.endswith(SECRET_SUFFIXES)
