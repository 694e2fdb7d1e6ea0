"""The host app's own session: who is signed in, in an HttpOnly cookie signed with a local key.

This stands for whatever sign-in a real host app has (passwords, SSO, a hosted identity
provider). calendly-connect never sees this cookie: the page asks the host's back end for a
short-lived JWT (see keys.py) and hands that to the client as a bearer token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from pathlib import Path
from typing import Final

COOKIE_NAME: Final = "host_app_session"
SESSION_SECONDS: Final = 12 * 60 * 60
MAX_USER_LENGTH: Final = 64


class InvalidUserName(ValueError):
    """A user name the demo sign-in does not accept (the message says why)."""


def clean_user_name(raw: object) -> str:
    """The user name as it becomes the token's `sub`: trimmed, 1 to 64 printable characters."""
    if not isinstance(raw, str):
        raise InvalidUserName("give a user name")
    name = raw.strip()
    if not name:
        raise InvalidUserName("give a user name")
    if len(name) > MAX_USER_LENGTH:
        raise InvalidUserName(f"use at most {MAX_USER_LENGTH} characters")
    if not name.isprintable():
        raise InvalidUserName("use printable characters only")
    return name


class SessionCookies:
    """Makes and reads `user|expiry` cookies signed with HMAC-SHA256 under a local secret key."""

    def __init__(self, key: bytes, *, lifetime: int = SESSION_SECONDS) -> None:
        if len(key) < 32:
            raise ValueError("the session key needs at least 32 bytes")
        self._key = key
        self.lifetime = lifetime

    @classmethod
    def load_or_create(cls, path: Path) -> SessionCookies:
        """The key kept at `path` (made once, mode 0600)."""
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(32))
        return cls(path.read_bytes())

    def make(self, user: str, *, now: float | None = None) -> str:
        expires = int(time.time() if now is None else now) + self.lifetime
        payload = _b64(json.dumps({"u": user, "exp": expires}, separators=(",", ":")).encode())
        return f"{payload}.{self._mac(payload)}"

    def read(self, value: str | None, *, now: float | None = None) -> str | None:
        """The signed-in user of a cookie value; None when absent, forged or expired."""
        if not value or value.count(".") != 1:
            return None
        payload, mac = value.split(".")
        if not hmac.compare_digest(mac, self._mac(payload)):
            return None
        try:
            data = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            user, expires = data["u"], data["exp"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(user, str) or not isinstance(expires, int):
            return None
        if expires <= (time.time() if now is None else now):
            return None
        return user

    def _mac(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
