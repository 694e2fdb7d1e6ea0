"""The sandbox answers a full PKCE connect over real HTTP."""

from __future__ import annotations

from tests.support.sandbox import SandboxDriver


async def test_connect_and_read_me(sandbox: SandboxDriver) -> None:
    tokens = await sandbox.connect("ada@example.com")
    me = await sandbox.me(tokens.access_token)
    assert me["email"] == "ada@example.com"
    assert me["uri"] == tokens.owner
    assert me["current_organization"] == tokens.organization
