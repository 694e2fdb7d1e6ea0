"""The signed-in user's Calendly connection: connect, reconnect, disconnect, status."""

from __future__ import annotations

import structlog
from litestar import Controller, Response, delete, get, post
from litestar.di import NamedDependency
from litestar.params import JSONBody

from domain.usecases.complete_connect import CompleteConnectCommand
from domain.usecases.disconnect import DisconnectCommand
from domain.usecases.reconnect import ReconnectCommand
from domain.usecases.start_connect import StartConnectCommand
from entrypoints.service.http.binding import binding_cookie, new_binding
from entrypoints.service.http.config import HttpConfig
from entrypoints.service.http.errors import problem_specs
from entrypoints.service.http.openapi import OptionalBodyOperation
from entrypoints.service.http.schemas import (
    CompleteConnectRequest,
    ConnectCompleted,
    ConnectionResponse,
    ConnectRequest,
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
        "/connect",
        operation_id="startConnect",
        status_code=200,
        responses=problem_specs(400, 401, 503),
        operation_class=OptionalBodyOperation,
    )
    async def connect(
        self,
        services: NamedDependency[Services],
        user_id: NamedDependency[str],
        http_config: NamedDependency[HttpConfig],
        data: JSONBody[ConnectRequest | None] = None,
    ) -> Response[ConnectStarted]:
        """Start connecting Calendly: open `authorization_url` in a popup.

        Also sets the HttpOnly `cc_oauth_binding` cookie, so that a browser on this service's
        own site can finish the round trip at `/oauth/calendly/callback` (within
        `expires_at`). A page on another origin sends `completion_challenge` instead: the
        popup then hands it Calendly's code to complete with `POST connect/complete`.
        """
        binding = new_binding()
        started = await services.start_connect(
            StartConnectCommand(
                user_id=user_id,
                browser_binding=binding,
                completion_challenge=data.completion_challenge if data else None,
            )
        )
        return Response(
            ConnectStarted(
                authorization_url=started.authorization_url,
                state=started.state,
                expires_at=started.expires_at,
            ),
            cookies=[binding_cookie(binding, http_config)],
        )

    @post(
        "/connect/complete",
        operation_id="completeConnectHandOff",
        status_code=200,
        responses=problem_specs(400, 401, 409, 502, 503),
    )
    async def complete(
        self,
        services: NamedDependency[Services],
        user_id: NamedDependency[str],
        data: JSONBody[CompleteConnectRequest],
    ) -> ConnectCompleted:
        """Complete a round trip whose popup handed this page Calendly's `code`.

        Only the user who started it, with the verifier whose challenge went with the start,
        can complete it: a `state` of another user, a wrong verifier, an expired or used
        `state` or a refused code answer 400; an account connected to another user 409.
        """
        result = await services.complete_connect(
            CompleteConnectCommand(
                state=data.state,
                code=data.code,
                user_id=user_id,
                completion_verifier=data.completion_verifier,
            )
        )
        return ConnectCompleted(
            connection=ConnectionResponse.of(result.connection),
            switched_account=result.switched_account,
        )

    @post(
        "/reconnect",
        operation_id="reconnect",
        status_code=200,
        responses=problem_specs(400, 401, 409, 502, 503),
        operation_class=OptionalBodyOperation,
    )
    async def reconnect(
        self,
        services: NamedDependency[Services],
        user_id: NamedDependency[str],
        http_config: NamedDependency[HttpConfig],
        data: JSONBody[ConnectRequest | None] = None,
    ) -> Response[ReconnectResponse]:
        """Mend the connection with the stored grant; answer an authorization URL if it is gone.

        `outcome` is `reconnected` (with the connection) or `authorization_required` (with an
        `authorization_url` to open in a popup, as for connect: the binding cookie is set, and
        `completion_challenge` works as there).
        """
        binding = new_binding()
        result = await services.reconnect(
            ReconnectCommand(
                user_id=user_id,
                browser_binding=binding,
                completion_challenge=data.completion_challenge if data else None,
            )
        )
        cookies = (
            [binding_cookie(binding, http_config)]
            if result.outcome == "authorization_required"
            else []
        )
        return Response(
            ReconnectResponse(
                outcome=result.outcome,
                connection=ConnectionResponse.of(result.connection) if result.connection else None,
                authorization_url=result.authorization_url,
                state=result.state,
                expires_at=result.expires_at,
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
        return DisconnectResponse.of(result)

    @get("/connection", operation_id="getConnection", responses=problem_specs(401, 404, 503))
    async def status(
        self, services: NamedDependency[Services], user_id: NamedDependency[str]
    ) -> ConnectionResponse:
        """The connection's status (never any token); 404 when the user never connected."""
        return ConnectionResponse.of(await services.connection_status(user_id))
