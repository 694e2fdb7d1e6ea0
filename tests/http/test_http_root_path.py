"""A service mounted under a path prefix (ROOT_PATH) behind a proxy that keeps or strips it."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from entrypoints.service.http.app import create_app
from tests.support.core import Core
from tests.support.http_app import BASE_URL, Readiness, bearer, make_config, services_of

ROOT = "/calendly"
Client = AsyncTestClient[Litestar]


@pytest.fixture
async def client(core: Core, readiness: Readiness) -> AsyncIterator[Client]:
    config = make_config(root_path=ROOT, public_base_url=BASE_URL + ROOT)
    app = create_app(services_of(core, readiness), config)
    async with AsyncTestClient(app=app, base_url=BASE_URL) as test_client:
        yield test_client


@pytest.mark.parametrize("prefix", [ROOT, ""])
async def test_every_route_answers_with_or_without_the_prefix(
    client: Client,
    prefix: str,
) -> None:
    assert (await client.get(prefix + "/health/live")).status_code == 200
    # A path that holds the prefix's text again is not cut twice.
    status = await client.get(prefix + "/api/calendly/connection", headers=bearer("alice"))
    assert status.status_code == 404
    assert status.json()["type"].endswith("connection-not-found")
    assert status.headers["cache-control"] == "no-store"
    assert (await client.get(prefix + "/static/oauth-popup.js")).status_code == 200


async def test_a_path_that_only_starts_like_the_prefix_is_not_cut(
    client: Client,
) -> None:
    assert (await client.get("/calendlyx/health/live")).status_code == 404


async def test_the_page_names_its_files_and_its_prefix(
    client: Client,
) -> None:
    page = (await client.get(ROOT + "/")).text

    assert '<meta name="cc-base-path" content="/calendly">' in page
    links = re.findall(r'(?:href|src)="(/[^"]*)"', page)
    assert links, page
    assert all(link.startswith(ROOT + "/static/") for link in links), links


async def test_the_binding_cookie_and_the_popup_script_carry_the_prefix(
    client: Client,
) -> None:
    started = await client.post(ROOT + "/api/calendly/connect", headers=bearer("alice"))
    cookie = started.headers["set-cookie"].lower()
    assert "path=/calendly/oauth/calendly" in cookie

    landed = await client.get(ROOT + "/oauth/calendly/callback", params={"state": "unknown"})
    assert '<script src="/calendly/static/oauth-popup.js" defer>' in landed.text
    assert "max-age=0" in landed.headers["set-cookie"].lower()
    assert "path=/calendly/oauth/calendly" in landed.headers["set-cookie"].lower()


async def test_the_openapi_document_names_the_prefix_as_its_server(
    client: Client,
) -> None:
    document = (await client.get(ROOT + "/schema/openapi.json")).json()
    assert document["servers"] == [{"url": ROOT}]


async def test_the_page_links_the_local_sandbox_only_when_there_is_one(
    core: Core, readiness: Readiness
) -> None:
    with_sandbox = make_config(dev_login_enabled=True, sandbox_url="http://127.0.0.1:8765")
    for config, expected in (
        (with_sandbox, '<meta name="cc-sandbox-url" content="http://127.0.0.1:8765">'),
        (make_config(), '<meta name="cc-sandbox-url" content="">'),
    ):
        app = create_app(services_of(core, readiness), config)
        async with AsyncTestClient(app=app, base_url=BASE_URL) as test_client:
            assert expected in (await test_client.get("/")).text
