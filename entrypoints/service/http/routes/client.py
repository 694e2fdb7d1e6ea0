"""The drop-in JS client (clients/js), served as it is in the repository, for any origin."""

from __future__ import annotations

import base64
import hashlib
from functools import cache
from importlib.resources import files
from typing import Annotated, Final

import msgspec
from litestar import MediaType, Response, get, head
from litestar.datastructures import CacheControlHeader
from litestar.exceptions import NotFoundException
from litestar.params import FromPath, HeaderParameter

# js_client/ is a link to clients/js in a checkout; an installed wheel carries the two files.
CLIENT_DIR: Final = files("entrypoints.service.http") / "js_client"
# The files of version 1 of the client, and what each is served as.
CLIENT_FILES: Final = {
    "calendly-connect.js": "text/javascript; charset=utf-8",
    "calendly-connect.d.ts": "application/typescript; charset=utf-8",
}
# A page pins the exact file with Subresource Integrity; the URL is stable, so browsers and
# CDNs revalidate after an hour and the ETag makes that cheap.
_CACHE = CacheControlHeader(public=True, max_age=3600)


class ClientFile(msgspec.Struct, frozen=True):
    body: bytes
    etag: str
    integrity: str


@cache
def client_file(name: str) -> ClientFile:
    body = (CLIENT_DIR / name).read_bytes()
    digest = hashlib.sha384(body).digest()
    return ClientFile(
        body=body,
        etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
        integrity="sha384-" + base64.b64encode(digest).decode("ascii"),
    )


@get(
    "/client/v1/{name:str}",
    operation_id="jsClient",
    tags=["client"],
    media_type=MediaType.TEXT,
    include_in_schema=False,
)
async def js_client(
    name: FromPath[str],
    if_none_match: Annotated[str | None, HeaderParameter(name="If-None-Match")] = None,
) -> Response[bytes]:
    """`calendly-connect.js` (an ES module) and `calendly-connect.d.ts`, for any origin."""
    return _answer(name, if_none_match, head=False)


@head("/client/v1/{name:str}", operation_id="jsClientHead", include_in_schema=False)
async def js_client_head(
    name: FromPath[str],
    if_none_match: Annotated[str | None, HeaderParameter(name="If-None-Match")] = None,
) -> Response[None]:
    """The headers of GET (CDNs and `curl -I` ask this way)."""
    answer = _answer(name, if_none_match, head=True)
    return Response(
        None,
        status_code=answer.status_code,
        media_type=answer.media_type,
        headers=dict(answer.headers),
    )


def _answer(name: str, if_none_match: str | None, *, head: bool) -> Response[bytes]:
    media_type = CLIENT_FILES.get(name)
    if media_type is None:
        raise NotFoundException(
            detail=f"there is no client file {name!r}; the client is calendly-connect.js"
        )
    found = client_file(name)
    headers = {
        "ETag": found.etag,
        # Module scripts load in CORS mode; the file is public and needs no credentials.
        "Access-Control-Allow-Origin": "*",
        "Cross-Origin-Resource-Policy": "cross-origin",
        "X-Content-Integrity": found.integrity,
        "Cache-Control": _CACHE.to_header(),
    }
    fresh = if_none_match is not None and found.etag in (
        tag.strip() for tag in if_none_match.split(",")
    )
    if head:
        headers["Content-Length"] = str(len(found.body))
    return Response(
        b"" if fresh or head else found.body,
        status_code=304 if fresh else 200,
        media_type=media_type,
        headers=headers,
    )


@get("/client/v1/integrity", operation_id="jsClientIntegrity", tags=["client"])
async def js_client_integrity() -> dict[str, str]:
    """The Subresource Integrity hash of each client file (for `<script integrity=…>`)."""
    return {name: client_file(name).integrity for name in CLIENT_FILES}
