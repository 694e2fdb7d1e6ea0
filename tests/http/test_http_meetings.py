"""Meetings arrive as signed webhooks over HTTP and are listed only for their owner."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.fakes.calendly import FakeUser
from tests.support.http_app import Api, bearer, booking, cancellation


async def book(api: Api, user_id: str, host: FakeUser, event_id: str, start: str) -> None:
    body = booking(host, event_id=event_id, invitee_id=f"{event_id}-i", start=start)
    response = await api.deliver(body, user_id=user_id)
    assert response.status_code == 200, response.text
    assert response.json() == {"outcome": "applied"}


async def listed(api: Api, user_id: str, query: str = "") -> dict[str, Any]:
    response = await api.client.get(f"/api/meetings{query}", headers=bearer(user_id))
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    body: dict[str, Any] = response.json()
    return body


async def test_a_booking_delivered_over_http_is_listed_for_its_owner(api: Api) -> None:
    host = await api.connect("alice")
    await book(api, "alice", host, "e1", "2030-03-05T14:30:00.000000Z")

    body = await listed(api, "alice")

    assert body["next_cursor"] is None
    [meeting] = body["meetings"]
    assert meeting["event_uri"] == "https://api.calendly.test/scheduled_events/e1"
    assert meeting["name"] == "30 Minute Meeting"
    assert meeting["status"] == "active"
    assert meeting["start_time"] == "2030-03-05T14:30:00Z"
    assert meeting["end_time"] == "2030-03-05T15:00:00Z"
    assert meeting["location"]["type"] == "zoom"
    assert meeting["cancellation"] is None
    [invitee] = meeting["invitees"]
    assert set(invitee) == {
        "invitee_uri",
        "email",
        "name",
        "status",
        "rescheduled",
        "old_invitee_uri",
        "new_invitee_uri",
        "no_show",
        "cancellation",
    }
    assert invitee["email"] == "e1-i@example.org"
    assert invitee["no_show"] is False


async def test_another_user_sees_none_of_them(api: Api) -> None:
    host = await api.connect("alice")
    await api.connect("bob")
    await book(api, "alice", host, "e1", "2030-03-05T14:30:00.000000Z")

    assert (await listed(api, "bob"))["meetings"] == []
    assert (await listed(api, "mallory"))["meetings"] == []
    assert len((await listed(api, "alice"))["meetings"]) == 1


async def test_a_delivery_about_alice_sent_to_bobs_url_gives_bob_nothing(api: Api) -> None:
    alice_host = await api.connect("alice")
    await api.connect("bob")
    bob = api.connection("bob")
    assert bob.signing_key is not None

    response = await api.deliver(
        booking(alice_host),
        key=bob.signing_key.reveal(),
        path=f"/webhooks/calendly/{bob.webhook_token}",
    )

    assert response.status_code == 200
    assert response.json() == {"outcome": "stored_aside"}
    assert (await listed(api, "bob"))["meetings"] == []
    assert (await listed(api, "alice"))["meetings"] == []


async def test_status_and_time_filters(api: Api) -> None:
    host = await api.connect("alice")
    await book(api, "alice", host, "early", "2030-03-05T14:30:00.000000Z")
    await book(api, "alice", host, "late", "2030-04-05T14:30:00.000000Z")
    canceled = await api.deliver(
        cancellation(host, "late", "late-i", start="2030-04-05T14:30:00.000000Z"), user_id="alice"
    )
    assert canceled.json() == {"outcome": "applied"}

    active = await listed(api, "alice", "?status=active")
    gone = await listed(api, "alice", "?status=canceled")
    april = await listed(api, "alice", "?starts_after=2030-04-01T00:00:00Z")
    march = await listed(
        api, "alice", "?starts_after=2030-03-01T00:00:00Z&starts_before=2030-04-01T00:00:00Z"
    )

    def events(body: dict[str, Any]) -> list[str]:
        return [m["event_uri"].rsplit("/", 1)[1] for m in body["meetings"]]

    assert events(active) == ["early"]
    assert events(gone) == ["late"]
    assert gone["meetings"][0]["invitees"][0]["cancellation"]["canceler_type"] == "invitee"
    assert events(april) == ["late"]
    assert events(march) == ["early"]


async def test_pages_follow_the_cursor_to_the_end(api: Api) -> None:
    host = await api.connect("alice")
    for day in range(1, 6):
        await book(api, "alice", host, f"e{day}", f"2030-03-0{day}T14:30:00.000000Z")

    seen: list[str] = []
    query = "?limit=2"
    pages = 0
    while True:
        body = await listed(api, "alice", query)
        pages += 1
        seen += [m["id"] for m in body["meetings"]]
        if body["next_cursor"] is None:
            break
        query = f"?limit=2&cursor={body['next_cursor']}"

    assert pages == 3
    assert len(seen) == len(set(seen)) == 5


async def test_a_cursor_cannot_reach_another_users_meetings(api: Api) -> None:
    host = await api.connect("alice")
    for day in range(1, 4):
        await book(api, "alice", host, f"e{day}", f"2030-03-0{day}T14:30:00.000000Z")
    alice_page = await listed(api, "alice", "?limit=1")

    bob_page = await listed(api, "bob", f"?limit=1&cursor={alice_page['next_cursor']}")

    assert bob_page == {"meetings": [], "next_cursor": None}


def forged_cursor(value: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ("?status=maybe", "status"),
        ("?limit=0", "limit"),
        ("?limit=201", "limit"),
        ("?limit=ten", "limit"),
        ("?starts_after=yesterday", "starts_after"),
        ("?starts_before=2030-01-01T00:00:00", "starts_before"),
        ("?cursor=%%%", "cursor"),
        ("?cursor=bm90IGpzb24", "cursor"),
        (f"?cursor={forged_cursor(['2030-01-01T00:00:00', 'm1'])}", "cursor"),
        (f"?cursor={forged_cursor({'a': 1})}", "cursor"),
        (f"?cursor={forged_cursor([None, ''])}", "cursor"),
        ("?cursor=" + "A" * 600, "cursor"),
    ],
)
async def test_bad_parameters_are_400_naming_the_parameter(
    api: Api, query: str, parameter: str
) -> None:
    response = await api.client.get(f"/api/meetings{query}", headers=bearer("alice"))

    assert response.status_code == 400
    problem = response.json()
    assert problem["status"] == 400
    assert parameter in problem["detail"]
    assert [e["parameter"] for e in problem["errors"]] == [parameter]


async def test_meetings_need_a_signed_in_user(api: Api) -> None:
    response = await api.client.get("/api/meetings")

    assert response.status_code == 401
