"""The same CalendlyApi behaviours against FakeCalendlyApi and against the real adapter talking
to the sandbox: the fake used by the unit tests cannot drift from Calendly's documented rules."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import aiohttp
import pytest

from adapters.calendly import AiohttpCalendlyApi
from domain.errors import (
    AlreadyExists,
    InvalidGrant,
    PlanRequired,
    ResourceNotFound,
    TokenRejected,
)
from domain.ports import CalendlyApi, GrantedTokens, NewSubscription
from domain.secret import Secret
from domain.usecases.start_connect import pkce_challenge
from tests.fakes.calendly import FakeCalendlyApi
from tests.fakes.clock import FixedClock
from tests.support.sandbox import SandboxDriver


@dataclass
class Harness:
    api: CalendlyApi
    redirect_uri: str
    # Walks a person through consent and returns the authorization code for `verifier`.
    code: Callable[[str, bool, Secret], Awaitable[str]]

    async def grant(self, email: str, paid: bool) -> GrantedTokens:
        verifier = Secret("v" * 64)
        code = await self.code(email, paid, verifier)
        return await self.api.exchange_code(
            code=code, redirect_uri=self.redirect_uri, code_verifier=verifier
        )


@pytest.fixture(params=["fake", "sandbox"])
async def harness(request: pytest.FixtureRequest, sandbox: SandboxDriver) -> AsyncIterator[Harness]:
    if request.param == "fake":
        fake = FakeCalendlyApi(clock=FixedClock())
        fake_redirect = "https://app.example/cb"

        async def fake_code(email: str, paid: bool, verifier: Secret) -> str:
            user = fake.add_user(email, paid=paid)
            return fake.issue_code(user, pkce_challenge(verifier), fake_redirect)

        yield Harness(api=fake, redirect_uri=fake_redirect, code=fake_code)
        return
    async with aiohttp.ClientSession() as session:
        api = AiohttpCalendlyApi(
            session,
            client_id=sandbox.client.client_id,
            client_secret=Secret(sandbox.client.client_secret),
            auth_base_url=sandbox.url,
            api_base_url=sandbox.url,
            retry_base_delay=0.01,
        )

        async def sandbox_code(email: str, paid: bool, verifier: Secret) -> str:
            plan = "standard" if paid else "free"
            return await sandbox.code_for(email, pkce_challenge(verifier), sandbox_plan=plan)

        yield Harness(api=api, redirect_uri=sandbox.client.redirect_uris[0], code=sandbox_code)


def new_subscription(granted: GrantedTokens, url: str, me_org: str) -> NewSubscription:
    return NewSubscription(
        callback_url=url,
        events=("invitee.created", "invitee.canceled"),
        organization_uri=me_org,
        user_uri=granted.owner_uri,
        signing_key=Secret("sub-key"),
    )


async def test_a_grant_names_its_owner_and_reads_the_user(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    me = await harness.api.current_user(granted.tokens.access_token)
    assert me.user_uri == granted.owner_uri
    assert me.email == "ada@example.com"
    assert granted.organization_uri in (None, me.organization_uri)


async def test_refresh_tokens_rotate_and_are_single_use(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    fresh = await harness.api.refresh(granted.tokens.refresh_token)
    assert fresh.tokens.refresh_token != granted.tokens.refresh_token
    with pytest.raises(InvalidGrant):
        await harness.api.refresh(granted.tokens.refresh_token)
    await harness.api.current_user(fresh.tokens.access_token)


async def test_a_revoked_grant_is_rejected(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    await harness.api.revoke(granted.tokens.refresh_token)
    with pytest.raises(TokenRejected):
        await harness.api.current_user(granted.tokens.access_token)
    with pytest.raises(InvalidGrant):
        await harness.api.refresh(granted.tokens.refresh_token)


async def test_subscriptions_are_created_listed_and_deleted(harness: Harness) -> None:
    granted = await harness.grant("ada@example.com", True)
    token = granted.tokens.access_token
    me = await harness.api.current_user(token)
    sub = await harness.api.create_subscription(
        token, new_subscription(granted, "https://app.example/hooks/a", me.organization_uri)
    )
    assert sub.is_active
    assert sub.user_uri == me.user_uri
    listed = await harness.api.list_subscriptions(
        token, organization_uri=me.organization_uri, user_uri=me.user_uri
    )
    assert [s.uri for s in listed] == [sub.uri]
    with pytest.raises(AlreadyExists):
        await harness.api.create_subscription(
            token, new_subscription(granted, "https://app.example/hooks/a", me.organization_uri)
        )
    await harness.api.delete_subscription(token, sub.uri)
    with pytest.raises(ResourceNotFound):
        await harness.api.delete_subscription(token, sub.uri)
    assert (
        await harness.api.list_subscriptions(
            token, organization_uri=me.organization_uri, user_uri=me.user_uri
        )
        == []
    )


async def test_a_free_plan_cannot_subscribe_but_can_read(harness: Harness) -> None:
    granted = await harness.grant("fred@example.com", False)
    token = granted.tokens.access_token
    me = await harness.api.current_user(token)
    with pytest.raises(PlanRequired):
        await harness.api.create_subscription(
            token, new_subscription(granted, "https://app.example/hooks/f", me.organization_uri)
        )
    assert (
        await harness.api.list_subscriptions(
            token, organization_uri=me.organization_uri, user_uri=me.user_uri
        )
        == []
    )


async def test_a_code_works_once_and_only_with_its_verifier(harness: Harness) -> None:
    verifier = Secret("w" * 64)
    code = await harness.code("x@example.com", True, verifier)
    with pytest.raises(InvalidGrant):
        await harness.api.exchange_code(
            code=await harness.code("y@example.com", True, verifier),
            redirect_uri=harness.redirect_uri,
            code_verifier=Secret("z" * 64),
        )
    await harness.api.exchange_code(
        code=code, redirect_uri=harness.redirect_uri, code_verifier=verifier
    )
    with pytest.raises(InvalidGrant):
        await harness.api.exchange_code(
            code=code, redirect_uri=harness.redirect_uri, code_verifier=verifier
        )
