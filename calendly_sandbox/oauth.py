"""Calendly's OAuth server: authorize (consent page), token, revoke, introspect."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from urllib.parse import urlencode

from aiohttp import web
from multidict import MultiDict, MultiDictProxy

from .config import OAuthClient
from .errors import OAuthError, json_response
from .model import Plan, User
from .pages import consent_page, error_page
from .state import RATE_HEADERS, SANDBOX, SANDBOX_USER, Sandbox

routes = web.RouteTableDef()


def redirect_with(redirect_uri: str, params: dict[str, str]) -> web.HTTPFound:
    joiner = "&" if "?" in redirect_uri else "?"
    return web.HTTPFound(f"{redirect_uri}{joiner}{urlencode(params)}")


class AuthorizeRequest:
    """The validated parameters of an authorization request."""

    def __init__(self, sandbox: Sandbox, params: Mapping[str, str]) -> None:
        self.params = params
        client = sandbox.world.client(params.get("client_id", ""))
        if client is None:
            raise error_page(400, "Unknown client", "No OAuth application has this client_id.")
        redirect_uri = params.get("redirect_uri", "")
        if redirect_uri not in client.redirect_uris:
            # Never redirect to an unregistered address: show the error here instead.
            raise error_page(
                400,
                "Redirect URI mismatch",
                "The redirect_uri does not exactly match one registered for this application.",
            )
        self.client: OAuthClient = client
        self.redirect_uri = redirect_uri
        self.state = params.get("state")
        if params.get("response_type") != "code":
            raise self.fail("unsupported_response_type", "response_type must be code")
        challenge = params.get("code_challenge") or None
        method = params.get("code_challenge_method") or None
        if (challenge is None) != (method is None):
            raise self.fail(
                "invalid_request", "code_challenge and code_challenge_method go together"
            )
        if method is not None and method != "S256":
            raise self.fail("invalid_request", "code_challenge_method must be S256")
        if challenge is not None and not 43 <= len(challenge) <= 128:
            raise self.fail("invalid_request", "code_challenge has the wrong length")
        self.code_challenge = challenge

    def fail(self, error: str, description: str) -> web.HTTPFound:
        params = {"error": error, "error_description": description}
        if self.state is not None:
            params["state"] = self.state
        return redirect_with(self.redirect_uri, params)

    def approve(self, sandbox: Sandbox, user: User) -> web.HTTPFound:
        code = sandbox.world.issue_code(self.client, self.redirect_uri, user, self.code_challenge)
        params = {"code": code}
        if self.state is not None:
            params["state"] = self.state
        return redirect_with(self.redirect_uri, params)

    def deny(self) -> web.HTTPFound:
        return self.fail("access_denied", "The user denied the request")

    def hidden_fields(self) -> dict[str, str]:
        keep = (
            "client_id",
            "redirect_uri",
            "response_type",
            "state",
            "code_challenge",
            "code_challenge_method",
            "scope",
        )
        return {k: self.params[k] for k in keep if k in self.params}


def parse_plan(raw: str | None) -> Plan:
    if raw in ("free", "standard", "teams", "enterprise"):
        return raw  # type: ignore[return-value]  # checked just above
    return "standard"


@routes.get("/oauth/authorize")
async def authorize(request: web.Request) -> web.StreamResponse:
    """Show the consent page, or approve/deny at once with the `sandbox_login` test flag."""
    sandbox = request.app[SANDBOX]
    req = AuthorizeRequest(sandbox, request.query)
    login = request.query.get("sandbox_login")
    if login is None:
        return consent_page(req.client.client_id, req.hidden_fields(), sandbox.world)
    if request.query.get("sandbox_decision") == "deny":
        raise req.deny()
    user = sandbox.world.user_by_email(login) or sandbox.world.create_user(
        name=request.query.get("sandbox_name") or login.split("@")[0].replace(".", " ").title(),
        email=login,
        plan=parse_plan(request.query.get("sandbox_plan")),
    )
    raise req.approve(sandbox, user)


@routes.post("/oauth/authorize")
async def authorize_decision(request: web.Request) -> web.StreamResponse:
    """The consent form's answer: approve as a chosen or new user, or deny."""
    sandbox = request.app[SANDBOX]
    form = await request.post()
    params = MultiDictProxy(MultiDict({k: v for k, v in form.items() if isinstance(v, str)}))
    req = AuthorizeRequest(sandbox, params)
    if params.get("decision") != "approve":
        raise req.deny()
    user_id = params.get("user_id", "")
    if user_id == "new":
        name = params.get("new_name", "").strip()
        email = params.get("new_email", "").strip()
        if not name or "@" not in email:
            return consent_page(
                req.client.client_id,
                req.hidden_fields(),
                sandbox.world,
                problem="A new user needs a name and a valid email address.",
                new_user={k: params.get(k, "") for k in ("new_name", "new_email", "new_plan")},
            )
        existing = sandbox.world.user_by_email(email)
        user = existing or sandbox.world.create_user(
            name=name, email=email, plan=parse_plan(params.get("new_plan"))
        )
    else:
        found = sandbox.world.users.get(user_id)
        if found is None:
            return consent_page(
                req.client.client_id,
                req.hidden_fields(),
                sandbox.world,
                problem="Pick a Calendly user, or create one.",
            )
        user = found
    raise req.approve(sandbox, user)


