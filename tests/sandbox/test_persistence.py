"""The sandbox's snapshot keeps grants, subscriptions and meetings exactly."""

from __future__ import annotations

from calendly_sandbox.config import OAuthClient, SandboxConfig
from calendly_sandbox.persistence import restore, snapshot
from calendly_sandbox.world import World


def test_a_restored_world_answers_like_the_original() -> None:
    client = OAuthClient(client_id="c", client_secret="s", redirect_uris=["http://x/cb"])
    world = World(SandboxConfig(clients=[client]))
    user = world.create_user(name="Ada", email="ada@example.com")
    code = world.issue_code(client, "http://x/cb", user, None)
    grant = world.redeem_code(client, code, "http://x/cb", None)
    world.book(
        user,
        invitees=[("Grace", "g@example.org")],
        start_time=1_900_000_000,
        duration_minutes=30,
        name="Chat",
        location_type="zoom",
        invitee_limit=1,
    )
    copy = World(SandboxConfig(clients=[client]))
    restore(copy, snapshot(world))
    _, same_user = copy.bearer_user(grant.access_token)
    assert same_user.email == "ada@example.com"
    assert copy.refresh(client, grant.refresh_token).user_id == user.id
    assert [copy.event_json(e) for e in copy.events.values()] == [
        world.event_json(e) for e in world.events.values()
    ]
    assert snapshot(copy) != snapshot(world)  # the copy rotated its refresh token
