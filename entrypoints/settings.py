"""The service's settings, read once from the environment and checked all at once.

`Settings` is grouped by concern: `database`, `calendly`, `encryption`, `http`, `worker`,
`logging`. Each group's defaults are written once, on its Struct; the loader reads them there.
"""

from __future__ import annotations

import base64
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal, TypeVar, cast
from urllib.parse import SplitResult, unquote, urlsplit

import msgspec
import psycopg
from psycopg.conninfo import conninfo_to_dict

from adapters.calendly.transport import basic_credentials
from adapters.crypto import parse_encryption_keys
from adapters.postgres.roles import DEFAULT_RUNTIME_ROLE
from domain.changes import is_event_pattern
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
# Every variable the settings read, in the order their problems are reported (that of the
# README's Configuration table), whichever group reads them first.
VARIABLES: Final = (
    "DATABASE_URL",
    "DOCTOR_DATABASE_URL",
    "DATABASE_RUNTIME_ROLE",
    "DB_POOL_MIN_SIZE",
    "DB_POOL_MAX_SIZE",
    "CALENDLY_OAUTH_CLIENT_ID",
    "CALENDLY_OAUTH_CLIENT_SECRET",
    "CALENDLY_WEBHOOK_SIGNING_KEY",
    "CALENDLY_AUTH_BASE_URL",
    "CALENDLY_API_BASE_URL",
    "CALENDLY_OAUTH_SCOPE",
    "PUBLIC_BASE_URL",
    "ROOT_PATH",
    "CALENDLY_OAUTH_REDIRECT_URI",
    "CALENDLY_WEBHOOK_CALLBACK_BASE",
    "APP_ORIGINS",
    "TOKEN_ENCRYPTION_KEY",
    "JWT_SECRET",
    "JWT_AUDIENCE",
    "JWT_ISSUER",
    "JWT_JWKS_URL",
    "JWT_LEEWAY_SECONDS",
    "JWT_USER_CLAIM",
    "DEV_LOGIN_ENABLED",
    "HOST",
    "WEBHOOK_TOLERANCE_SECONDS",
    "TOKEN_REFRESH_MARGIN_SECONDS",
    "LIVE_HEARTBEAT_SECONDS",
    "WORKER_CONCURRENCY",
    "WORKER_POLL_MILLISECONDS",
    "WORKER_LEASE_SECONDS",
    "WORKER_RETRY_BASE_MILLISECONDS",
    "WORKER_RETRY_MAX_SECONDS",
    "SYNC_INTERVAL_SECONDS",
    "PLAN_POLL_SECONDS",
    "WATCHED_POLL_SECONDS",
    "GRANT_CHECK_SECONDS",
    "PLAN_RECHECK_SECONDS",
    "SUBSCRIPTION_CHECK_SECONDS",
    "CHANGE_LOG_RETENTION_DAYS",
    "WEBHOOK_PAYLOAD_RETENTION_DAYS",
    "HOST_WEBHOOK_URL",
    "HOST_WEBHOOK_SECRET",
    "HOST_WEBHOOK_EVENTS",
    "HOST_WEBHOOK_NICE",
    "METRICS_ENABLED",
    "METRICS_TOKEN",
    "PROMETHEUS_MULTIPROC_DIR",
    "OTEL_SDK_DISABLED",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_SERVICE_NAME",
    "LOG_FORMAT",
    "LOG_LEVEL",
    "REQUEST_LOG_LEVEL",
    "WEBHOOK_LOG_ONE_IN",
    "PORT",
)
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# What urllib's "Invalid IPv6 URL" (an unmatched bracket) asks of whoever wrote the URL.
_BRACKETS: Final = "'[' and ']' may only enclose an IPv6 address, both of them, as in {example}"
_T = TypeVar("_T")


