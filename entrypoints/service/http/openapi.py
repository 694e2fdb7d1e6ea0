"""What the OpenAPI document says where Litestar cannot infer it from the handlers' signatures.

The handlers that read raw requests or answer more than one media type describe themselves
through these `operation_class`es, so the document matches what the service really sends
(tests/fuzz/test_openapi_fuzz.py holds the service to it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from litestar.enums import ParamType
from litestar.openapi.spec import (
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    Parameter,
    RequestBody,
    Schema,
)

HTML: Final = "text/html"
EVENT_STREAM: Final = "text/event-stream"
_TEXT: Final = Schema(type=OpenAPIType.STRING)
# Before OpenAPI 3.2, the schema of a text/event-stream describes each event.
_LIVE_EVENT: Final = Schema(
    type=OpenAPIType.OBJECT,
    properties={
        "event": Schema(
            type=OpenAPIType.STRING, enum=["ready", "meetings", "connection", "expired"]
        ),
        "data": Schema(type=OpenAPIType.STRING, description="The event's JSON document"),
        "id": Schema(type=OpenAPIType.STRING, description="Send as Last-Event-ID to resume"),
    },
    required=["event", "data"],
)


@dataclass
class WebhookOperation(Operation):
    """A delivery is read as raw bytes (the signature covers them), so its body is declared here."""

    def __post_init__(self) -> None:
        self.request_body = RequestBody(
            required=True,
            description="Calendly's delivery as sent: a JSON envelope, verified over its bytes.",
            content={"application/json": OpenAPIMediaType(schema=Schema())},
        )
        self.parameters = [
            *(self.parameters or []),
            Parameter(
                name="Calendly-Webhook-Signature",
                param_in=ParamType.HEADER,
                required=True,
                description="`t=<unix time>,v1=<hex HMAC-SHA256>`; missing or wrong: 401.",
                schema=_TEXT,
            ),
        ]


@dataclass
class PopupOperation(Operation):
    """The OAuth callback answers every outcome as the popup page, or as JSON when asked for it."""

    def __post_init__(self) -> None:
        for response in (self.responses or {}).values():
            if isinstance(response, OpenAPIResponse):
                content = response.content or {}
                content[HTML] = OpenAPIMediaType(schema=_TEXT)
                response.content = content


@dataclass
class EventStreamOperation(Operation):
    """Server-Sent Events: the success answer is a text/event-stream, not JSON."""

    def __post_init__(self) -> None:
        success = (self.responses or {}).get("200")
        if isinstance(success, OpenAPIResponse):
            success.content = {EVENT_STREAM: OpenAPIMediaType(schema=_LIVE_EVENT)}


@dataclass
class OptionalBodyOperation(Operation):
    """A JSON body that may be left out (connect, reconnect); Litestar marks every body required."""

    def __post_init__(self) -> None:
        if isinstance(self.request_body, RequestBody):
            self.request_body.required = False