def client_credentials(request: web.Request, form: MultiDictProxy[str]) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic ":
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise OAuthError(401, "invalid_client", "Client authentication failed.") from None
        client_id, sep, secret = decoded.partition(":")
        if not sep:
            raise OAuthError(401, "invalid_client", "Client authentication failed.")
        return client_id, secret
    if "client_id" in form and "client_secret" in form:
        return form["client_id"], form["client_secret"]
    return None


async def oauth_form(request: web.Request) -> tuple[OAuthClient, MultiDictProxy[str]]:
    if request.content_type != "application/x-www-form-urlencoded":
        raise OAuthError(
            400, "invalid_request", "The body must be application/x-www-form-urlencoded."
        )
    raw = await request.post()
    form = MultiDictProxy(MultiDict({k: v for k, v in raw.items() if isinstance(v, str)}))
    creds = client_credentials(request, form)
    if creds is None:
        raise OAuthError(401, "invalid_client", "Client authentication failed.")
    client = request.app[SANDBOX].world.authenticate_client(*creds)
    return client, form


@routes.post("/oauth/token")
async def token(request: web.Request) -> web.StreamResponse:
    """Exchange an authorization code or a (single-use, rotating) refresh token for tokens."""
    sandbox = request.app[SANDBOX]
    world = sandbox.world
    client, form = await oauth_form(request)
    grant_type = form.get("grant_type")
    if grant_type == "authorization_code":
        code = form.get("code")
        if not code:
            raise OAuthError(400, "invalid_request", "The code parameter is missing.")
        user_id = world.user_for_code(code)
    elif grant_type == "refresh_token":
        refresh_token = form.get("refresh_token")
        if not refresh_token:
            raise OAuthError(400, "invalid_request", "The refresh_token parameter is missing.")
        user_id = world.user_for_refresh(refresh_token)
    elif not grant_type:
        raise OAuthError(400, "invalid_request", "The grant_type parameter is missing.")
    else:
        raise OAuthError(400, "unsupported_grant_type", "The grant type is not supported.")

    if user_id is not None:
        request[SANDBOX_USER] = user_id
        settings = world.settings
        allowed, remaining, reset = sandbox.limiter.hit(
            f"token:{user_id}", settings.token_requests_per_minute, 60, world.clock.now()
        )
        request[RATE_HEADERS] = {
            "X-RateLimit-Limit": str(settings.token_requests_per_minute),
            "X-RateLimit-Remaining": str(remaining),
            "X-RateLimit-Reset": str(reset),
        }
        if not allowed:
            raise OAuthError(429, "too_many_requests", "Too many token requests for this user.")

    if grant_type == "authorization_code":
        grant = world.redeem_code(
            client, form["code"], form.get("redirect_uri"), form.get("code_verifier")
        )
    else:
        grant = world.refresh(client, form["refresh_token"])
    return json_response(world.token_response(grant), headers={"Cache-Control": "no-store"})


@routes.post("/oauth/revoke")
async def revoke(request: web.Request) -> web.StreamResponse:
    """Revoke an access or refresh token (and the pair it belongs to)."""
    client, form = await oauth_form(request)
    token_value = form.get("token")
    if not token_value:
        raise OAuthError(400, "invalid_request", "The token parameter is missing.")
    request.app[SANDBOX].world.revoke(client, token_value)
    return json_response({})


@routes.post("/oauth/introspect")
async def introspect(request: web.Request) -> web.StreamResponse:
    """Say whether a token is active, and whose it is."""
    client, form = await oauth_form(request)
    token_value = form.get("token")
    if not token_value:
        raise OAuthError(400, "invalid_request", "The token parameter is missing.")
    return json_response(request.app[SANDBOX].world.introspect(client, token_value))
