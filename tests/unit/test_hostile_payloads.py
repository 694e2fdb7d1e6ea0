"""Hostile content at the Calendly decoding boundary (issue 10; RELIABILITY rows 31, 32, 34).

Whatever a delivery's body holds, the decoder answers a clean InboundWebhook (every time in
UTC and inside datetime's range, routing fields storable) or UnusablePayload: nothing else.
The same wire Structs read the API's listings, so an item that cannot be used is skipped.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from hypothesis import event as label
from hypothesis import example, given, settings
from hypothesis import strategies as st

from adapters.calendly import wire
from adapters.calendly.webhook_decoder import MsgspecWebhookDecoder
from adapters.text import storable, storable_json
from domain.errors import UnusablePayload
from domain.webhooks import (
    INVITEE_CANCELED,
    INVITEE_CREATED,
    NO_SHOW_CREATED,
    NO_SHOW_DELETED,
    InboundWebhook,
)
from tests.support.deliveries import BASE, envelope, invitee_payload

HOST = f"{BASE}/users/host"
decoder = MsgspecWebhookDecoder()


def booking(**changes: Any) -> dict[str, Any]:
    payload = invitee_payload(
        host_uri=HOST, event_id="e1", invitee_id="i1", no_show_id="n1", canceler_type="host"
    )
    payload.update(changes)
    return payload


def body_of(data: dict[str, Any]) -> bytes:
    return json.dumps(data).encode()


def delivery(event: str = INVITEE_CREATED, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(envelope(event, booking(**changes), HOST))
    return data


# ------------------------------------------------------------ row 31: storable text
@pytest.mark.parametrize(
    ("text", "stored"),
    [
        ("Eve\u0000", "Eve"),
        ("\u0000\u0000", ""),
        ("a\ud800b", "a\ufffdb"),
        ("\udfff\ud83d", "\ufffd\ufffd"),
        ("Zoë 😀 \\u0000", "Zoë 😀 \\u0000"),  # an escaped backslash is ordinary text
        ("plain", "plain"),
    ],
)
def test_text_is_made_storable(text: str, stored: str) -> None:
    assert storable(text) == stored


@given(st.text())
def test_any_text_becomes_utf8_without_nul_and_clean_text_is_untouched(text: str) -> None:
    stored = storable(text)
    assert "\x00" not in stored
    stored.encode("utf-8")  # no lone surrogate left
    assert storable(stored) == stored
    if "\x00" not in text and not any("\ud800" <= c <= "\udfff" for c in text):
        assert stored == text


def test_json_keys_and_values_are_made_storable_at_every_level() -> None:
    value = {"a\u0000": ["\ud800", {"k\u0000": "v\u0000", "n": 1, "f": 1.5, "b": None}]}

    assert storable_json(value) == {"a": ["\ufffd", {"k": "v", "n": 1, "f": 1.5, "b": None}]}


def test_msgspec_refuses_lone_surrogates_but_decodes_nul() -> None:
    # Why the repository must clean NUL, and why a lone surrogate never reaches it from JSON.
    assert msgspec.json.decode(b'"Eve\\u0000"') == "Eve\x00"
    for escaped in (b'"\\ud800"', b'"a\\ud800b"', b'"\\udc00"'):
        with pytest.raises(msgspec.DecodeError):
            msgspec.json.decode(escaped)


def test_nul_in_what_routes_and_identifies_a_delivery_is_removed() -> None:
    data = delivery(uri=f"{BASE}/scheduled_events/e1/invitees/i1\u0000")
    data["event"] = "invitee.created\u0000"
    data["created_by"] = HOST + "\u0000"
    data["payload"]["no_show"]["uri"] += "\u0000"
    data["payload"]["scheduled_event"]["event_memberships"][0]["user"] = HOST + "\u0000"

    inbound = decoder.decode(body_of(data))

    assert inbound.event == INVITEE_CREATED
    assert inbound.created_by == HOST
    assert inbound.host_user_uris == (HOST,)
    assert inbound.payload_uri == f"{BASE}/scheduled_events/e1/invitees/i1"
    assert inbound.no_show_uri == f"{BASE}/invitee_no_shows/n1"
    assert "\x00" not in inbound.dedup_key()


# -------------------------------------------------------------- row 32: deep nesting
def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize("depth", [1_000, 100_000])
@pytest.mark.parametrize(
    "template",
    [
        "{deep}",
        '{{"event": "invitee.created", "payload": {deep}}}',
        '{{"event": "invitee.created", "extra": {deep}, "payload": {{}}}}',
        '{{"event": "invitee.created", "payload": {{"uri": "u", "event": "e", "x": {deep}}}}}',
        '{{"event": "invitee.created", "payload": {{"uri": "u", "scheduled_event":'
        ' {{"uri": "e", "location": {{"a": {deep}}}}}}}}}',
        '{{"event": "routing_form_submission.created", "payload": {{"uri": {deep}}}}}',
        '{{"event": "routing_form_submission.created", "payload": {deep}}}',
    ],
    ids=["body", "payload", "envelope", "unknown-field", "location", "other-uri", "other"],
)
def test_deep_nesting_anywhere_is_unusable_never_a_recursion_error(
    template: str, depth: int
) -> None:
    body = template.format(deep=deep(depth)).encode()

    with pytest.raises(UnusablePayload):
        decoder.decode(body)


def test_a_location_nested_past_the_bound_is_unusable_within_it_kept() -> None:
    def located(depth: int) -> bytes:
        location: Any = {"type": "custom"}
        for _ in range(depth - 1):
            location = {"data": location}
        data = delivery()
        data["payload"]["scheduled_event"]["location"] = location
        return body_of(data)

    kept = decoder.decode(located(wire.MAX_LOCATION_DEPTH))
    assert kept.change is not None
    assert kept.change.meeting.location is not None
    with pytest.raises(UnusablePayload, match="nests deeper"):
        decoder.decode(located(wire.MAX_LOCATION_DEPTH + 1))


@pytest.mark.parametrize(
    ("value", "depth", "within"),
    [
        ({}, 1, True),
        ({"a": 1}, 1, True),
        ({"a": {}}, 1, False),
        ({"a": {}}, 2, True),
        ({"a": [1, [2, [3]]]}, 3, False),
        ({"a": [1, [2, [3]]]}, 4, True),
        ("text", 0, True),
    ],
)
def test_nesting_is_measured_without_recursion(value: object, depth: int, within: bool) -> None:
    assert wire.nests_at_most(value, depth) is within
    assert wire.nests_at_most([value] * 3, depth + 1) is within


# ------------------------------------------------------ row 34: times outside the range
OUT_OF_RANGE = ["0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00"]


def place(data: dict[str, Any], where: str, value: object) -> dict[str, Any]:
    """`data` with `value` as the time at `where` (one of every time the Structs carry)."""
    payload = data["payload"]
    if where == "envelope":
        data["created_at"] = value
    elif where == "start":
        payload["scheduled_event"]["start_time"] = value
    elif where == "end":
        payload["scheduled_event"]["end_time"] = value
    elif where == "event_cancellation":
        payload["scheduled_event"]["cancellation"] = {"created_at": value}
    elif where == "cancellation":
        payload["cancellation"]["created_at"] = value
    else:
        payload["no_show"]["created_at"] = value
    return data


WHERE = ["envelope", "start", "end", "event_cancellation", "cancellation", "no_show"]


@pytest.mark.parametrize("moment", OUT_OF_RANGE)
@pytest.mark.parametrize("where", WHERE)
@pytest.mark.parametrize("event", [INVITEE_CREATED, INVITEE_CANCELED, NO_SHOW_CREATED])
def test_a_time_utc_cannot_hold_makes_the_delivery_unusable(
    event: str, where: str, moment: str
) -> None:
    body = body_of(place(delivery(event), where, moment))

    with pytest.raises(UnusablePayload, match="UTC"):
        decoder.decode(body)


def test_times_with_an_offset_or_without_a_zone_are_read_in_utc() -> None:
    data = place(delivery(NO_SHOW_CREATED), "start", "2030-03-05T09:30:00-05:00")
    data = place(data, "end", "2030-03-05T15:00:00")
    data = place(data, "envelope", "0001-01-01T05:00:00+05:00")  # exactly the earliest
    data = place(data, "cancellation", "9999-12-31T18:59:59.999999-05:00")  # the latest

    inbound = decoder.decode(body_of(data))

    assert inbound.change is not None
    meeting, invitee = inbound.change.meeting, inbound.change.invitee
    assert invitee is not None
    assert invitee.cancellation is not None
    assert meeting.start_time == datetime(2030, 3, 5, 14, 30, tzinfo=UTC)
    assert meeting.end_time == datetime(2030, 3, 5, 15, tzinfo=UTC)
    assert inbound.created_at == inbound.change.no_show_at == datetime.min.replace(tzinfo=UTC)
    assert invitee.cancellation.canceled_at == datetime.max.replace(tzinfo=UTC)
    for moment in (meeting.start_time, meeting.end_time, inbound.created_at):
        assert moment is not None
        assert moment.tzinfo is UTC


@pytest.mark.parametrize("moment", OUT_OF_RANGE)
@pytest.mark.parametrize(
    ("kind", "item"),
    [
        (wire.ScheduledEvent, {"uri": "e", "start_time": "{t}"}),
        (wire.ScheduledEvent, {"uri": "e", "end_time": "{t}"}),
        (wire.ScheduledEvent, {"uri": "e", "cancellation": {"created_at": "{t}"}}),
        (wire.Invitee, {"uri": "i", "cancellation": {"created_at": "{t}"}}),
        (wire.Invitee, {"uri": "i", "no_show": {"uri": "n", "created_at": "{t}"}}),
    ],
)
def test_a_listed_item_with_such_a_time_does_not_decode_so_a_sync_skips_it(
    kind: type[msgspec.Struct], item: dict[str, Any], moment: str
) -> None:
    raw = json.dumps(item).replace("{t}", moment).encode()

    # The API client skips an item whose decode raises DecodeError (`lenient_item`).
    with pytest.raises(msgspec.DecodeError, match="UTC"):
        msgspec.json.decode(raw, type=kind)


@pytest.mark.parametrize(
    ("created_at", "expected"),
    [
        ("2030-01-01T01:00:00+01:00", datetime(2030, 1, 1, tzinfo=UTC)),
        ("0001-01-01T00:00:00+05:00", None),
        ("not a time", None),
        (None, None),
    ],
)
def test_a_subscriptions_creation_time_is_read_in_utc_or_not_at_all(
    created_at: str | None, expected: datetime | None
) -> None:
    subscription = wire.WebhookSubscription(
        uri="s", callback_url="c", state="active", scope="user", created_at=created_at
    )

    assert subscription.created() == expected


# --------------------------------------------------------- the property: any time at all
def rfc3339(moment: datetime, fraction: int, zone: str | None) -> str:
    text = f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}"  # %Y does not pad year 1 everywhere
    if fraction:
        text += "." + f"{moment.microsecond:06d}{moment.microsecond % 1000:03d}"[:fraction]
    return text + ("" if zone is None else zone)


offsets = st.integers(min_value=-24 * 60 + 1, max_value=24 * 60 - 1).map(
    lambda minutes: f"{'-' if minutes < 0 else '+'}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
)
zones = st.one_of(st.none(), st.sampled_from(["Z", "z", "+00:00", "-00:00"]), offsets)
near_the_edges = st.one_of(
    st.datetimes(max_value=datetime(1, 1, 3)),
    st.datetimes(min_value=datetime(9999, 12, 30)),
    st.datetimes(),
)
well_formed = st.builds(rfc3339, near_the_edges, st.integers(0, 9), zones)
malformed = st.one_of(
    st.text(max_size=40),
    st.from_regex(
        r"\A[+-]?\d{1,6}-\d{1,2}-\d{1,2}[Tt ]\d{1,2}:\d{1,2}(:\d{1,2}(\.\d{0,12})?)?"
        r"([Zz]|[+-]\d{1,2}(:?\d{1,2})?)?\Z"
    ),
)
json_values = st.one_of(
    well_formed,
    well_formed,  # thrice: most of what a delivery carries is well formed
    well_formed,
    malformed,
    st.none(),
    st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False)),
    st.lists(st.integers(), max_size=2),
)


def representable_in_utc(moment: datetime | None) -> bool:
    if moment is None:
        return True
    offset = moment.utcoffset()
    return offset == timedelta(0) and moment.astimezone(UTC) == moment


def every_time(inbound: InboundWebhook) -> list[datetime | None]:
    times = [inbound.created_at]
    change = inbound.change
    if change is not None:
        meeting, invitee = change.meeting, change.invitee
        times += [meeting.start_time, meeting.end_time, change.no_show_at]
        times.append(meeting.cancellation.canceled_at if meeting.cancellation else None)
        if invitee is not None:
            times.append(invitee.no_show_changed_at)
            times.append(invitee.cancellation.canceled_at if invitee.cancellation else None)
    return times


@settings(max_examples=400, deadline=None)
@given(
    event=st.sampled_from([INVITEE_CREATED, INVITEE_CANCELED, NO_SHOW_CREATED, NO_SHOW_DELETED]),
    placed=st.lists(st.tuples(st.sampled_from(WHERE), json_values), min_size=1, max_size=3),
)
@example(event=INVITEE_CREATED, placed=[("start", "0001-01-01T00:00:00+05:00")])
@example(event=INVITEE_CREATED, placed=[("start", "9999-12-31T23:00:00-05:00")])
@example(event=NO_SHOW_CREATED, placed=[("no_show", "9999-12-31T23:59:59.9999996Z")])
@example(event=INVITEE_CANCELED, placed=[("envelope", "0000-12-31T23:59:59Z")])
@example(event=NO_SHOW_DELETED, placed=[("cancellation", "10000-01-01T00:00:00Z")])
def test_any_time_gives_utc_times_inside_the_range_or_unusable(
    event: str, placed: list[tuple[str, object]]
) -> None:
    data = delivery(event)
    for where, value in placed:
        data = place(data, where, value)

    try:
        inbound = decoder.decode(body_of(data))
    except UnusablePayload:
        label("unusable")
        return
    label("decoded")
    assert all(representable_in_utc(moment) for moment in every_time(inbound))


def test_an_absurdly_deep_calendly_answer_is_unreadable_not_a_crash() -> None:
    """The API adapter's decoding meets the same bodies: a page item is skipped, a whole
    answer is CalendlyUnavailable (a sync backs off), never a RecursionError."""
    from adapters.calendly.errors import decode_raw, lenient_item
    from domain.errors import CalendlyUnavailable

    deep = b"[" * 5_000 + b"]" * 5_000
    assert lenient_item("/scheduled_events", msgspec.Raw(deep), wire.ScheduledEvent) is None
    with pytest.raises(CalendlyUnavailable):
        decode_raw("GET", "/users/me", 200, b'{"resource": ' + deep + b"}", wire.UserResource)
