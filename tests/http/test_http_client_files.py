"""The JS client, served as it is in clients/js, to pages of any origin."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pytest

from tests.support.http_app import Api

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "js"


@pytest.mark.parametrize(
    ("name", "kind"),
    [("calendly-connect.js", "text/javascript"), ("calendly-connect.d.ts", "typescript")],
)
async def test_the_client_files_are_served_byte_for_byte_to_any_origin(
    api: Api, name: str, kind: str
) -> None:
    response = await api.client.get(
        f"/client/v1/{name}", headers={"origin": "https://elsewhere.example"}
    )

    assert response.status_code == 200
    assert kind in response.headers["content-type"]
    assert response.content == (CLIENT / name).read_bytes()
    assert response.headers["access-control-allow-origin"] == "*"
    assert response.headers["cross-origin-resource-policy"] == "cross-origin"
    assert "max-age=3600" in response.headers["cache-control"]
    assert response.headers["etag"].startswith('"')


async def test_a_known_etag_answers_304_without_a_body(api: Api) -> None:
    first = await api.client.get("/client/v1/calendly-connect.js")
    again = await api.client.get(
        "/client/v1/calendly-connect.js", headers={"if-none-match": first.headers["etag"]}
    )
    other = await api.client.get(
        "/client/v1/calendly-connect.js", headers={"if-none-match": '"something-else"'}
    )

    assert again.status_code == 304
    assert again.content == b""
    assert other.status_code == 200


async def test_the_integrity_hash_is_the_sha384_of_the_file(api: Api) -> None:
    body = (CLIENT / "calendly-connect.js").read_bytes()
    expected = "sha384-" + base64.b64encode(hashlib.sha384(body).digest()).decode()

    listed = (await api.client.get("/client/v1/integrity")).json()
    served = await api.client.get("/client/v1/calendly-connect.js")

    assert listed["calendly-connect.js"] == expected
    assert served.headers["x-content-integrity"] == expected


@pytest.mark.parametrize("name", ["package.json", "../../README.md", "calendly-connect.mjs"])
async def test_nothing_else_is_served_from_there(api: Api, name: str) -> None:
    response = await api.client.get(f"/client/v1/{name}")
    assert response.status_code == 404


async def test_head_answers_the_headers_of_get(api: Api) -> None:
    got = await api.client.get("/client/v1/calendly-connect.js")
    headed = await api.client.head("/client/v1/calendly-connect.js")

    assert headed.status_code == 200
    assert headed.content == b""
    for name in ("etag", "content-type", "cache-control", "access-control-allow-origin"):
        assert headed.headers[name] == got.headers[name]
    assert headed.headers["content-length"] == str(len(got.content))
