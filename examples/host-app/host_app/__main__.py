"""`python -m host_app`: serve the example host app until Ctrl-C (or SIGTERM)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence

from aiohttp import web

from .config import configure, parse_options
from .keys import SigningKeys
from .sessions import SessionCookies
from .web import JWKS_PATH, WEBHOOK_PATH, create_app


def open_socket(host: str, port: int, fd: int | None) -> socket.socket:
    if fd is not None:
        # A socket a launcher opened (and listens on) for us: it knew our port before we started.
        return socket.socket(fileno=fd)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def main(argv: Sequence[str], environ: Mapping[str, str]) -> int:
    logging.basicConfig(level=logging.INFO, format="host-app  %(levelname)-7s %(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    options = parse_options(argv, environ)
    try:
        sock = open_socket(options.host, options.port, options.fd)
    except OSError as exc:
        print(f"error: cannot listen on {options.host}:{options.port} ({exc})", file=sys.stderr)
        return 1
    config = configure(options, sock.getsockname()[1])
    config.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    keys = SigningKeys.load_or_create(config.data_dir / "keys")
    sessions = SessionCookies.load_or_create(config.data_dir / "session.key")
    log = logging.getLogger("host_app")
    log.info("open %s (calendly-connect at %s)", config.public_url, config.service_url)
    log.info("JWKS %s%s, kid %s", config.public_url, JWKS_PATH, keys.current.kid)
    log.info("tokens: aud=%r iss=%r", config.audience, config.issuer)
    if not config.webhook_secrets:
        log.warning(
            "HOST_WEBHOOK_SECRET is not set: every notification to %s is refused", WEBHOOK_PATH
        )
    # run_app stops on SIGINT and SIGTERM, closing the server cleanly.
    web.run_app(create_app(config, keys, sessions), sock=sock, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:], os.environ))
