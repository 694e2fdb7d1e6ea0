"""The service's settings, read once from the environment and checked all at once."""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Callable, Mapping
from typing import Final, Literal, TypeVar, cast
from urllib.parse import SplitResult, unquote, urlsplit

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict

from adapters.calendly.transport import basic_credentials
from adapters.crypto import parse_encryption_keys
from domain.secret import REDACTED, Secret

LogFormat = Literal["json", "console", "auto"]

LOCAL_HOSTS: Final = frozenset({"localhost", "127.0.0.1", "::1"})
LOG_FORMATS: Final = ("json", "console", "auto")
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ROLE_PATTERN: Final = re.compile(r"[a-z_][a-z0-9_]{0,62}")
JWT_SECRET_MIN_LENGTH: Final = 32
TRUE_WORDS: Final = frozenset({"true", "1", "yes"})
FALSE_WORDS: Final = frozenset({"false", "0", "no"})
OAUTH_CALLBACK_PATH: Final = "/oauth/calendly/callback"
WEBHOOK_CALLBACK_PATH: Final = "/webhooks/calendly"
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# What urllib's "Invalid IPv6 URL" (an unmatched bracket) asks of whoever wrote the URL.
_BRACKETS: Final = "'[' and ']' may only enclose an IPv6 address, both of them, as in {example}"
_T = TypeVar("_T")


