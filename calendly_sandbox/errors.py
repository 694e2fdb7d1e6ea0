"""Calendly's two error shapes: the API envelope and RFC 6749 OAuth errors."""

from __future__ import annotations

from typing import Any

import msgspec
from aiohttp import web

API_TITLES = {
    400: ("Invalid Argument", "The supplied parameters are invalid."),
    401: ("Unauthenticated", "The access token is invalid"),
    403: ("Permission Denied", "You do not have permission to access this resource."),
    404: ("Resource Not Found", "The server could not find the requested resource."),
    405: ("Method Not Allowed", "The method is not allowed for the requested resource."),
    409: ("Already Exists", "The resource already exists."),
    413: ("Payload Too Large", "The request body is too large."),
    415: ("Unsupported Media Type", "The request body must be JSON."),
    429: ("Too Many Requests", "You have exceeded the rate limit. Please wait before retrying."),
    500: (
        "Internal Server Error",
        "The server encountered an unexpected condition that prevented it from fulfilling"
        " the request.",
    ),
    502: ("Bad Gateway", "The server received an invalid response from an upstream server."),
    503: ("Service Unavailable", "The service is temporarily unavailable."),
}

PLAN_UPGRADE_MESSAGE = "Please upgrade your Calendly account to Standard"
NO_PERMISSION_MESSAGE = "You do not have permission"
HOOK_EXISTS_MESSAGE = "Hook with this url already exists"


class ApiError(Exception):
    """An error answered in Calendly's API envelope: `{title, message, details?}`."""

    def __init__(
        self,
        status: int,
        message: str | None = None,
        details: list[dict[str, str]] | None = None,
        title: str | None = None,
        raw_body: dict[str, Any] | None = None,
    ) -> None:
        default_title, default_message = API_TITLES.get(status, ("Error", "Request failed."))
        self.status = status
        self.title = title or default_title
        self.message = message or default_message
        self.details = details
        self.raw_body = raw_body
        super().__init__(f"{status} {self.title}: {self.message}")

    def body(self) -> dict[str, Any]:
        if self.raw_body is not None:
            return dict(self.raw_body)
        body: dict[str, Any] = {"title": self.title, "message": self.message}
        if self.details:
            body["details"] = self.details
        return body

    def response(self) -> web.Response:
        return json_response(self.body(), status=self.status)


def invalid_argument(parameter: str, message: str) -> ApiError:
    return ApiError(400, details=[{"parameter": parameter, "message": message}])


class OAuthError(Exception):
    """An RFC 6749 error from the token, revoke or introspect endpoints."""

    def __init__(self, status: int, error: str, description: str) -> None:
        self.status = status
        self.error = error
        self.description = description
        super().__init__(f"{status} {error}: {description}")

    def response(self) -> web.Response:
        headers = {"WWW-Authenticate": 'Basic realm="oauth"'} if self.status == 401 else None
        return json_response(
            {"error": self.error, "error_description": self.description},
            status=self.status,
            headers=headers,
        )


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(body),
        status=status,
        content_type="application/json",
        charset="utf-8",
        headers=headers,
    )
