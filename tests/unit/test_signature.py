"""Calendly's signature scheme: strict parsing, tolerance, key choice, and no crash on junk."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.errors import InvalidSignature
from domain.secret import Secret
from domain.signature import (
    check_timestamp,
    compute_signature,
    parse_signature_header,
    signed_with,
)
from tests.support.deliveries import sign

BODY = b'{"event":"invitee.created","payload":{}}'
NOW = datetime(2030, 1, 1, tzinfo=UTC)
T = int(NOW.timestamp())


def test_our_signature_matches_an_independent_implementation() -> None:
    header = parse_signature_header(sign(BODY, "key", T))
    assert header.signatures == (compute_signature(Secret("key"), T, BODY),)


@pytest.mark.parametrize(
    "keys",
    [
        [Secret("subscription-key")],
        [Secret("old-app-key"), Secret("subscription-key")],
        [Secret("subscription-key"), Secret("new-app-key")],
    ],
)
def test_any_configured_key_verifies(keys: list[Secret]) -> None:
    header = parse_signature_header(sign(BODY, "subscription-key", T))
    assert signed_with(header, BODY, keys)


def test_a_signature_over_reserialised_json_does_not_verify() -> None:
    header = parse_signature_header(sign(BODY, "k", T))
    reserialised = b'{"event": "invitee.created", "payload": {}}'
    assert not signed_with(header, reserialised, [Secret("k")])


def test_the_key_itself_in_the_header_does_not_verify() -> None:
    with pytest.raises(InvalidSignature):
        parse_signature_header("t=1,v1=k")
    header = parse_signature_header(f"t={T},v1={'0' * 64}")
    assert not signed_with(header, BODY, [Secret("0" * 64)])


def test_several_v1_values_are_all_tried() -> None:
    good = sign(BODY, "k", T).split("v1=")[1]
    header = parse_signature_header(f"t={T},v1={'a' * 64},v1={good}")
    assert signed_with(header, BODY, [Secret("k")])


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (None, "missing"),
        ("", "missing"),
        ("   ", "missing"),
        ("garbage", "malformed"),
        ("t=1,t=2,v1=" + "a" * 64, "more than one timestamp"),
        ("v0=" + "a" * 64 + ",t=1", "no v1"),
        ("t=1", "no v1"),
        ("v1=" + "a" * 64, "no timestamp"),
        ("t=-1,v1=" + "a" * 64, "not a number"),
        ("t=1.5,v1=" + "a" * 64, "not a number"),
        ("t=1,v1=" + "A" * 64, "hex"),
        ("t=1,v1=" + "a" * 63, "hex"),
        ("t=1,v1=" + "g" * 64, "hex"),
        ("t=1," + "x" * 5000, "too long"),
    ],
)
def test_malformed_headers_are_rejected_with_a_reason(value: str | None, reason: str) -> None:
    with pytest.raises(InvalidSignature, match=reason):
        parse_signature_header(value)


@pytest.mark.parametrize(
    ("offset", "accepted"), [(180, True), (-180, True), (181, False), (-181, False)]
)
def test_the_tolerance_holds_both_ways_to_the_second(offset: int, accepted: bool) -> None:
    header = parse_signature_header(sign(BODY, "k", T + offset))
    if accepted:
        check_timestamp(header, NOW, timedelta(seconds=180))
    else:
        with pytest.raises(InvalidSignature):
            check_timestamp(header, NOW, timedelta(seconds=180))


@given(st.one_of(st.none(), st.text(max_size=300)), st.binary(max_size=300))
def test_arbitrary_headers_and_bodies_never_crash(header: str | None, body: bytes) -> None:
    try:
        parsed = parse_signature_header(header)
    except InvalidSignature:
        return
    check = signed_with(parsed, body, [Secret("k")])
    assert isinstance(check, bool)


@given(st.binary(max_size=200), st.text(min_size=1, max_size=40), st.integers(0, 10**12 - 1))
def test_what_we_sign_we_verify_and_nothing_else(body: bytes, key: str, t: int) -> None:
    header = parse_signature_header(sign(body, key, t))
    assert signed_with(header, body, [Secret(key)])
    assert not signed_with(header, body + b"x", [Secret(key)])
    assert not signed_with(header, body, [Secret(key + "x")])


def test_secrets_never_show_themselves() -> None:
    secret = Secret("canary-value")
    assert "canary" not in repr(secret)
    assert "canary" not in str(secret)
    assert "canary" not in f"{secret}"
    assert "canary" not in repr({"token": secret})
    assert secret == Secret("canary-value")
    assert secret != Secret("other")