class ConfigError(Exception):
    """The environment does not describe a runnable service; `problems` lists every reason."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        count = len(self.problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(
            f"the configuration has {count} problem{'s' if count != 1 else ''}:\n{lines}"
        )


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the service reads from its environment; secrets stay wrapped in `Secret`."""

    # Wrapped because the URL usually carries the database password.
    database_url: Secret
    database_runtime_role: str = "calendly_app"
    db_pool_min_size: int = 1
    db_pool_max_size: int = 10
    calendly_client_id: str
    calendly_client_secret: Secret
    # All of them are accepted when verifying a delivery, so a key can be rotated without a gap.
    calendly_webhook_signing_keys: tuple[Secret, ...]
    calendly_auth_base_url: str = "https://auth.calendly.com"
    calendly_api_base_url: str = "https://api.calendly.com"
    calendly_scope: str | None = None
    public_base_url: str
    oauth_redirect_uri: str
    webhook_callback_base: str
    app_origins: tuple[str, ...]
    token_encryption_keys: dict[str, bytes]
    token_encryption_active_key: str
    jwt_secret: Secret
    jwt_audience: str = "authenticated"
    jwt_issuer: str | None = None
    dev_login_enabled: bool = False
    webhook_tolerance_seconds: int = 180
    refresh_margin_seconds: int = 300
    # The maintenance worker (calendly-connect worker).
    worker_concurrency: int = 4
    worker_poll_seconds: float = 1.0
    worker_lease_seconds: int = 120
    # The back-off after a failed maintenance: from this, doubling, up to the maximum.
    worker_retry_base_seconds: float = 5.0
    worker_retry_max_seconds: float = 1800.0
    sync_interval_seconds: int = 21_600
    plan_poll_seconds: int = 120
    subscription_check_seconds: int = 1_800
    # Optional outbound webhook to the host app (connection.needs_reauth, .recovered, ...).
    host_webhook_url: str | None = None
    host_webhook_secret: Secret | None = None
    log_format: LogFormat = "auto"
    log_level: str = "INFO"
    host: str = "127.0.0.1"
    port: int = 8000

    def __repr__(self) -> str:
        # msgspec's repr would print the raw encryption keys; show only their ids.
        fields = ", ".join(
            f"{name}={_masked_keys(value) if name == 'token_encryption_keys' else repr(value)}"
            for name, value in msgspec.structs.asdict(self).items()
        )
        return f"Settings({fields})"

    __str__ = __repr__

    def secret_values(self) -> list[str]:
        """Every configured secret as text, for the log redactor to scrub wherever it appears."""
        values = [self.calendly_client_secret.reveal(), self.jwt_secret.reveal()]
        # The client's HTTP Basic credentials, exactly as the adapter sends them to Calendly.
        values.append(basic_credentials(self.calendly_client_id, self.calendly_client_secret))
        values += [key.reveal() for key in self.calendly_webhook_signing_keys]
        if self.host_webhook_secret is not None:
            values.append(self.host_webhook_secret.reveal())
        password = urlsplit(self.database_url.reveal()).password
        if password:
            values += [password, unquote(password)]
        for key in self.token_encryption_keys.values():
            encoded = base64.urlsafe_b64encode(key).decode()
            values += [encoded, encoded.rstrip("="), base64.b64encode(key).decode()]
        return list(dict.fromkeys(values))


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Read and check every variable; raises ConfigError listing all problems found."""
    env = _Environment(environ)

    database_url = env.required(
        "DATABASE_URL", "the Postgres URL, e.g. postgresql://user:password@localhost:5432/calendly"
    )
    if database_url and (problem := database_url_problem(database_url)) is not None:
        env.problem("DATABASE_URL", problem)
    role = env.optional("DATABASE_RUNTIME_ROLE") or "calendly_app"
    if not ROLE_PATTERN.fullmatch(role):
        env.problem(
            "DATABASE_RUNTIME_ROLE",
            f"DATABASE_RUNTIME_ROLE is {_shown(role)}; use a plain SQL identifier: lowercase "
            "letters, digits and '_', not starting with a digit, at most 63 characters",
        )
    pool_min = env.integer("DB_POOL_MIN_SIZE", 1, 1, 100)
    pool_max = env.integer("DB_POOL_MAX_SIZE", 10, 1, 100)
    if env.all_valid("DB_POOL_MIN_SIZE", "DB_POOL_MAX_SIZE") and pool_min > pool_max:
        env.problem(
            "DB_POOL_MIN_SIZE",
            f"DB_POOL_MIN_SIZE ({pool_min}) is larger than DB_POOL_MAX_SIZE ({pool_max}); "
            "lower the minimum or raise the maximum",
        )

    client_id = env.required("CALENDLY_OAUTH_CLIENT_ID", "the client id of your Calendly OAuth app")
    client_secret = env.required(
        "CALENDLY_OAUTH_CLIENT_SECRET", "the client secret of your Calendly OAuth app"
    )
    signing_keys = _split_list(
        env.required(
            "CALENDLY_WEBHOOK_SIGNING_KEY",
            "the webhook signing key of your Calendly OAuth app "
            "(several, comma-separated, while rotating)",
        )
    )
    if not signing_keys and env.all_valid("CALENDLY_WEBHOOK_SIGNING_KEY"):
        env.problem(
            "CALENDLY_WEBHOOK_SIGNING_KEY",
            "CALENDLY_WEBHOOK_SIGNING_KEY holds only commas; give at least one key",
        )
    auth_base = env.url("CALENDLY_AUTH_BASE_URL", default="https://auth.calendly.com")
    api_base = env.url("CALENDLY_API_BASE_URL", default="https://api.calendly.com")
    scope = env.optional("CALENDLY_OAUTH_SCOPE")

    public_base_url = env.url(
        "PUBLIC_BASE_URL",
        required="where browsers and Calendly reach this service, e.g. https://calendly.example.com",
    )
    redirect_uri = env.url(
        "CALENDLY_OAUTH_REDIRECT_URI",
        default=public_base_url + OAUTH_CALLBACK_PATH,
        strip_slash=False,
    )
    callback_base = env.url(
        "CALENDLY_WEBHOOK_CALLBACK_BASE", default=public_base_url + WEBHOOK_CALLBACK_PATH
    )
    app_origins = env.origins("APP_ORIGINS", default_from=public_base_url)

    no_keys: tuple[dict[str, bytes], str] = ({}, "")
    keys, active_key = env.parsed(
        "TOKEN_ENCRYPTION_KEY",
        parse_encryption_keys,
        "one or more AES-256 keys as 'kid:<base64url of 32 random bytes>', newest first",
        fallback=no_keys,
    )

    jwt_secret = env.required(
        "JWT_SECRET", "the secret that signs the app's user tokens (HS256), 32+ characters"
    )
    if jwt_secret and len(jwt_secret) < JWT_SECRET_MIN_LENGTH:
        env.problem(
            "JWT_SECRET",
            f"JWT_SECRET is too short; use at least {JWT_SECRET_MIN_LENGTH} random characters "
            "(the value is not shown)",
        )
    jwt_audience = env.optional("JWT_AUDIENCE") or "authenticated"
    jwt_issuer = env.optional("JWT_ISSUER")
    dev_login = env.boolean("DEV_LOGIN_ENABLED", default=False)
    if dev_login and public_base_url and not _is_local(urlsplit(public_base_url)):
        env.problem(
            "DEV_LOGIN_ENABLED",
            "DEV_LOGIN_ENABLED=true lets anyone sign in as any user, so it is only allowed when "
            "PUBLIC_BASE_URL is a localhost URL; unset it in this environment",
        )
    host = env.optional("HOST") or "127.0.0.1"
    if dev_login and not _is_loopback_host(host):
        env.problem(
            "DEV_LOGIN_ENABLED",
            "DEV_LOGIN_ENABLED=true lets anyone who reaches the service sign in as any user, "
            f"but HOST is {_shown(host)}, which may accept connections from other machines; set "
            "HOST=127.0.0.1 (or ::1, localhost) or DEV_LOGIN_ENABLED=false",
        )

    tolerance = env.integer("WEBHOOK_TOLERANCE_SECONDS", 180, 1, 3600)
    refresh_margin = env.integer("TOKEN_REFRESH_MARGIN_SECONDS", 300, 0, 3600)
    worker_concurrency = env.integer("WORKER_CONCURRENCY", 4, 1, 64)
    worker_poll = env.integer("WORKER_POLL_MILLISECONDS", 1000, 50, 60_000)
    worker_lease = env.integer("WORKER_LEASE_SECONDS", 120, 10, 3600)
    retry_base = env.integer("WORKER_RETRY_BASE_MILLISECONDS", 5000, 10, 3_600_000)
    retry_max = env.integer("WORKER_RETRY_MAX_SECONDS", 1800, 1, 86_400)
    sync_interval = env.integer("SYNC_INTERVAL_SECONDS", 21_600, 60, 7 * 86_400)
    plan_poll = env.integer("PLAN_POLL_SECONDS", 120, 10, 86_400)
    subscription_check = env.integer("SUBSCRIPTION_CHECK_SECONDS", 1_800, 10, 86_400)
    host_webhook_url = env.optional("HOST_WEBHOOK_URL")
    if host_webhook_url is not None:
        host_webhook_url = env.url("HOST_WEBHOOK_URL", default=host_webhook_url)
    host_webhook_secret = env.optional("HOST_WEBHOOK_SECRET")
    if host_webhook_url and not host_webhook_secret:
        env.problem(
            "HOST_WEBHOOK_SECRET",
            "HOST_WEBHOOK_URL is set but HOST_WEBHOOK_SECRET is not: notifications to the host "
            "app are signed with it; set 32+ random characters",
        )
    log_format = env.choice("LOG_FORMAT", "auto", LOG_FORMATS, str.lower)
    log_level = env.choice("LOG_LEVEL", "INFO", LOG_LEVELS, str.upper)
    port = env.integer("PORT", 8000, 1, 65535)

    # The helpers hand back placeholders for bad values, so nothing is built unless all is well.
    if env.problems:
        raise ConfigError(env.problems)
    return Settings(
        database_url=Secret(database_url),
        database_runtime_role=role,
        db_pool_min_size=pool_min,
        db_pool_max_size=pool_max,
        calendly_client_id=client_id,
        calendly_client_secret=Secret(client_secret),
        calendly_webhook_signing_keys=tuple(Secret(key) for key in signing_keys),
        calendly_auth_base_url=auth_base,
        calendly_api_base_url=api_base,
        calendly_scope=scope,
        public_base_url=public_base_url,
        oauth_redirect_uri=redirect_uri,
        webhook_callback_base=callback_base,
        app_origins=app_origins,
        token_encryption_keys=keys,
        token_encryption_active_key=active_key,
        jwt_secret=Secret(jwt_secret),
        jwt_audience=jwt_audience,
        jwt_issuer=jwt_issuer,
        dev_login_enabled=dev_login,
        webhook_tolerance_seconds=tolerance,
        refresh_margin_seconds=refresh_margin,
        worker_concurrency=worker_concurrency,
        worker_poll_seconds=worker_poll / 1000,
        worker_lease_seconds=worker_lease,
        worker_retry_base_seconds=retry_base / 1000,
        worker_retry_max_seconds=float(retry_max),
        sync_interval_seconds=sync_interval,
        plan_poll_seconds=plan_poll,
        subscription_check_seconds=subscription_check,
        host_webhook_url=host_webhook_url,
        host_webhook_secret=Secret(host_webhook_secret) if host_webhook_secret else None,
        log_format=cast(LogFormat, log_format),
        log_level=log_level,
        host=host,
        port=port,
    )


class _Environment:
    """Reads variables and collects problems instead of stopping at the first one.

    A bad or missing value is recorded as a problem and a placeholder is returned, so reading
    goes on and every problem is reported at once.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self.problems: list[str] = []
        self._failed: set[str] = set()

    def problem(self, name: str, text: str) -> None:
        self.problems.append(text)
        self._failed.add(name)

    def all_valid(self, *names: str) -> bool:
        return self._failed.isdisjoint(names)

    def optional(self, name: str) -> str | None:
        """The value without surrounding whitespace; None when unset or blank."""
        value = self._environ.get(name, "").strip()
        return value or None

    def required(self, name: str, what: str) -> str:
        value = self.optional(name)
        if value is None:
            self.problem(name, f"{name} is not set; set it to {what}")
            return ""
        return value

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        raw = self.optional(name)
        if raw is None:
            return default
        if not re.fullmatch(r"[+-]?[0-9]+", raw) or not low <= int(raw) <= high:
            self.problem(
                name,
                f"{name} is {_shown(raw)}; use a whole number from {low} to {high} "
                f"(or unset it for {default})",
            )
            return default
        return int(raw)

    def boolean(self, name: str, *, default: bool) -> bool:
        raw = self.optional(name)
        if raw is None:
            return default
        if raw.lower() in TRUE_WORDS:
            return True
        if raw.lower() not in FALSE_WORDS:
            self.problem(name, f"{name} is {_shown(raw)}; use true/false, 1/0 or yes/no")
        return False

    def choice(
        self, name: str, default: str, allowed: tuple[str, ...], normalize: Callable[[str], str]
    ) -> str:
        raw = self.optional(name)
        if raw is None:
            return default
        if normalize(raw) not in allowed:
            self.problem(name, f"{name} is {_shown(raw)}; use one of {', '.join(allowed)}")
            return default
        return normalize(raw)

    def parsed(self, name: str, parse: Callable[[str], _T], what: str, *, fallback: _T) -> _T:
        """Run a parser whose ValueError messages never repeat the (secret) value."""
        raw = self.required(name, what)
        if not raw:
            return fallback
        try:
            return parse(raw)
        except ValueError as exc:
            self.problem(name, f"{name} is not valid: {exc}")
            return fallback

    def url(
        self,
        name: str,
        *,
        default: str = "",
        required: str | None = None,
        strip_slash: bool = True,
    ) -> str:
        """An http(s) URL, https unless the host is loopback; `required` says what to set."""
        raw = self.optional(name)
        if raw is None:
            if required is not None:
                return self.required(name, required)
            return default
        reason = _url_problem(raw)
        if reason is not None:
            self.problem(name, f"{name} {reason}")
            return ""
        return raw.rstrip("/") if strip_slash else raw

    def origins(self, name: str, *, default_from: str) -> tuple[str, ...]:
        raw = self.optional(name)
        if raw is None:
            return (_origin(urlsplit(default_from)),) if default_from else ()
        origins: list[str] = []
        for position, entry in enumerate(_split_list(raw), start=1):
            reason = _url_problem(entry)
            if reason is not None:
                self.problem(name, f"{name} entry {position} {reason}")
                continue
            parts = urlsplit(entry)
            if parts.path not in ("", "/"):
                self.problem(
                    name,
                    f"{name} entry {position} has a path; an origin is scheme://host[:port] only",
                )
            elif (origin := _origin(parts)) not in origins:
                origins.append(origin)
        if not origins and self.all_valid(name):
            self.problem(name, f"{name} holds no origin; list e.g. https://app.example.com")
        return tuple(origins)


