"""What the HTTP app needs to know that is not a use case: secrets, origins, limits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from domain.secret import Secret
from entrypoints.service.http.context import OneIn

MIB = 1024 * 1024
# A path prefix: segments of URL-safe characters (nothing that needs escaping in HTML or a URL).
_ROOT_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")
# HS256 with a shorter key is guessable offline from any issued token (RFC 7518, 3.2).
MIN_JWT_SECRET_LENGTH = 32


def _is_origin(value: str) -> bool:
    parts = urlsplit(value)
    return (
        parts.scheme in ("http", "https")
        and bool(parts.netloc)
        and not parts.path
        and not parts.query
        and not parts.fragment
        and "@" not in parts.netloc
    )


@dataclass(frozen=True, kw_only=True)
class HttpConfig:
    """Settings of the HTTP entrypoint, passed in by the composition root."""

    # HS256 secrets of the host's sign-in, newest first: all verify, the first signs dev login.
    jwt_secrets: tuple[Secret, ...] = ()
    # JWKS URLs of the host's sign-in (RS*/PS*/ES*/EdDSA keys, selected by `kid`).
    jwt_jwks_urls: tuple[str, ...] = ()
    jwt_audience: str
    jwt_leeway_seconds: int = 30
    # The claim that holds the user id.
    jwt_user_claim: str = "sub"
    # Checked only when set.
    jwt_issuer: str | None = None
    # `POST /api/dev/login` hands out tokens for any user id: never enable in production.
    dev_login_enabled: bool = False
    # The Calendly sandbox the local stack runs, which the page links to book in (None: none).
    sandbox_url: str | None = None
    # Origins (`https://app.example`) the OAuth popup page may post its outcome to.
    app_origins: tuple[str, ...] = ()
    # Where this service is reachable, without a trailing slash, with `root_path` if any
    # (`https://api.example`, `https://app.example/calendly`).
    public_base_url: str
    # The prefix a proxy mounts the service under ("" or e.g. "/calendly"): the links, assets
    # and cookies the service hands out carry it; requests are accepted with or without it.
    root_path: str = ""
    max_webhook_body: int = MIB
    # Should be `public_base_url.startswith("https://")`; browsers also accept Secure cookies
    # from http://localhost, so True is right for local development too.
    secure_cookies: bool = True
    # Bodies of the few JSON requests the app itself sends are tiny.
    max_api_body: int = 64 * 1024
    readiness_timeout: float = 2.0
    # INFRASTRUCTURE ERRORS: exception types that mean "storage is down" when they escape an
    # adapter untranslated (e.g. `(psycopg.OperationalError, psycopg_pool.PoolTimeout)`).
    # They are answered like StorageUnavailable: 503 with Retry-After, never a 500.
    infrastructure_errors: tuple[type[Exception], ...] = ()
    # Keys the meetings cursors; None: derived from the first JWT secret (there must be one).
    cursor_key: bytes | None = field(default=None, repr=False)
    # Keys of user sessions (`POST /v1/users/{id}/sessions`) as (key id, key), the active one
    # first: it signs, all verify. Derived from the token encryption keys (server.http_config).
    session_keys: tuple[tuple[str, bytes], ...] = field(default=(), repr=False)
    # `/metrics` is routed only with a token (METRICS_TOKEN) and an exporter (DR-39).
    metrics_token: Secret | None = field(default=None, repr=False)
    # Which accepted webhook deliveries get a request line (WEBHOOK_LOG_ONE_IN; here: all).
    webhook_log_sample: OneIn = field(default_factory=lambda: OneIn(1), compare=False)

    def __post_init__(self) -> None:
        if not self.jwt_secrets and not self.jwt_jwks_urls:
            raise ValueError("jwt_secrets, jwt_jwks_urls or both must be given")
        if any(len(secret.reveal()) < MIN_JWT_SECRET_LENGTH for secret in self.jwt_secrets):
            raise ValueError(f"jwt secrets must be at least {MIN_JWT_SECRET_LENGTH} characters")
        if not self.jwt_secrets and (self.dev_login_enabled or self.cursor_key is None):
            raise ValueError("dev login and a derived cursor key need an HS256 jwt secret")
        if not 0 <= self.jwt_leeway_seconds <= 300:
            raise ValueError("jwt_leeway_seconds must be from 0 to 300")
        if not self.jwt_user_claim:
            raise ValueError("jwt_user_claim must not be empty")
        if not self.jwt_audience:
            raise ValueError("jwt_audience must not be empty")
        for origin in self.app_origins:
            if not _is_origin(origin):
                raise ValueError(f"app origin {origin!r} is not scheme://host[:port]")
        base = urlsplit(self.public_base_url)
        if base.scheme not in ("http", "https") or not base.netloc:
            raise ValueError("public_base_url must be an absolute http(s) URL")
        if self.root_path and not _ROOT_PATH.fullmatch(self.root_path):
            raise ValueError("root_path must be empty or like /calendly (no trailing slash)")
        if self.sandbox_url is not None and not _is_origin(self.sandbox_url):
            raise ValueError("sandbox_url must be scheme://host[:port]")
        if self.max_webhook_body <= 0 or self.max_api_body <= 0:
            raise ValueError("body limits must be positive")
        if not self.session_keys:
            raise ValueError("session_keys must hold at least one (key id, key)")

    def path(self, internal: str) -> str:
        """The path a browser uses for one of the service's own paths (`/static/x.js`)."""
        return self.root_path + internal

    @property
    def return_url(self) -> str:
        """Where the popup page links back to when it has no opener: the app, else this host."""
        return (self.app_origins[0] if self.app_origins else self.public_base_url).rstrip("/") + "/"
