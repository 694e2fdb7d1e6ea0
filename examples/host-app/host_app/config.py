"""The example's settings: command-line options, each with an environment variable behind it."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

HERE: Final = Path(__file__).resolve().parent
DEFAULT_DATA_DIR: Final = HERE.parent / ".data"
DEFAULT_PORT: Final = 8090
DEFAULT_SERVICE_URL: Final = "http://127.0.0.1:8000"
# calendly-connect's own default for JWT_AUDIENCE.
DEFAULT_AUDIENCE: Final = "authenticated"


@dataclass(frozen=True)
class Options:
    """What the command line (and the environment) asked for, before the socket is open."""

    host: str
    port: int
    fd: int | None
    public_url: str | None
    service_url: str
    audience: str
    issuer: str | None
    webhook_secrets: tuple[str, ...]
    data_dir: Path


@dataclass(frozen=True)
class Config:
    """Everything the app needs once it knows its own port."""

    public_url: str  # where browsers open the app: its origin (and the tokens' default issuer)
    service_url: str  # calendly-connect's base URL, as browsers reach it (may have a path)
    audience: str
    issuer: str
    webhook_secrets: tuple[str, ...]
    data_dir: Path

    @property
    def service_origin(self) -> str:
        return origin_of(self.service_url)

    @property
    def secure_cookies(self) -> bool:
        return self.public_url.startswith("https://")


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _http_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query:
        raise argparse.ArgumentTypeError(f"{text!r} is not an http(s) URL without a query")
    return text.strip().rstrip("/")


def parse_options(argv: Sequence[str], environ: Mapping[str, str]) -> Options:
    def env(name: str, default: str | None = None) -> str | None:
        value = environ.get(name, "").strip()
        return value or default

    parser = argparse.ArgumentParser(
        prog="python -m host_app",
        description="An example host app: its users connect Calendly through calendly-connect.",
    )
    parser.add_argument(
        "--host", default=env("EXAMPLE_HOST", "127.0.0.1"), help="address to listen on"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=int(env("EXAMPLE_PORT", str(DEFAULT_PORT)) or DEFAULT_PORT),
        help="port to listen on (0: a free one); EXAMPLE_PORT",
    )
    parser.add_argument(
        "--fd", type=int, default=None, help="serve on this already listening socket instead"
    )
    parser.add_argument(
        "--public-url",
        type=_http_url,
        default=env("EXAMPLE_PUBLIC_URL"),
        help="where browsers open this app (default http://localhost:<port>); EXAMPLE_PUBLIC_URL",
    )
    parser.add_argument(
        "--service-url",
        type=_http_url,
        default=env("CALENDLY_CONNECT_URL", DEFAULT_SERVICE_URL),
        help="calendly-connect's base URL as browsers reach it; CALENDLY_CONNECT_URL",
    )
    parser.add_argument(
        "--audience",
        default=env("JWT_AUDIENCE", DEFAULT_AUDIENCE),
        help="the tokens' aud: the service's JWT_AUDIENCE",
    )
    parser.add_argument(
        "--issuer",
        default=env("JWT_ISSUER"),
        help="the tokens' iss: the service's JWT_ISSUER (default: the public URL)",
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(env("EXAMPLE_DATA_DIR") or DEFAULT_DATA_DIR),
        help="where the signing keys and the session key are kept; EXAMPLE_DATA_DIR",
    )
    args = parser.parse_args(list(argv))
    # Only from the environment: a secret on a command line shows in `ps`.
    secrets = tuple(s.strip() for s in (env("HOST_WEBHOOK_SECRET") or "").split(",") if s.strip())
    return Options(
        host=args.host,
        port=args.port,
        fd=args.fd,
        public_url=args.public_url,
        service_url=args.service_url,
        audience=args.audience,
        issuer=args.issuer,
        webhook_secrets=secrets,
        data_dir=args.data_dir,
    )


def configure(options: Options, port: int) -> Config:
    """The settings, once the socket is open on `port`."""
    public_url = options.public_url or f"http://localhost:{port}"
    return Config(
        public_url=public_url,
        service_url=options.service_url,
        audience=options.audience,
        issuer=options.issuer or origin_of(public_url),
        webhook_secrets=options.webhook_secrets,
        data_dir=options.data_dir,
    )
