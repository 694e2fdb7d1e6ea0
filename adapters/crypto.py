"""Secrets at rest: AES-256-GCM blobs that name their key and are bound to where they are stored."""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from domain.errors import StoredSecretUnreadable
from domain.secret import Secret

# Blob layout, version 1:
#   version (1 byte) | key id length (1 byte) | key id (ASCII) | nonce (12 bytes) | ciphertext+tag
# The associated data is the header (version, key id length, key id) followed by the context, so
# neither the key id nor the row/column a blob belongs to can be changed without failing the tag.
FORMAT_VERSION: Final = 1
KEY_BYTES: Final = 32
NONCE_BYTES: Final = 12
TAG_BYTES: Final = 16
DEFAULT_KEY_ID: Final = "k1"
KEY_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_.-]{1,64}")

_GENERATE_HINT: Final = (
    'generate one with: python -c "import base64, os; '
    'print(base64.urlsafe_b64encode(os.urandom(32)).decode())"'
)


class DecryptionFailed(StoredSecretUnreadable):
    """A blob could not be opened: unknown key id, tampered, truncated, or another context's.

    The message says which of these it was; it never holds key material or plaintext.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(f"cannot decrypt the stored secret: {reason}")
        self.reason = reason


class AesGcmTokenCipher:
    """Encrypts secrets with the active key; decrypts with whichever key a blob names."""

    __slots__ = ("_active_key_id", "_aeads")

    def __init__(self, keys: Mapping[str, bytes], active_key_id: str) -> None:
        if not keys:
            raise ValueError("at least one encryption key is needed")
        for key_id, key in keys.items():
            _check_key_id(key_id)
            if len(key) != KEY_BYTES:
                raise ValueError(
                    f"key {key_id!r} is {len(key)} bytes; AES-256 needs exactly {KEY_BYTES}"
                )
        if active_key_id not in keys:
            raise ValueError(f"the active key id {active_key_id!r} is not among the keys")
        # Only the AEAD objects are kept, so no attribute of the cipher holds raw key bytes.
        self._aeads: dict[str, AESGCM] = {key_id: AESGCM(key) for key_id, key in keys.items()}
        self._active_key_id = active_key_id

    @property
    def active_key_id(self) -> str:
        return self._active_key_id

    def __repr__(self) -> str:
        return (
            f"AesGcmTokenCipher(active_key_id={self._active_key_id!r}, "
            f"key_ids={tuple(self._aeads)!r})"
        )

    __str__ = __repr__

    def encrypt(self, secret: Secret, *, context: str) -> bytes:
        """Seal `secret` with the active key; `context` must be given again to decrypt."""
        _check_context(context)
        header = _header(self._active_key_id)
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aeads[self._active_key_id].encrypt(
            nonce, secret.reveal().encode("utf-8"), header + context.encode("utf-8")
        )
        return header + nonce + sealed

    def decrypt(self, blob: bytes, *, context: str) -> Secret:
        """Open a blob made by `encrypt` with the same `context`.

        Raises DecryptionFailed for an unknown key id, a truncated or altered blob, or a blob
        that was sealed for another context.
        """
        _check_context(context)
        key_id, body_start = _parse_header(blob)
        aead = self._aeads.get(key_id)
        if aead is None:
            raise DecryptionFailed(f"the key id {key_id!r} is not configured")
        nonce = blob[body_start : body_start + NONCE_BYTES]
        sealed = blob[body_start + NONCE_BYTES :]
        try:
            plaintext = aead.decrypt(nonce, sealed, blob[:body_start] + context.encode("utf-8"))
        except InvalidTag as exc:
            raise DecryptionFailed(
                f"authentication failed for context {context!r}: the blob was altered "
                "or belongs to another context"
            ) from exc
        try:
            return Secret(plaintext.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise DecryptionFailed("the plaintext is not UTF-8") from exc

    def needs_rotation(self, blob: bytes) -> bool:
        """True when the blob was sealed with a key other than the active one.

        Raises DecryptionFailed when the blob's header cannot be read.
        """
        key_id, _ = _parse_header(blob)
        return key_id != self._active_key_id


def parse_encryption_keys(value: str) -> tuple[dict[str, bytes], str]:
    """Parse `kid1:<base64url of 32 bytes>,kid0:<...>`; the first entry is the active key.

    A bare value without `kid:` gets the key id "k1". Raises ValueError saying what is wrong;
    the message never repeats key material.
    """
    entries = [entry.strip() for entry in value.split(",")]
    if not any(entries):
        raise ValueError(
            f"no key given; expected 'kid:<base64url of 32 random bytes>' ({_GENERATE_HINT})"
        )
    keys: dict[str, bytes] = {}
    for position, entry in enumerate(entries, start=1):
        if not entry:
            raise ValueError(f"entry {position} is empty (look for a stray comma)")
        key_id, sep, encoded = entry.partition(":")
        if not sep:
            key_id, encoded = DEFAULT_KEY_ID, entry
        key_id, encoded = key_id.strip(), encoded.strip()
        if not KEY_ID_PATTERN.fullmatch(key_id):
            raise ValueError(
                f"entry {position} has an invalid key id; use 1-64 letters, digits, '_', '.' or '-'"
            )
        if key_id in keys:
            raise ValueError(f"the key id {key_id!r} appears more than once; key ids must differ")
        key = _decode_key(encoded)
        if key is None:
            raise ValueError(f"key {key_id!r} is not valid base64 ({_GENERATE_HINT})")
        if len(key) != KEY_BYTES:
            raise ValueError(
                f"key {key_id!r} decodes to {len(key)} bytes; AES-256 needs exactly "
                f"{KEY_BYTES} ({_GENERATE_HINT})"
            )
        keys[key_id] = key
    return keys, next(iter(keys))


def _decode_key(encoded: str) -> bytes | None:
    """Strict base64 (URL-safe or standard alphabet, padding optional); None when invalid."""
    if not encoded or not encoded.isascii():
        return None
    padded = encoded + "=" * (-len(encoded) % 4)
    try:
        return base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return None


def _check_key_id(key_id: str) -> None:
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise ValueError("a key id is 1-64 letters, digits, '_', '.' or '-'")


def _check_context(context: str) -> None:
    if not context:
        raise ValueError("a context is required: it binds the blob to where it is stored")


def _header(key_id: str) -> bytes:
    encoded = key_id.encode("ascii")
    return bytes((FORMAT_VERSION, len(encoded))) + encoded


def _parse_header(blob: bytes) -> tuple[str, int]:
    """The key id and where the nonce starts; raises DecryptionFailed for a malformed blob."""
    if len(blob) < 2:
        raise DecryptionFailed("the blob is truncated")
    if blob[0] != FORMAT_VERSION:
        raise DecryptionFailed(f"unsupported blob format version {blob[0]}")
    body_start = 2 + blob[1]
    if len(blob) < body_start + NONCE_BYTES + TAG_BYTES:
        raise DecryptionFailed("the blob is truncated")
    key_id = blob[2:body_start].decode("ascii", errors="replace")
    if not KEY_ID_PATTERN.fullmatch(key_id):
        raise DecryptionFailed("the blob's key id is malformed")
    return key_id, body_start
