"""Secrets at rest: the cipher the repositories seal with, and what a sealed secret is bound to."""

from __future__ import annotations

from typing import Protocol

from domain.secret import Secret


class TokenCipher(Protocol):
    """Encrypts secrets at rest; `context` binds a blob to its row and column."""

    def encrypt(self, secret: Secret, *, context: str) -> bytes: ...

    def decrypt(self, blob: bytes, *, context: str) -> Secret: ...


def secret_context(connection_id: str, column: str) -> str:
    """What a sealed secret of a connection is bound to: its row and its column."""
    return f"calendar_connections:{connection_id}:{column}"