def database_url_problem(value: str, name: str = "DATABASE_URL") -> str | None:
    """Why `value` cannot be the database URL `name`, or None; never repeats the value."""
    hidden = "(the value is not shown because it may contain a password)"
    if not value.startswith(("postgresql://", "postgres://")):
        return f"{name} must start with postgresql:// or postgres:// {hidden}"
    try:
        urlsplit(value)
    except ValueError:  # its text may quote the user:password part, so it is not shown
        example = "postgresql://user:password@[::1]:5432/calendly"
        return f"{name} cannot be read as a URL: {_BRACKETS.format(example=example)} {hidden}"
    try:
        conninfo_to_dict(value)
    except psycopg.ProgrammingError as exc:
        # libpq's message quotes the offending part, which may be the password: keep only
        # what kind of problem it is (the text before its colon).
        kind = str(exc).split(":", 1)[0].strip() or "it is malformed"
        return (
            f"{name} cannot be read by libpq ({kind}; a % in a password must be written %25) "
            f"{hidden}"
        )
    return None


def _url_problem(value: str) -> str | None:
    """Why `value` is not an acceptable http(s) URL, or None; never repeats user:password."""
    if value == "*":
        return "is '*'; list the exact origins instead"
    if "@" in value:
        return "must not contain user:password@ (the value is not shown)"
    try:
        parts = urlsplit(value)
    except ValueError as exc:
        example = _BRACKETS.format(example="http://[::1]:8000")
        return f"is {_shown(value)}; it cannot be read as a URL ({exc}): {example}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"is {_shown(value)}; use an http(s) URL such as https://calendly.example.com"
    try:
        parts.port  # noqa: B018 - reading it is what validates it
    except ValueError:
        return f"is {_shown(value)}; its port is not a number from 0 to 65535"
    if parts.query or parts.fragment:
        return f"is {_shown(value)}; remove the query string and fragment"
    if parts.scheme != "https" and not _is_local(parts):
        return (
            f"is {_shown(value)}; use https:// (plain http is only allowed for localhost, "
            "127.0.0.1 and [::1])"
        )
    return None


def _is_local(parts: SplitResult) -> bool:
    return (parts.hostname or "") in LOCAL_HOSTS


def _is_loopback_host(host: str) -> bool:
    """True when listening on `host` accepts connections from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may resolve anywhere
        return False


def _origin(parts: SplitResult) -> str:
    """scheme://host[:port] as browsers send it: lower case, default port left out."""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    suffix = "" if port is None or port == _DEFAULT_PORTS.get(parts.scheme) else f":{port}"
    return f"{parts.scheme}://{host}{suffix}"


def _split_list(value: str) -> list[str]:
    """Comma-separated entries without blanks or repeats, in their order."""
    entries: list[str] = []
    for entry in (part.strip() for part in value.split(",")):
        if entry and entry not in entries:
            entries.append(entry)
    return entries


def _shown(value: str, limit: int = 80) -> str:
    """A non-secret value quoted for a message, cut short so a pasted blob stays readable."""
    return repr(value if len(value) <= limit else value[:limit] + "...")


def _masked_keys(keys: object) -> str:
    if isinstance(keys, dict):
        return "{" + ", ".join(f"{key_id!r}: {REDACTED!r}" for key_id in keys) + "}"
    return REDACTED
