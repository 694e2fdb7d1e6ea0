"""The signed-in user's Calendly connection: connect, reconnect, disconnect, status."""

from __future__ import annotations

import structlog
from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency

from domain.usecases.disconnect import DisconnectCommand
from domain.usecases.reconnect import ReconnectCommand
from domain.usecases.start_connect import StartConnectCommand
from entrypoints.service.http.binding import binding_cookie, new_binding
from entrypoints.service.http.config import HttpConfig
from entrypoints.service.http.errors import problem_specs
from entrypoints.service.http.schemas import (
    ConnectionResponse,
    ConnectStarted,
    DisconnectResponse,
    ReconnectResponse,
)
from entrypoints.services import Services

log = structlog.get_logger(__name__)


class CalendlyConnectionController(Controller):
    path = "/api/calendly"
    tags = ("connection",)

    @post(
        "/connect", operation_id="startConnect", status_code=200, responses=problem_specs(401, 503)
    )
    async def connect(
        self,
        services: NamedDependency[Services],
        user_id: NamedDependency[str],
        http_config: NamedDependency[HttpConfig],
    ) -> Response[ConnectStarted]:
        """Start connecting Calendly: open `authorization_url` in a popup.

        Also sets the HttpOnly `cc_oauth_binding` cookie, so that only this browser can
        finish the round trip at `/oauth/calendly/callback` (within `expires_at`).
        """
        binding = new_binding()
        started = await services.start_connect(
            StartConnectCommand(user_id=user_id, browser_binding=binding)
        )
        return Response(
            ConnectStarted(
                authorization_url=started.authorization_url,
                state=started.state,
                expires_at=started.expires_at,
            ),
            cookies=[binding_cookie(binding, secure=http_config.secure_cookies)],
        )

    @post(
        "/reconnect",
        operation_id="reconnect",
        status_code=200,
        responses=problem_specs(401, 409, 502, 503),
    )
    async def reconnect(
        self,
        services: NamedDependency[Services],
        user_id: NamedDependency[str],
        http_config: NamedDependency[HttpConfig],
    ) -> Response[ReconnectResponse]:
        """Mend the connection with the stored grant; answer an authorization URL if it is gone.

        `outcome` is `reconnected` (with the connection) or `authorization_required` (with an
        `authorization_url` to open in a popup, as for connect; the binding cookie is set).
        """
        binding = new_binding()
        result = await services.reconnect(
            ReconnectCommand(user_id=user_id, browser_binding=binding)
        )
        cookies = (
            [binding_cookie(binding, secure=http_config.secure_cookies)]
            if result.outcome == "authorization_required"
            else []
        )
        return Response(
            ReconnectResponse(
                outcome=result.outcome,
                connection=ConnectionResponse.of(result.connection) if result.connection else None,
                authorization_url=result.authorization_url,
            ),
            cookies=cookies,
        )

    @delete(
        "/connection",
        operation_id="disconnect",
        status_code=200,
        responses=problem_specs(401, 502, 503),
    )
    async def disconnect(
        self, services: NamedDependency[Services], user_id: NamedDependency[str]
    ) -> DisconnectResponse:
        """Disconnect Calendly: delete the webhook subscription, revoke the grant, wipe tokens.

        Meeting history is kept. Disconnecting twice answers `already_disconnected`.
        """
        result = await services.disconnect(DisconnectCommand(user_id=user_id))
        if result.revoke_failed:
            log.warning("calendly.revoke_failed", detail="local tokens were wiped anyway")
        return DisconnectResponse(
            connection=ConnectionResponse.of(result.connection) if result.connection else None,
            subscription_deleted=result.subscription_deleted,
            revoke_failed=result.revoke_failed,
            already_disconnected=result.already_disconnected,
        )

    @get("/connection", operation_id="getConnection", responses=problem_specs(401, 404, 503))
    async def status(
        self, services: NamedDependency[Services], user_id: NamedDependency[str]
    ) -> ConnectionResponse:
        """The connection's status (never any token); 404 when the user never connected."""
        return ConnectionResponse.of(await services.connection_status(user_id))
