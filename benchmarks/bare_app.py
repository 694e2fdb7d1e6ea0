"""The reference for benchmark 1: a bare Litestar endpoint that accepts a delivery's body and
answers as the service does, under the same server and settings (`entrypoints.service.server`), and
nothing else: no signature, no database, no logging. Run as `python -m benchmarks.bare_app --fd N`.
"""

from __future__ import annotations

import argparse
import socket
from typing import Any

import uvicorn
from litestar import Litestar, Request, get, post

from entrypoints.service.event_loop import run_fast
from entrypoints.service.server import UVICORN_OPTIONS


@post("/webhooks/calendly/{token:str}", status_code=200)
async def receive(request: Request[Any, Any, Any], token: str) -> dict[str, str]:
    await request.body()
    return {"outcome": "applied"}


@get("/health/ready")
async def ready() -> dict[str, str]:
    return {"status": "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fd", type=int, required=True, help="an inherited listening socket")
    args = parser.parse_args()
    app = Litestar(route_handlers=[receive, ready], logging_config=None, openapi_config=None)
    server = uvicorn.Server(uvicorn.Config(app, **UVICORN_OPTIONS))
    run_fast(server.serve(sockets=[socket.socket(fileno=args.fd)]))


if __name__ == "__main__":
    main()
