"""The HTTP app in-process over the core wired to fakes: requests in, use cases, responses out."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient

from entrypoints.service.http.app import create_app
from entrypoints.service.http.config import HttpConfig
from tests.support.core import Core, build_core
from tests.support.http_app import BASE_URL, Api, Readiness, make_config, services_of


@pytest.fixture
def core() -> Core:
    return build_core()


@pytest.fixture
def readiness() -> Readiness:
    return Readiness()


@pytest.fixture
def config() -> HttpConfig:
    return make_config()


@pytest.fixture
def app(core: Core, readiness: Readiness, config: HttpConfig) -> Litestar:
    return create_app(services_of(core, readiness), config)


@pytest.fixture
async def api(
    core: Core, readiness: Readiness, config: HttpConfig, app: Litestar
) -> AsyncIterator[Api]:
    async with AsyncTestClient(app=app, base_url=BASE_URL) as client:
        yield Api(core=core, client=client, readiness=readiness, config=config)
