"""`GET /v1/changes` over a scripted feed: cursors in and out, pages, snapshots, bad input.

What the feed holds and in which order is Postgres' part (tests/integration/test_change_feed.py);
here, how the route reads its query and answers.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from domain.changes import Change, ChangePosition
from domain.model import CalendlyAccount, ConnectionStatus, WebhookStatus
from domain.ports import ListedConnection
from tests.support.http_app import Api, bearer, key_auth, new_api_key

AT = datetime(2030, 1, 1, tzinfo=UTC)


def connection_change(xid: int, row: int, user: str, seq: int) -> Change:
    return Change(
        position=ChangePosition(xid, row),
        user_id=user,
        user_seq=seq,
        kind="connection",
        subject_id=f"00000000-0000-0000-0000-{row:012d}",
        event="connection.connected",
        created_at=AT,
        connection=ListedConnection(
            id=f"00000000-0000-0000-0000-{row:012d}",
            user_id=user,
            status=ConnectionStatus.ACTIVE,
            account=CalendlyAccount(
                user_uri=f"https://api.calendly.test/users/{user}",
                organization_uri="https://api.calendly.test/organizations/o",
                email=f"{user}@example.com",
                name=None,
            ),
            webhook_status=WebhookStatus.ACTIVE,
            token_expires_at=AT,
            last_error=None,
            created_at=AT,
            updated_at=AT,
            connected_at=AT,
        ),
    )


async def test_pages_resume_from_next_cursor_and_carry_the_snapshot(api: Api) -> None:
    api.core.changes.changes += [
        connection_change(700, 1, "alice", 1),
        connection_change(700, 2, "bob", 1),
        connection_change(702, 3, "alice", 2),
    ]
    key = key_auth(await new_api_key(api.core))

    first = await api.client.get("/v1/changes", params={"limit": 2}, headers=key)
    assert first.status_code == 200, first.text
    body = first.json()
    assert [c["cursor"] for c in body["changes"]] == ["700.1", "700.2"]
    assert body["next_cursor"] == "700.2"
    item = body["changes"][0]
    assert item["user_id"] == "alice"
    assert item["user_seq"] == 1
    assert item["event"] == "connection.connected"
    assert item["connection"]["user_id"] == "alice"
    assert item["connection"]["email"] == "alice@example.com"
    assert item["meeting"] is None
    assert "token" not in str(item["connection"]).replace("token_expires_at", "")

    rest = await api.client.get("/v1/changes", params={"after": "700.2"}, headers=key)
    assert [c["cursor"] for c in rest.json()["changes"]] == ["702.3"]
    empty = await api.client.get("/v1/changes", params={"after": "702.3"}, headers=key)
    assert empty.json() == {"changes": [], "next_cursor": "702.3"}
    assert first.headers["cache-control"] == "no-store"


async def test_an_empty_feed_starts_at_the_beginning(api: Api) -> None:
    key = key_auth(await new_api_key(api.core))
    response = await api.client.get("/v1/changes", headers=key)
    assert response.json() == {"changes": [], "next_cursor": "0.0"}
    again = await api.client.get("/v1/changes", params={"after": "0.0"}, headers=key)
    assert again.json() == {"changes": [], "next_cursor": "0.0"}


@pytest.mark.parametrize(
    "after",
    ["abc", "1", "1.2.3", "-1.2", "01.2", "18446744073709551616.0", "1.9223372036854775808"],
)
async def test_a_cursor_that_is_not_a_position_is_400(api: Api, after: str) -> None:
    key = key_auth(await new_api_key(api.core))
    response = await api.client.get("/v1/changes", params={"after": after}, headers=key)
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "after" in response.text


@pytest.mark.parametrize("limit", ["0", "201", "x"])
async def test_a_bad_limit_is_400(api: Api, limit: str) -> None:
    key = key_auth(await new_api_key(api.core))
    response = await api.client.get("/v1/changes", params={"limit": limit}, headers=key)
    assert response.status_code == 400


async def test_a_users_token_cannot_read_the_feed(api: Api) -> None:
    response = await api.client.get("/v1/changes", headers=bearer("alice"))
    assert response.status_code == 401


async def test_the_feed_down_is_503(api: Api) -> None:
    api.core.changes.unavailable = True
    key = key_auth(await new_api_key(api.core))
    response = await api.client.get("/v1/changes", headers=key)
    assert response.status_code == 503


async def test_a_cursor_older_than_the_log_keeps_is_410_cursor_expired(api: Api) -> None:
    api.core.changes.changes += [connection_change(710, 9, "alice", 5)]
    api.core.changes.pruned_up_to = ChangePosition(705, 8)
    key = key_auth(await new_api_key(api.core))

    expired = await api.client.get("/v1/changes", params={"after": "700.3"}, headers=key)
    assert expired.status_code == 410, expired.text
    assert expired.headers["content-type"].startswith("application/problem+json")
    problem = expired.json()
    assert problem["type"].endswith(":cursor-expired")
    assert "/v1/connections" in problem["detail"]
    assert "meetings" in problem["detail"]

    # At the pruned position or after it, the feed goes on.
    for after in ("705.8", "706.1"):
        page = await api.client.get("/v1/changes", params={"after": after}, headers=key)
        assert page.status_code == 200, page.text
        assert [c["user_seq"] for c in page.json()["changes"]] == [5]