class ConfigError(Exception):
    """The environment does not describe a runnable service; `problems` lists every reason."""

    def __init__(self, problems: list[str], variables: tuple[str, ...] = ()) -> None:
        self.problems = list(problems)
        # The variables the problems are about, in the same order, each once.
        self.variables = variables
        count = len(self.problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(
            f"the configuration has {count} problem{'s' if count != 1 else ''}:\n{lines}"
        )


class DatabaseSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the data lives and as whom the service reaches it."""

    # Wrapped because the URL usually carries the database password.
    url: Secret
    # Every pooled connection acts as this role (SET ROLE): row-level security binds it.
    runtime_role: str = DEFAULT_RUNTIME_ROLE
    pool_min_size: int = 1
    pool_max_size: int = 10


class CalendlySettings(msgspec.Struct, frozen=True, kw_only=True):
    """The OAuth app registered at Calendly, where Calendly is, and how it is trusted."""

    client_id: str
    client_secret: Secret
    # CALENDLY_WEBHOOK_SIGNING_KEY (comma-separated), parsed in _read_calendly. All of them are
    # accepted when verifying a delivery, so a key can be rotated without a gap; the container
    # hands them to HandleWebhookEvent as `app_signing_keys`.
    webhook_signing_keys: tuple[Secret, ...]
    auth_base_url: str = "https://auth.calendly.com"
    api_base_url: str = "https://api.calendly.com"
    scope: str | None = None
    # Both default to PUBLIC_BASE_URL + OAUTH_CALLBACK_PATH / WEBHOOK_CALLBACK_PATH.
    oauth_redirect_uri: str
    webhook_callback_base: str
    webhook_tolerance_seconds: int = 180
    refresh_margin_seconds: int = 300


class EncryptionSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The keys that seal tokens and signing keys at rest: the active one seals, all open."""

    keys: dict[str, bytes]
    active_key: str

    def __repr__(self) -> str:
        # msgspec's repr would print the raw keys; show only their ids.
        masked = ", ".join(f"{key_id!r}: {REDACTED!r}" for key_id in self.keys)
        return f"EncryptionSettings(keys={{{masked}}}, active_key={self.active_key!r})"

    __str__ = __repr__


class HttpSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Where the HTTP service listens and is reached, and whose bearer tokens it accepts."""

    # Where browsers and Calendly reach the service, with ROOT_PATH (`https://app.example/cal`).
    public_base_url: str
    app_origins: tuple[str, ...]
    # The path prefix the service is mounted under behind a proxy ("" when at the root).
    root_path: str = ""
    # HS256 secrets, newest first (the first signs dev-login tokens); empty: JWKS only.
    jwt_secrets: tuple[Secret, ...] = ()
    jwt_jwks_urls: tuple[str, ...] = ()
    jwt_audience: str = "authenticated"
    jwt_issuer: str | None = None
    jwt_leeway_seconds: int = 30
    jwt_user_claim: str = "sub"
    dev_login_enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    # How often an idle live stream sends a comment line (proxies close silent responses).
    live_heartbeat_seconds: int = 30


class WorkerSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The maintenance worker (calendly-connect worker): its pace and its back-off."""

    concurrency: int = 4
    poll_seconds: float = 1.0
    lease_seconds: int = 120
    # The back-off after a failed maintenance: from this, doubling, up to the maximum.
    retry_base_seconds: float = 5.0
    retry_max_seconds: float = 1800.0
    # Each costs Calendly calls, so each recurs only as often as it buys something (DR-45): a
    # reconciliation where webhooks work (a safety net: outages and repairs ask for one at
    # once), a subscription read (likewise), and the daily proof that the grant still holds.
    sync_interval_seconds: int = 604_800
    # Free-plan connections (no webhooks) are polled this often, and this often while their
    # user has a live stream open (DR-42).
    plan_poll_seconds: int = 1_800
    watched_poll_seconds: int = 30
    subscription_check_seconds: int = 604_800
    grant_check_seconds: int = 86_400
    # A free plan is asked again for webhooks this often (and whenever its user opens the page).
    plan_recheck_seconds: int = 86_400
    # The change log keeps this many days (the worker prunes older rows no host webhook needs).
    change_log_retention_days: int = 14
    # Recorded webhook deliveries (payloads) keep this many days (DR-41).
    webhook_payload_retention_days: int = 30


class HostWebhookEndpoint(msgspec.Struct, frozen=True, kw_only=True):
    """One endpoint of the host's (HOST_WEBHOOK_URL), its secrets and the events it wants."""

    name: str
    url: str
    # `whsec_...`: every one signs each message (several while the host rotates).
    secrets: tuple[Secret, ...]
    # Patterns ('meeting.*') or exact names; empty: every event.
    event_types: tuple[str, ...] = ()


class HostWebhookSettings(msgspec.Struct, frozen=True, kw_only=True):
    """The host webhooks' dispatcher (calendly-connect host-webhooks run; DR-34)."""

    endpoints: tuple[HostWebhookEndpoint, ...] = ()
    # Streams (users) delivered at once, per endpoint: a slow endpoint fills only its own.
    concurrency: int = 8
    poll_seconds: float = 1.0
    timeout_seconds: float = 10.0
    # The dispatcher's CPU priority (nice, 0-19): under load the webhook ingest path, which
    # Calendly retries and the host's users wait on, comes first; deliveries catch up (DR-37).
    nice: int = 10


class MetricsSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`/metrics` (DR-39): off unless enabled; then behind a bearer token, summed over the
    processes that share the multiprocess directory."""

    enabled: bool = False
    # What a scraper sends as `Authorization: Bearer ...` (32+ characters).
    token: Secret | None = None
    # prometheus_client's PROMETHEUS_MULTIPROC_DIR: an existing, writable directory, emptied
    # before the deployment's processes start (the launcher does it for `dev`).
    multiproc_dir: Path | None = None


class TracingSettings(msgspec.Struct, frozen=True, kw_only=True):
    """OpenTelemetry traces (DR-40), in OpenTelemetry's own variables: on when an OTLP endpoint
    is set and OTEL_SDK_DISABLED is not true; off, no OpenTelemetry module is even imported."""

    # Where spans are sent over OTLP/HTTP, the whole URL (`http://collector:4318/v1/traces`);
    # None: tracing is off.
    endpoint: str | None = None
    # OTEL_EXPORTER_OTLP_(TRACES_)HEADERS as (name, value): often a vendor's API key.
    headers: tuple[tuple[str, Secret], ...] = ()
    # OTEL_SERVICE_NAME; None: each process names itself (`calendly-connect`, the worker
    # `calendly-connect-worker`).
    service_name: str | None = None

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None


class LoggingSettings(msgspec.Struct, frozen=True, kw_only=True):
    format: LogFormat = "auto"
    level: str = "INFO"
    # The level of each request's log line (`dev` makes it DEBUG; 5xx are warnings anyway).
    requests: str = "INFO"
    # One in this many accepted webhook deliveries (2xx) gets a request line; refusals and
    # failures always do. Every delivery is counted in the metrics and recorded in the
    # database, so the line says little more (issue 17: it was a sixth of the CPU).
    webhook_one_in: int = 100


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything the service reads from its environment; secrets stay wrapped in `Secret`."""

    database: DatabaseSettings
    calendly: CalendlySettings
    encryption: EncryptionSettings
    http: HttpSettings
    worker: WorkerSettings = msgspec.field(default_factory=WorkerSettings)
    host_webhooks: HostWebhookSettings = msgspec.field(default_factory=HostWebhookSettings)
    logging: LoggingSettings = msgspec.field(default_factory=LoggingSettings)
    metrics: MetricsSettings = msgspec.field(default_factory=MetricsSettings)
    tracing: TracingSettings = msgspec.field(default_factory=TracingSettings)

    def secret_values(self) -> list[str]:
        """Every configured secret as text, for the log redactor to scrub wherever it appears."""
        calendly = self.calendly
        values = [calendly.client_secret.reveal()]
        values += [secret.reveal() for secret in self.http.jwt_secrets]
        # The client's HTTP Basic credentials, exactly as the adapter sends them to Calendly.
        values.append(basic_credentials(calendly.client_id, calendly.client_secret))
        values += [key.reveal() for key in calendly.webhook_signing_keys]
        for endpoint in self.host_webhooks.endpoints:
            values += [secret.reveal() for secret in endpoint.secrets]
        if self.metrics.token is not None:
            values.append(self.metrics.token.reveal())
        values += [value.reveal() for _, value in self.tracing.headers]
        password = urlsplit(self.database.url.reveal()).password
        if password:
            values += [password, unquote(password)]
        for key in self.encryption.keys.values():
            encoded = base64.urlsafe_b64encode(key).decode()
            values += [encoded, encoded.rstrip("="), base64.b64encode(key).decode()]
        return list(dict.fromkeys(values))


def process_environment() -> dict[str, str]:
    """This process's environment: the one place the entrypoints read `os.environ` (but for
    the test-only fault hook of DR-17, which reads its own variable at import, and the command
    line's check of PROMETHEUS_MULTIPROC_DIR, made before anything imports the metrics).

    The command line reads it once and hands it to the command, which loads its settings from
    it; a developer tool passes it on, amended, to the processes it starts.
    """
    return dict(os.environ)


def environment_value(environ: Mapping[str, str], name: str) -> str | None:
    """One variable without surrounding whitespace; None when unset or blank.

    Settings read every variable through this. The doctor uses it too, for the few things it
    must look at in a configuration that does not load (and for DOCTOR_DATABASE_URL, which is
    its own); everything else reads `Settings`.
    """
    value = environ.get(name, "").strip()
    return value or None


def load_settings(environ: Mapping[str, str]) -> Settings:
    """Read and check every variable; raises ConfigError listing all problems found."""
    env = _Environment(environ)
    http = _read_http(env)
    settings = Settings(
        database=_read_database(env, "DATABASE_URL"),
        calendly=_read_calendly(env, http.public_base_url),
        encryption=_read_encryption(env),
        http=http,
        worker=_read_worker(env),
        host_webhooks=_read_host_webhooks(env),
        logging=_read_logging(env),
        metrics=_read_metrics(env),
        tracing=_read_tracing(env),
    )
    # The readers hand back placeholders for bad values: nothing is used unless all is well.
    env.raise_problems()
    return settings


def load_database_settings(
    environ: Mapping[str, str], url_variable: str = "DATABASE_URL"
) -> DatabaseSettings:
    """Only where the database is and as whom (for `migrate`, and the doctor's own login).

    The pool's sizes are not read: these one-connection tools use none, so a bad DB_POOL_*
    (which the service itself refuses) does not stop them. Raises ConfigError listing every
    problem with the URL and the runtime role.
    """
    env = _Environment(environ)
    database = _read_database(env, url_variable, pool=False)
    env.raise_problems()
    return database


def load_encryption_settings(environ: Mapping[str, str]) -> EncryptionSettings:
    """Only TOKEN_ENCRYPTION_KEY (for `rotate-keys`); raises ConfigError saying what is wrong."""
    env = _Environment(environ)
    encryption = _read_encryption(env)
    env.raise_problems()
    return encryption


class DispatcherSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What `calendly-connect host-webhooks run` reads: no Calendly or HTTP settings."""

    database: DatabaseSettings
    host_webhooks: HostWebhookSettings
    logging: LoggingSettings

    def secret_values(self) -> list[str]:
        values = [s.reveal() for e in self.host_webhooks.endpoints for s in e.secrets]
        password = urlsplit(self.database.url.reveal()).password
        if password:
            values += [password, unquote(password)]
        return list(dict.fromkeys(values))


def load_dispatcher_settings(environ: Mapping[str, str]) -> DispatcherSettings:
    """The database (with its pool), the host webhooks and logging; raises ConfigError."""
    env = _Environment(environ)
    settings = DispatcherSettings(
        database=_read_database(env, "DATABASE_URL"),
        host_webhooks=_read_host_webhooks(env),
        logging=_read_logging(env),
    )
    env.raise_problems()
    return settings


def _default(group: type[msgspec.Struct], field: str) -> Any:
    """A field's default, as its Struct declares it: defaults are written there, and only there."""
    for info in msgspec.structs.fields(group):
        if info.name == field and info.default is not msgspec.NODEFAULT:
            return info.default
    raise LookupError(f"{group.__name__}.{field} has no default")


def _milliseconds(seconds: float) -> int:
    return round(seconds * 1000)


def _read_database(env: _Environment, url_variable: str, *, pool: bool = True) -> DatabaseSettings:
    url = env.required(
        url_variable,
        "the Postgres URL, e.g. postgresql://user:password@localhost:5432/calendly",
    )
    if url and (problem := database_url_problem(url, url_variable)) is not None:
        env.problem(url_variable, problem)
    role = env.optional("DATABASE_RUNTIME_ROLE") or _default(DatabaseSettings, "runtime_role")
    if not ROLE_PATTERN.fullmatch(role):
        env.problem(
            "DATABASE_RUNTIME_ROLE",
            f"DATABASE_RUNTIME_ROLE is {_shown(role)}; use a plain SQL identifier: lowercase "
            "letters, digits and '_', not starting with a digit, at most 63 characters",
        )
    pool_min = _default(DatabaseSettings, "pool_min_size")
    pool_max = _default(DatabaseSettings, "pool_max_size")
    if not pool:
        return DatabaseSettings(url=Secret(url), runtime_role=role)
    pool_min = env.integer("DB_POOL_MIN_SIZE", pool_min, 1, 100)
    pool_max = env.integer("DB_POOL_MAX_SIZE", pool_max, 1, 100)
    if env.all_valid("DB_POOL_MIN_SIZE", "DB_POOL_MAX_SIZE") and pool_min > pool_max:
        env.problem(
            "DB_POOL_MIN_SIZE",
            f"DB_POOL_MIN_SIZE ({pool_min}) is larger than DB_POOL_MAX_SIZE ({pool_max}); "
            "lower the minimum or raise the maximum",
        )
    return DatabaseSettings(
        url=Secret(url), runtime_role=role, pool_min_size=pool_min, pool_max_size=pool_max
    )


def _read_calendly(env: _Environment, public_base_url: str) -> CalendlySettings:
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
    defaults = CalendlySettings
    return CalendlySettings(
        client_id=client_id,
        client_secret=Secret(client_secret),
        webhook_signing_keys=tuple(Secret(key) for key in signing_keys),
        auth_base_url=env.url(
            "CALENDLY_AUTH_BASE_URL", default=_default(defaults, "auth_base_url")
        ),
        api_base_url=env.url("CALENDLY_API_BASE_URL", default=_default(defaults, "api_base_url")),
        scope=env.optional("CALENDLY_OAUTH_SCOPE"),
        oauth_redirect_uri=env.url(
            "CALENDLY_OAUTH_REDIRECT_URI",
            default=public_base_url + OAUTH_CALLBACK_PATH,
            strip_slash=False,
        ),
        webhook_callback_base=env.url(
            "CALENDLY_WEBHOOK_CALLBACK_BASE", default=public_base_url + WEBHOOK_CALLBACK_PATH
        ),
        webhook_tolerance_seconds=env.integer(
            "WEBHOOK_TOLERANCE_SECONDS", _default(defaults, "webhook_tolerance_seconds"), 1, 3600
        ),
        refresh_margin_seconds=env.integer(
            "TOKEN_REFRESH_MARGIN_SECONDS", _default(defaults, "refresh_margin_seconds"), 0, 3600
        ),
    )


def _read_encryption(env: _Environment) -> EncryptionSettings:
    no_keys: tuple[dict[str, bytes], str] = ({}, "")
    keys, active_key = env.parsed(
        "TOKEN_ENCRYPTION_KEY",
        parse_encryption_keys,
        "one or more AES-256 keys as 'kid:<base64url of 32 random bytes>', newest first",
        fallback=no_keys,
    )
    return EncryptionSettings(keys=keys, active_key=active_key)


def _read_http(env: _Environment) -> HttpSettings:
    public_base_url = env.url(
        "PUBLIC_BASE_URL",
        required="where browsers and Calendly reach this service, e.g. https://calendly.example.com",
    )
    public_base_url, root_path = _read_root_path(env, public_base_url)
    app_origins = env.origins("APP_ORIGINS", default_from=public_base_url)
    jwt_secrets = _read_jwt_secrets(env)
    jwks_urls = env.url_list("JWT_JWKS_URL")
    if not jwt_secrets and not jwks_urls and env.all_valid("JWT_SECRET", "JWT_JWKS_URL"):
        env.problem(
            "JWT_SECRET",
            "JWT_SECRET is not set; set it to the secret(s) that sign the app's user tokens "
            "(HS256, comma-separated, 32+ characters each), or set JWT_JWKS_URL to your sign-in's "
            "JWKS URL (RS256/ES256/EdDSA tokens), or both",
        )
    dev_login = env.boolean(
        "DEV_LOGIN_ENABLED", default=_default(HttpSettings, "dev_login_enabled")
    )
    if dev_login and public_base_url and not _is_local(urlsplit(public_base_url)):
        env.problem(
            "DEV_LOGIN_ENABLED",
            "DEV_LOGIN_ENABLED=true lets anyone sign in as any user, so it is only allowed when "
            "PUBLIC_BASE_URL is a localhost URL; unset it in this environment",
        )
    if dev_login and jwks_urls and not jwt_secrets:
        env.problem(
            "DEV_LOGIN_ENABLED",
            "DEV_LOGIN_ENABLED=true signs tokens with an HS256 secret, but JWT_SECRET is not "
            "set; add a JWT_SECRET or set DEV_LOGIN_ENABLED=false",
        )
    host = env.optional("HOST") or _default(HttpSettings, "host")
    if dev_login and not _is_loopback_host(host):
        env.problem(
            "DEV_LOGIN_ENABLED",
            "DEV_LOGIN_ENABLED=true lets anyone who reaches the service sign in as any user, "
            f"but HOST is {_shown(host)}, which may accept connections from other machines; set "
            "HOST=127.0.0.1 (or ::1, localhost) or DEV_LOGIN_ENABLED=false",
        )
    return HttpSettings(
        public_base_url=public_base_url,
        root_path=root_path,
        app_origins=app_origins,
        jwt_secrets=jwt_secrets,
        jwt_jwks_urls=jwks_urls,
        jwt_audience=env.optional("JWT_AUDIENCE") or _default(HttpSettings, "jwt_audience"),
        jwt_issuer=env.optional("JWT_ISSUER"),
        jwt_leeway_seconds=env.integer(
            "JWT_LEEWAY_SECONDS", _default(HttpSettings, "jwt_leeway_seconds"), 0, 300
        ),
        jwt_user_claim=env.optional("JWT_USER_CLAIM") or _default(HttpSettings, "jwt_user_claim"),
        dev_login_enabled=dev_login,
        host=host,
        port=env.integer("PORT", _default(HttpSettings, "port"), 1, 65535),
        live_heartbeat_seconds=env.integer(
            "LIVE_HEARTBEAT_SECONDS", _default(HttpSettings, "live_heartbeat_seconds"), 1, 300
        ),
    )


# A path prefix as a proxy mounts it: segments of URL-safe characters, no dot segments.
_ROOT_PATH = re.compile(r"(/[A-Za-z0-9._~-]+)+")


def _read_root_path(env: _Environment, public_base_url: str) -> tuple[str, str]:
    """(PUBLIC_BASE_URL with the prefix, the prefix) from PUBLIC_BASE_URL and ROOT_PATH.

    The prefix may be given either way: as ROOT_PATH, or as the path of PUBLIC_BASE_URL
    (`https://app.example.com/calendly`); given both ways, they must agree.
    """
    base_path = urlsplit(public_base_url).path.rstrip("/") if public_base_url else ""
    raw = env.optional("ROOT_PATH")
    if raw is None:
        root = base_path
        problem_name = "PUBLIC_BASE_URL"
    else:
        root = raw.rstrip("/")
        problem_name = "ROOT_PATH"
    if root and (
        not _ROOT_PATH.fullmatch(root) or any(part in (".", "..") for part in root.split("/"))
    ):
        env.problem(
            problem_name,
            f"{problem_name} path {_shown(root)} is not a path prefix; give one like /calendly "
            "(starting with /, letters, digits and - . _ ~ between the slashes)",
        )
        return public_base_url, ""
    if raw is not None and base_path and base_path != root:
        env.problem(
            "ROOT_PATH",
            f"ROOT_PATH is {_shown(root or '/')} but PUBLIC_BASE_URL ends in the path "
            f"{_shown(base_path)}; give the prefix once (either way) or make them agree",
        )
        return public_base_url, ""
    if public_base_url and not base_path:
        public_base_url += root
    return public_base_url, root


def _read_jwt_secrets(env: _Environment) -> tuple[Secret, ...]:
    raw = env.optional("JWT_SECRET")
    if raw is None:
        return ()
    secrets = _split_list(raw)
    if not secrets:
        env.problem("JWT_SECRET", "JWT_SECRET is empty; unset it or give 32+ random characters")
        return ()
    for position, secret in enumerate(secrets, start=1):
        if len(secret) < JWT_SECRET_MIN_LENGTH:
            which = "JWT_SECRET" if len(secrets) == 1 else f"JWT_SECRET entry {position}"
            env.problem(
                "JWT_SECRET",
                f"{which} is too short; use at least {JWT_SECRET_MIN_LENGTH} random characters "
                "(the value is not shown)",
            )
            return ()
    return tuple(Secret(secret) for secret in secrets)


def _read_worker(env: _Environment) -> WorkerSettings:
    defaults = WorkerSettings
    poll = env.integer(
        "WORKER_POLL_MILLISECONDS", _milliseconds(_default(defaults, "poll_seconds")), 50, 60_000
    )
    retry_base = env.integer(
        "WORKER_RETRY_BASE_MILLISECONDS",
        _milliseconds(_default(defaults, "retry_base_seconds")),
        10,
        3_600_000,
    )
    retry_max = env.integer(
        "WORKER_RETRY_MAX_SECONDS", round(_default(defaults, "retry_max_seconds")), 1, 86_400
    )
    return WorkerSettings(
        concurrency=env.integer("WORKER_CONCURRENCY", _default(defaults, "concurrency"), 1, 64),
        poll_seconds=poll / 1000,
        lease_seconds=env.integer(
            "WORKER_LEASE_SECONDS", _default(defaults, "lease_seconds"), 10, 3600
        ),
        retry_base_seconds=retry_base / 1000,
        retry_max_seconds=float(retry_max),
        sync_interval_seconds=env.integer(
            "SYNC_INTERVAL_SECONDS", _default(defaults, "sync_interval_seconds"), 60, 30 * 86_400
        ),
        plan_poll_seconds=env.integer(
            "PLAN_POLL_SECONDS", _default(defaults, "plan_poll_seconds"), 10, 86_400
        ),
        watched_poll_seconds=env.integer(
            "WATCHED_POLL_SECONDS", _default(defaults, "watched_poll_seconds"), 10, 300
        ),
        subscription_check_seconds=env.integer(
            "SUBSCRIPTION_CHECK_SECONDS",
            _default(defaults, "subscription_check_seconds"),
            10,
            30 * 86_400,
        ),
        grant_check_seconds=env.integer(
            "GRANT_CHECK_SECONDS", _default(defaults, "grant_check_seconds"), 60, 7 * 86_400
        ),
        plan_recheck_seconds=env.integer(
            "PLAN_RECHECK_SECONDS", _default(defaults, "plan_recheck_seconds"), 60, 30 * 86_400
        ),
        change_log_retention_days=env.integer(
            "CHANGE_LOG_RETENTION_DAYS", _default(defaults, "change_log_retention_days"), 1, 365
        ),
        webhook_payload_retention_days=env.integer(
            "WEBHOOK_PAYLOAD_RETENTION_DAYS",
            _default(defaults, "webhook_payload_retention_days"),
            1,
            3650,
        ),
    )


# An endpoint's name in HOST_WEBHOOK_URL (`crm=https://...`), _SECRET and _EVENTS; unnamed: this.
DEFAULT_ENDPOINT: Final = "default"
_ENDPOINT_NAME: Final = re.compile(r"([A-Za-z0-9_-]{1,64})=(.*)", re.DOTALL)
# Standard Webhooks' secrets: `whsec_` and the base64 of 24 to 64 random bytes.
_WHSEC: Final = re.compile(r"whsec_([A-Za-z0-9+/]+={0,2})")
WHSEC_MIN_BYTES: Final = 24


def _named_entries(raw: str, *, looks_named: Callable[[str], bool]) -> list[tuple[str, str]]:
    """`name=value,name=value` or one unnamed value (named DEFAULT_ENDPOINT)."""
    entries: list[tuple[str, str]] = []
    for entry in _split_list(raw):
        found = _ENDPOINT_NAME.fullmatch(entry)
        if found and looks_named(found[2]):
            entries.append((found[1], found[2].strip()))
        else:
            entries.append((DEFAULT_ENDPOINT, entry))
    return entries


def whsec_problem(secret: str) -> str | None:
    """Why `secret` is no Standard Webhooks secret, or None (never repeats it)."""
    found = _WHSEC.fullmatch(secret)
    if found is None:
        return "must be whsec_ followed by base64 (e.g. whsec_ + 32 random bytes in base64)"
    try:
        size = len(base64.b64decode(found[1] + "=" * (-len(found[1]) % 4), validate=True))
    except ValueError:
        return "is not whsec_ followed by base64"
    if size < WHSEC_MIN_BYTES:
        return f"is too short: whsec_ and the base64 of at least {WHSEC_MIN_BYTES} random bytes"
    return None


def _read_host_webhooks(env: _Environment) -> HostWebhookSettings:
    """HOST_WEBHOOK_URL, _SECRET, _EVENTS: one endpoint or several named ones (DR-34)."""
    raw_urls = env.optional("HOST_WEBHOOK_URL")
    raw_secrets = env.optional("HOST_WEBHOOK_SECRET")
    raw_events = env.optional("HOST_WEBHOOK_EVENTS")
    nice = env.integer("HOST_WEBHOOK_NICE", _default(HostWebhookSettings, "nice"), 0, 19)
    if raw_urls is None:
        for name, raw in (
            ("HOST_WEBHOOK_SECRET", raw_secrets),
            ("HOST_WEBHOOK_EVENTS", raw_events),
        ):
            if raw is not None:
                env.problem(name, f"{name} is set but HOST_WEBHOOK_URL is not; set both or neither")
        return HostWebhookSettings(nice=nice)
    urls: dict[str, str] = {}
    entries = _named_entries(raw_urls, looks_named=lambda value: "://" in value)
    for position, (name, url) in enumerate(entries, start=1):
        which = "HOST_WEBHOOK_URL" if len(entries) == 1 else f"HOST_WEBHOOK_URL entry {position}"
        if name in urls:
            env.problem("HOST_WEBHOOK_URL", f"{which} names {name!r} a second time")
            continue
        reason = _url_problem(url)
        if reason is not None:
            env.problem("HOST_WEBHOOK_URL", f"{which} {reason}")
        urls[name] = url
    if not urls and env.all_valid("HOST_WEBHOOK_URL"):
        env.problem("HOST_WEBHOOK_URL", "HOST_WEBHOOK_URL holds no URL; give e.g. https://app/hook")
    secrets = _read_webhook_secrets(env, raw_secrets, urls)
    events = _read_webhook_events(env, raw_events, urls)
    return HostWebhookSettings(
        endpoints=tuple(
            HostWebhookEndpoint(
                name=name,
                url=url,
                secrets=tuple(Secret(s) for s in secrets.get(name, ())),
                event_types=events.get(name, ()),
            )
            for name, url in urls.items()
        ),
        nice=nice,
    )


def _read_webhook_secrets(
    env: _Environment, raw: str | None, urls: Mapping[str, str]
) -> dict[str, list[str]]:
    """Each endpoint's secrets: `name=whsec_a|whsec_b`; unnamed ones serve every other."""
    named: dict[str, list[str]] = {}
    shared: list[str] = []
    entries = _named_entries(raw or "", looks_named=lambda value: value.startswith("whsec_"))
    for position, (name, value) in enumerate(entries, start=1):
        keys = [k.strip() for k in value.split("|") if k.strip()]
        for key in keys:
            reason = whsec_problem(key)
            if reason is not None:
                env.problem(
                    "HOST_WEBHOOK_SECRET",
                    f"HOST_WEBHOOK_SECRET entry {position} {reason} (the value is not shown)",
                )
        if name == DEFAULT_ENDPOINT and DEFAULT_ENDPOINT not in urls:
            shared += keys
        elif name not in urls:
            env.problem(
                "HOST_WEBHOOK_SECRET",
                f"HOST_WEBHOOK_SECRET names {name!r}, which HOST_WEBHOOK_URL does not",
            )
        else:
            named.setdefault(name, []).extend(keys)
    for name in urls:
        if not named.get(name):
            named[name] = shared
        if not named[name]:
            env.problem(
                "HOST_WEBHOOK_SECRET",
                f"HOST_WEBHOOK_SECRET has no secret for {name!r} (HOST_WEBHOOK_URL names it): "
                "every webhook is signed; set whsec_ + the base64 of 32 random bytes "
                "(`name=whsec_...` for a named endpoint)",
            )
    return named


def _read_webhook_events(
    env: _Environment, raw: str | None, urls: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    events: dict[str, tuple[str, ...]] = {}
    entries = _named_entries(raw or "", looks_named=lambda value: True)
    for name, value in entries:
        patterns = tuple(p.strip() for p in value.split("|") if p.strip())
        bad = [p for p in patterns if not is_event_pattern(p)]
        if bad:
            env.problem(
                "HOST_WEBHOOK_EVENTS",
                f"HOST_WEBHOOK_EVENTS has {', '.join(map(repr, bad))}: not an event; use names "
                "such as meeting.created or families such as meeting.*, invitee.*, connection.*",
            )
        if name not in urls:
            env.problem(
                "HOST_WEBHOOK_EVENTS",
                f"HOST_WEBHOOK_EVENTS names {name!r}, which HOST_WEBHOOK_URL does not",
            )
        events[name] = patterns
    return events


# A scraper's bearer token is guessable offline no more than a JWT secret may be.
MIN_METRICS_TOKEN_LENGTH: Final = 32


def _read_metrics(env: _Environment) -> MetricsSettings:
    enabled = env.boolean("METRICS_ENABLED", default=_default(MetricsSettings, "enabled"))
    raw_token = env.optional("METRICS_TOKEN")
    raw_dir = env.optional("PROMETHEUS_MULTIPROC_DIR")
    if not enabled:
        return MetricsSettings()
    token = None
    if raw_token is None:
        env.problem(
            "METRICS_TOKEN",
            "METRICS_ENABLED=true needs METRICS_TOKEN, the bearer token a scraper must send "
            f"to /metrics ({MIN_METRICS_TOKEN_LENGTH}+ random characters, e.g. from "
            "`openssl rand -base64 32`); or set METRICS_ENABLED=false",
        )
    elif len(raw_token) < MIN_METRICS_TOKEN_LENGTH:
        env.problem(
            "METRICS_TOKEN",
            f"METRICS_TOKEN is {len(raw_token)} characters; use at least "
            f"{MIN_METRICS_TOKEN_LENGTH} random ones",
        )
    else:
        token = Secret(raw_token)
    directory = None
    if raw_dir is None:
        env.problem(
            "PROMETHEUS_MULTIPROC_DIR",
            "METRICS_ENABLED=true needs PROMETHEUS_MULTIPROC_DIR in the environment of every "
            "service process, an empty directory they share (emptied before they start), so "
            "that any of them answers /metrics with the totals of all",
        )
    elif not Path(raw_dir).is_dir() or not os.access(raw_dir, os.W_OK | os.X_OK):
        env.problem(
            "PROMETHEUS_MULTIPROC_DIR",
            f"PROMETHEUS_MULTIPROC_DIR is {_shown(raw_dir)}, which is not a directory this "
            "process may write in; create it (empty) before the service starts",
        )
    else:
        directory = Path(raw_dir)
    return MetricsSettings(enabled=True, token=token, multiproc_dir=directory)


# OTLP/HTTP's path for traces, added to OTEL_EXPORTER_OTLP_ENDPOINT (the base of every signal).
OTLP_TRACES_PATH: Final = "/v1/traces"
_HEADER_NAME: Final = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _read_tracing(env: _Environment) -> TracingSettings:
    disabled = env.boolean("OTEL_SDK_DISABLED", default=False)
    base = _otlp_endpoint(env, "OTEL_EXPORTER_OTLP_ENDPOINT")
    traces = _otlp_endpoint(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    if env.optional("OTEL_EXPORTER_OTLP_TRACES_HEADERS") is not None:
        headers = _otlp_headers(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS")
    else:
        headers = _otlp_headers(env, "OTEL_EXPORTER_OTLP_HEADERS")
    service_name = env.optional("OTEL_SERVICE_NAME")
    if disabled or (base is None and traces is None):
        return TracingSettings()
    # As OpenTelemetry reads them: the traces URL is used as it is, the base gets /v1/traces.
    endpoint = traces if traces is not None else f"{(base or '').rstrip('/')}{OTLP_TRACES_PATH}"
    return TracingSettings(endpoint=endpoint, headers=headers, service_name=service_name)


def _otlp_endpoint(env: _Environment, name: str) -> str | None:
    """An OTLP/HTTP endpoint: http(s), plain http allowed anywhere (a collector beside the
    service usually listens without TLS), no user:password (credentials go in the headers)."""
    raw = env.optional(name)
    if raw is None:
        return None
    example = "http://otel-collector:4318"
    if "@" in raw:
        env.problem(
            name,
            f"{name} must not contain user:password@ (the value is not shown); give "
            "credentials in OTEL_EXPORTER_OTLP_HEADERS",
        )
        return None
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - reading it is what validates it
    except ValueError:
        env.problem(
            name, f"{name} is {_shown(raw)}, which cannot be read as a URL; use e.g. {example}"
        )
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        env.problem(
            name,
            f"{name} is {_shown(raw)}; use the http(s) URL of an OTLP/HTTP endpoint such as "
            f"{example} (OTLP over gRPC is not supported)",
        )
        return None
    if parts.query or parts.fragment:
        env.problem(name, f"{name} is {_shown(raw)}; remove the query string and fragment")
        return None
    return raw


def _otlp_headers(env: _Environment, name: str) -> tuple[tuple[str, Secret], ...]:
    """`name1=value1,name2=value2` (values URL-encoded), as OpenTelemetry reads them."""
    raw = env.optional(name)
    if raw is None:
        return ()
    headers: list[tuple[str, Secret]] = []
    for position, entry in enumerate(_split_list(raw), start=1):
        key, equals, value = entry.partition("=")
        if not equals or not _HEADER_NAME.fullmatch(key.strip()) or not value.strip():
            env.problem(
                name,
                f"{name} entry {position} is not name=value (the value is not shown: it is "
                "usually an API key); write e.g. api-key=...,other=...",
            )
            continue
        headers.append((key.strip().lower(), Secret(unquote(value.strip()))))
    return tuple(headers)


def _read_logging(env: _Environment) -> LoggingSettings:
    log_format = env.choice(
        "LOG_FORMAT", _default(LoggingSettings, "format"), LOG_FORMATS, str.lower
    )
    return LoggingSettings(
        format=cast(LogFormat, log_format),
        level=env.choice("LOG_LEVEL", _default(LoggingSettings, "level"), LOG_LEVELS, str.upper),
        requests=env.choice(
            "REQUEST_LOG_LEVEL",
            _default(LoggingSettings, "requests"),
            ("DEBUG", "INFO"),
            str.upper,
        ),
        webhook_one_in=env.integer(
            "WEBHOOK_LOG_ONE_IN", _default(LoggingSettings, "webhook_one_in"), 1, 1_000_000
        ),
    )


class _Environment:
    """Reads variables and collects problems instead of stopping at the first one.

    A bad or missing value is recorded as a problem and a placeholder is returned, so reading
    goes on and every problem is reported at once.
    """

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ
        self._problems: list[tuple[str, str]] = []
        self._failed: set[str] = set()

    def problem(self, name: str, text: str) -> None:
        self._problems.append((name, text))
        self._failed.add(name)

    def raise_problems(self) -> None:
        """Raise ConfigError with every problem, in the order of VARIABLES, if there are any."""
        if self._problems:
            order = {name: position for position, name in enumerate(VARIABLES)}
            ordered = sorted(self._problems, key=lambda found: order.get(found[0], len(order)))
            names = tuple(dict.fromkeys(name for name, _ in ordered))
            raise ConfigError([text for _, text in ordered], names)

    def all_valid(self, *names: str) -> bool:
        return self._failed.isdisjoint(names)

    def optional(self, name: str) -> str | None:
        """The value without surrounding whitespace; None when unset or blank."""
        return environment_value(self._environ, name)

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

    def url_list(self, name: str) -> tuple[str, ...]:
        """Comma-separated http(s) URLs, https unless loopback; () when unset."""
        raw = self.optional(name)
        if raw is None:
            return ()
        urls: list[str] = []
        for position, entry in enumerate(_split_list(raw), start=1):
            reason = _url_problem(entry)
            if reason is not None:
                self.problem(name, f"{name} entry {position} {reason}")
            else:
                urls.append(entry)
        if not urls and self.all_valid(name):
            self.problem(name, f"{name} holds no URL; give e.g. https://auth.example.com/jwks.json")
        return tuple(urls)

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
