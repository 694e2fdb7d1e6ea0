"""The client's HTTP Basic credentials are a secret of their own (found by test_canaries.py).

base64("<client id>:<client secret>") contains neither value as text, so a Calendly answer
that echoed the Authorization header's credentials without the word "Basic" went to the log
(and could have gone anywhere the error body goes) in clear.
"""

from __future__ import annotations

import base64
import io

import aiohttp
import pytest
import structlog
from aiohttp import web

from adapters.calendly import AiohttpCalendlyApi
from adapters.calendly.transport import basic_credentials
from domain.errors import CalendlyError
from domain.secret import Secret
from entrypoints.settings import load_settings
from tests.support.environment import full_env

CLIENT_ID = "client-id"
SECRET = "client/secret+with=odd&characters"


def test_the_basic_credentials_are_scrubbed_from_every_log_line() -> None:
    settings = load_settings(
        {
            **full_env(),
            "CALENDLY_OAUTH_CLIENT_ID": CLIENT_ID,
            "CALENDLY_OAUTH_CLIENT_SECRET": SECRET,
        }
    )
    credentials = base64.b64encode(f"{CLIENT_ID}:{SECRET}".encode()).decode()

    assert credentials in settings.secret_values()
    assert credentials == basic_credentials(CLIENT_ID, Secret(SECRET))


async def test_an_echoed_authorization_header_never_leaves_the_adapter() -> None:
    credentials = basic_credentials(CLIENT_ID, Secret(SECRET))

    async def token(request: web.Request) -> web.Response:
        echoed = request.headers["Authorization"].removeprefix("Basic ")
        return web.json_response(
            {"error": "invalid_client", "error_description": f"who is {echoed}?"}, status=401
        )

    app = web.Application()
    app.router.add_post("/oauth/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    logs = io.StringIO()
    structlog_config = structlog.get_config()
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(logs))
    try:
        async with aiohttp.ClientSession() as session:
            api = AiohttpCalendlyApi(
                session,
                client_id=CLIENT_ID,
                client_secret=Secret(SECRET),
                auth_base_url=f"http://{host}:{port}",
                api_base_url=f"http://{host}:{port}",
            )
            with pytest.raises(CalendlyError) as raised:
                await api.refresh(Secret("a-refresh-token"))
    finally:
        structlog.configure(**structlog_config)
        await runner.cleanup()

    assert credentials not in repr(raised.value.body)
    assert credentials not in str(raised.value)
    # Before the redactor (entrypoints.logging) runs, the adapter itself already removed it.
    assert credentials not in logs.getvalue()
    assert "calendly.error_response" in logs.getvalue()
