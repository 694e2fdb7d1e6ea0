"""Where Calendly sends the popup back: finish connecting, then tell the opener and close."""

from __future__ import annotations

from typing import Annotated, Any

from litestar import MediaType, Request, Response, get
from litestar.di import NamedDependency, Provide
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, QueryParameter

from domain.errors import AuthorizationStateInvalid
from domain.usecases.complete_connect import (
    CompleteConnectCommand,
    CompleteConnectResult,
    HandOff,
)
from entrypoints.service.http.auth import optional_user
from entrypoints.service.http.binding import BINDING_COOKIE, cleared_binding_cookie
from entrypoints.service.http.config import HttpConfig
from entrypoints.service.http.context import annotate_request, request_id_of
from entrypoints.service.http.errors import Answer, ErrorTable, problem_response, problem_specs
from entrypoints.service.http.openapi import PopupOperation
from entrypoints.service.http.popup import POPUP_SCRIPT, render_popup_page
from entrypoints.service.http.schemas import ConnectCompleted, ConnectionResponse, PopupMessage
from entrypoints.services import Services

_OFFERED = [MediaType.HTML.value, MediaType.JSON.value]


@get(
    "/oauth/calendly/callback",
    operation_id="completeConnect",
    tags=["connection"],
    media_type=MediaType.HTML,
    # Every answer is the popup page (text/html) or, when asked for, JSON (see PopupOperation).
    responses={
        200: ResponseSpec(
            data_container=ConnectCompleted,
            description="Connected",
            media_type=MediaType.JSON,
            generate_examples=False,
        ),
        **problem_specs(400, 401, 409, 502, 503),
    },
    operation_class=PopupOperation,
    dependencies={"caller": Provide(optional_user)},
)
async def oauth_callback(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    http_config: NamedDependency[HttpConfig],
    errors: NamedDependency[ErrorTable],
    caller: NamedDependency[str | None],
    # `state` is a reserved name in Litestar handlers, hence the alias.
    oauth_state: Annotated[str | None, QueryParameter(name="state")] = None,
    code: FromQuery[str | None] = None,
    error: FromQuery[str | None] = None,
    error_description: FromQuery[str | None] = None,
) -> Response[Any]:
    """Finish connecting Calendly (Calendly's redirect target; no bearer token needed).

    The browser that started connecting is recognised by its `cc_oauth_binding` cookie (or
    the caller by a bearer token): the round trip is completed here. Without either, a round
    trip started with a `completion_challenge` is handed to the page that started it: the
    answer carries `stage: "authorized"` and `code`, and that page completes it with
    `POST /api/calendly/connect/complete`. Answers an HTML page that posts
    `{type: "calendly-connect", state, ok, connection | stage+code | error}` to the opener
    and closes, or JSON when the request prefers `application/json`. An unknown, used,
    expired or foreign `state`, a denied consent or a replayed code answer 400; an account
    connected to another user answers 409.
    """
    result: CompleteConnectResult | HandOff | Answer
    try:
        if not oauth_state:
            raise AuthorizationStateInvalid("the state parameter is missing")
        result = await services.complete_connect.at_callback(
            CompleteConnectCommand(
                state=oauth_state,
                code=code or None,
                error=error or None,
                error_description=error_description or None,
                user_id=caller,
                browser_binding=request.cookies.get(BINDING_COOKIE) or None,
            )
        )
    except Exception as exc:
        answer = errors.expected_answer(exc, request_id_of(request.scope))
        if answer is None:
            raise
        annotate_request(request.scope, problem=answer.kind.slug)
        result = answer
    else:
        outcome = "handed_off" if isinstance(result, HandOff) else "connected"
        annotate_request(request.scope, outcome=outcome)
    wants_json = request.accept.best_match(_OFFERED, default=MediaType.HTML.value)
    if wants_json == MediaType.JSON.value:
        response = _json(result, oauth_state)
    else:
        response = _page(result, oauth_state, http_config)
    # Never cache a page that carries a code; never send the code on as a Referer.
    response.headers["Cache-Control"] = "no-store"
    response.headers["Referrer-Policy"] = "no-referrer"
    if not isinstance(result, HandOff):
        response.set_cookie(cleared_binding_cookie(http_config))
    return response


def _json(result: CompleteConnectResult | HandOff | Answer, state: str | None) -> Response[Any]:
    if isinstance(result, Answer):
        return problem_response(result)
    if isinstance(result, HandOff):
        return Response(_message(result, state), media_type=MediaType.JSON)
    return Response(
        ConnectCompleted(
            connection=ConnectionResponse.of(result.connection),
            switched_account=result.switched_account,
        ),
        media_type=MediaType.JSON,
    )


def _message(result: CompleteConnectResult | HandOff | Answer, state: str | None) -> PopupMessage:
    if isinstance(result, Answer):
        return PopupMessage(type="calendly-connect", ok=False, state=state, error=result.problem)
    if isinstance(result, HandOff):
        return PopupMessage(
            type="calendly-connect", ok=True, state=state, stage="authorized", code=result.code
        )
    connection = ConnectionResponse.of(result.connection)
    return PopupMessage(type="calendly-connect", ok=True, state=state, connection=connection)


def _page(
    result: CompleteConnectResult | HandOff | Answer, state: str | None, config: HttpConfig
) -> Response[Any]:
    status, headers = (
        (result.problem.status, dict(result.headers)) if isinstance(result, Answer) else (200, {})
    )
    page = render_popup_page(
        _message(result, state),
        target_origins=config.app_origins,
        return_url=config.return_url,
        script=config.path(POPUP_SCRIPT),
    )
    return Response(page, status_code=status, media_type=MediaType.HTML, headers=headers)
