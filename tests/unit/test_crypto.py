"""AES-GCM token cipher: round trips, every kind of damage rejected, key rotation, key parsing."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapters.crypto import (
    NONCE_BYTES,
    TAG_BYTES,
    AesGcmTokenCipher,
    DecryptionFailed,
    parse_encryption_keys,
)
from domain.secret import Secret

OLD_KEY = bytes(range(32))
NEW_KEY = bytes(range(100, 132))
CONTEXT = "connection:c-1:access_token"
TOKEN = Secret("eyJraWQiOiJhY2Nlc3MtdG9rZW4tY2FuYXJ5In0")


def b64(key: bytes) -> str:
    return base64.urlsafe_b64encode(key).decode()


def cipher(active: str = "k1", **keys: bytes) -> AesGcmTokenCipher:
    return AesGcmTokenCipher(keys or {"k1": OLD_KEY}, active)


def test_round_trip() -> None:
    box = cipher()
    blob = box.encrypt(TOKEN, context=CONTEXT)
    assert box.decrypt(blob, context=CONTEXT) == TOKEN


def test_blob_is_self_describing_and_hides_the_plaintext() -> None:
    blob = cipher().encrypt(TOKEN, context=CONTEXT)
    assert blob[0] == 1
    assert blob[1] == 2
    assert blob[2:4] == b"k1"
    assert len(blob) == 4 + NONCE_BYTES + len(TOKEN.reveal()) + TAG_BYTES
    assert TOKEN.reveal().encode() not in blob


def test_each_encryption_uses_a_fresh_nonce() -> None:
    box = cipher()
    first, second = (box.encrypt(TOKEN, context=CONTEXT) for _ in range(2))
    assert first != second
    assert first[4 : 4 + NONCE_BYTES] != second[4 : 4 + NONCE_BYTES]


def test_empty_secret_round_trips() -> None:
    box = cipher()
    assert box.decrypt(box.encrypt(Secret(""), context=CONTEXT), context=CONTEXT) == Secret("")


@pytest.mark.parametrize("bit", [0x01, 0x80])
def test_changing_any_byte_is_detected(bit: int) -> None:
    """Version, key id length, key id, nonce, ciphertext and tag: no byte can be altered."""
    box = AesGcmTokenCipher({"k1": OLD_KEY, "k0": NEW_KEY}, "k1")
    blob = box.encrypt(TOKEN, context=CONTEXT)
    for index in range(len(blob)):
        damaged = bytearray(blob)
        damaged[index] ^= bit
        with pytest.raises(DecryptionFailed):
            box.decrypt(bytes(damaged), context=CONTEXT)


def test_truncation_and_extension_are_detected() -> None:
    box = cipher()
    blob = box.encrypt(TOKEN, context=CONTEXT)
    for length in range(len(blob)):
        with pytest.raises(DecryptionFailed):
            box.decrypt(blob[:length], context=CONTEXT)
    with pytest.raises(DecryptionFailed):
        box.decrypt(blob + b"\x00", context=CONTEXT)


def test_truncated_header_says_so() -> None:
    with pytest.raises(DecryptionFailed, match="truncated"):
        cipher().decrypt(b"\x01", context=CONTEXT)


def test_unknown_format_version_says_so() -> None:
    blob = bytearray(cipher().encrypt(TOKEN, context=CONTEXT))
    blob[0] = 9
    with pytest.raises(DecryptionFailed, match="version 9"):
        cipher().decrypt(bytes(blob), context=CONTEXT)


@pytest.mark.parametrize(
    "other",
    [
        "connection:c-2:access_token",  # another row
        "connection:c-1:refresh_token",  # another column
        "connection:c-1:access_token ",
    ],
)
def test_a_blob_cannot_be_moved_to_another_context(other: str) -> None:
    box = cipher()
    blob = box.encrypt(TOKEN, context=CONTEXT)
    with pytest.raises(DecryptionFailed, match="another context"):
        box.decrypt(blob, context=other)


def test_context_is_required() -> None:
    with pytest.raises(ValueError, match="context"):
        cipher().encrypt(TOKEN, context="")


def test_rotation_keeps_old_blobs_readable() -> None:
    before = AesGcmTokenCipher({"k1": OLD_KEY}, "k1")
    old_blob = before.encrypt(TOKEN, context=CONTEXT)

    after = AesGcmTokenCipher({"k2": NEW_KEY, "k1": OLD_KEY}, "k2")
    assert after.decrypt(old_blob, context=CONTEXT) == TOKEN
    assert after.needs_rotation(old_blob)

    new_blob = after.encrypt(TOKEN, context=CONTEXT)
    assert new_blob[2:4] == b"k2"
    assert not after.needs_rotation(new_blob)
    assert after.decrypt(new_blob, context=CONTEXT) == TOKEN


def test_unknown_key_id_is_named_without_key_material() -> None:
    retired = AesGcmTokenCipher({"k0": OLD_KEY}, "k0").encrypt(TOKEN, context=CONTEXT)
    with pytest.raises(DecryptionFailed, match="'k0' is not configured") as caught:
        cipher().decrypt(retired, context=CONTEXT)
    message = str(caught.value)
    assert TOKEN.reveal() not in message
    assert b64(OLD_KEY) not in message


def test_same_key_id_with_another_key_fails_authentication() -> None:
    blob = AesGcmTokenCipher({"k1": NEW_KEY}, "k1").encrypt(TOKEN, context=CONTEXT)
    with pytest.raises(DecryptionFailed, match="authentication failed"):
        cipher().decrypt(blob, context=CONTEXT)


def test_needs_rotation_rejects_a_malformed_blob() -> None:
    with pytest.raises(DecryptionFailed):
        cipher().needs_rotation(b"")


def test_repr_and_str_show_key_ids_but_no_keys() -> None:
    box = AesGcmTokenCipher({"k2": NEW_KEY, "k1": OLD_KEY}, "k2")
    for text in (repr(box), str(box), f"{box}"):
        assert "k2" in text
        for key in (OLD_KEY, NEW_KEY):
            assert b64(key) not in text
            assert repr(key) not in text
            assert key.hex() not in text
    assert not hasattr(box, "__dict__")


@pytest.mark.parametrize(
    ("keys", "active", "problem"),
    [
        ({}, "k1", "at least one"),
        ({"k1": OLD_KEY}, "k2", "active key id"),
        ({"k1": OLD_KEY[:16]}, "k1", "16 bytes"),
        ({"bad id": OLD_KEY}, "bad id", "key id"),
        ({"x" * 65: OLD_KEY}, "x" * 65, "key id"),
    ],
)
def test_constructor_rejects_bad_keys(keys: dict[str, bytes], active: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        AesGcmTokenCipher(keys, active)


@given(secret=st.text(), context=st.text(min_size=1))
def test_any_text_round_trips(secret: str, context: str) -> None:
    box = AesGcmTokenCipher({"k2": NEW_KEY, "k1": OLD_KEY}, "k2")
    blob = box.encrypt(Secret(secret), context=context)
    assert box.decrypt(blob, context=context) == Secret(secret)


@given(blob=st.binary(max_size=200))
def test_arbitrary_bytes_are_rejected_cleanly(blob: bytes) -> None:
    with pytest.raises(DecryptionFailed):
        cipher().decrypt(blob, context=CONTEXT)


# --- parse_encryption_keys ----------------------------------------------------------------


def test_parse_first_entry_is_active() -> None:
    keys, active = parse_encryption_keys(f"k2:{b64(NEW_KEY)}, k1:{b64(OLD_KEY)}")
    assert keys == {"k2": NEW_KEY, "k1": OLD_KEY}
    assert active == "k2"


def test_parse_bare_value_is_k1() -> None:
    assert parse_encryption_keys(b64(OLD_KEY)) == ({"k1": OLD_KEY}, "k1")


def test_parse_accepts_unpadded_and_standard_alphabet() -> None:
    key = bytes([0xFB, 0xFF] * 16)  # encodes with '+' and '/' in the standard alphabet
    standard = base64.b64encode(key).decode()
    assert "+" in standard or "/" in standard
    assert parse_encryption_keys(f"a:{standard}")[0] == {"a": key}
    assert parse_encryption_keys(f"a:{b64(key).rstrip('=')}")[0] == {"a": key}


def test_parse_result_feeds_the_cipher() -> None:
    keys, active = parse_encryption_keys(f"k2:{b64(NEW_KEY)},k1:{b64(OLD_KEY)}")
    box = AesGcmTokenCipher(keys, active)
    assert box.decrypt(box.encrypt(TOKEN, context=CONTEXT), context=CONTEXT) == TOKEN


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("", "no key given"),
        ("  ", "no key given"),
        (",", "no key given"),
        (f",k1:{b64(OLD_KEY)}", "entry 1 is empty"),
        (f"k1:{b64(OLD_KEY)},", "entry 2 is empty"),
        ("k1:not*base64!", "not valid base64"),
        ("k1:", "not valid base64"),
        (f"k1:{b64(OLD_KEY)[:41]}", "not valid base64"),
        (f"k1:{b64(OLD_KEY)[:-5]}", "decodes to 29 bytes"),
        (f"k1:{b64(OLD_KEY[:16])}", "16 bytes"),
        (f"k1:{b64(OLD_KEY + b'x')}", "33 bytes"),
        (f"k1:{b64(OLD_KEY)},k1:{b64(NEW_KEY)}", "more than once"),
        (f"{b64(OLD_KEY)},k1:{b64(NEW_KEY)}", "more than once"),
        (f"bad id:{b64(OLD_KEY)}", "invalid key id"),
        (f":{b64(OLD_KEY)}", "invalid key id"),
    ],
)
def test_parse_rejects_with_a_reason(value: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as caught:
        parse_encryption_keys(value)
    message = str(caught.value)
    for key in (OLD_KEY, NEW_KEY, OLD_KEY[:16], OLD_KEY + b"x"):
        assert b64(key) not in message
        assert b64(key)[:20] not in message


@given(value=st.text())
def test_parse_never_crashes(value: str) -> None:
    try:
        keys, active = parse_encryption_keys(value)
    except ValueError:
        return
    assert active in keys
    assert all(len(key) == 32 for key in keys.values())
