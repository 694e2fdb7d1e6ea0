"""Settings: a valid environment loads, every problem is named at once, secrets never show."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.secret import Secret
from entrypoints.live import DEFAULT_HEARTBEAT_SECONDS
from entrypoints.service.http.cursors import MeetingCursors
from entrypoints.service.http.sessions import UserSessions
from entrypoints.service.server import http_config
from entrypoints.settings import (
    CalendlySettings,
    ConfigError,
    DatabaseSettings,
    EncryptionSettings,
    HostWebhookEndpoint,
    HttpSettings,
    LoggingSettings,
    Settings,
    load_dispatcher_settings,
    load_settings,
)
from tests.support.environment import (
    CLIENT_SECRET,
    DB_PASSWORD,
    JWT_SECRET,
    KEY_NEW,
    KEY_OLD,
    OLD_SIGNING_KEY,
    SIGNING_KEY,
    b64,
    full_env,
    minimal_env,
)

WHSEC = "whsec_" + b64(bytes(range(32)))
WHSEC_OLD = "whsec_" + b64(bytes(range(32, 64)))
EVERY_INTERFACE = "0.0.0.0"  # noqa: S104 - a HOST value under test; nothing binds to it


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    return caught.value.problems


def single_problem(env: dict[str, str]) -> str:
    found = problems(env)
    assert len(found) == 1, found
    return found[0]


def test_full_environment_loads() -> None:
    settings = load_settings(full_env())
    assert settings == Settings(
        database=DatabaseSettings(
            url=Secret(f"postgresql://owner:{DB_PASSWORD}@localhost:5432/calendly"),
            runtime_role="app_runtime",
            pool_min_size=2,
            pool_max_size=20,
        ),
        calendly=CalendlySettings(
            client_id="client-id",
            client_secret=Secret(CLIENT_SECRET),
            webhook_signing_keys=(Secret(SIGNING_KEY), Secret(OLD_SIGNING_KEY)),
            auth_base_url="http://127.0.0.1:8765",
            api_base_url="http://localhost:8765",
            scope="default",
            oauth_redirect_uri="https://calendly.example.com/custom/callback",
            webhook_callback_base="https://hooks.example.com/in",
            webhook_tolerance_seconds=300,
            refresh_margin_seconds=600,
        ),
        encryption=EncryptionSettings(keys={"k2": KEY_NEW, "k1": KEY_OLD}, active_key="k2"),
        http=HttpSettings(
            public_base_url="https://calendly.example.com",
            app_origins=("https://app.example.com", "http://localhost:3000"),
            jwt_secrets=(Secret(JWT_SECRET),),
            jwt_audience="my-app",
            jwt_issuer="https://auth.example.com",
            dev_login_enabled=False,
            host="192.0.2.10",
            port=9000,
        ),
        logging=LoggingSettings(format="json", level="DEBUG"),
    )


def test_defaults_are_derived() -> None:
    settings = load_settings(minimal_env(PUBLIC_BASE_URL="https://calendly.example.com/base/"))
    assert settings.http.public_base_url == "https://calendly.example.com/base"
    assert (
        settings.calendly.oauth_redirect_uri
        == "https://calendly.example.com/base/oauth/calendly/callback"
    )
    assert (
        settings.calendly.webhook_callback_base
        == "https://calendly.example.com/base/webhooks/calendly"
    )
    assert settings.http.app_origins == ("https://calendly.example.com",)
    assert settings.database.runtime_role == "calendly_app"
    assert (settings.database.pool_min_size, settings.database.pool_max_size) == (1, 10)
    assert settings.calendly.auth_base_url == "https://auth.calendly.com"
    assert settings.calendly.api_base_url == "https://api.calendly.com"
    assert settings.calendly.scope is None
    assert settings.calendly.webhook_signing_keys == (Secret(SIGNING_KEY),)
    assert settings.encryption.keys == {"k2": KEY_NEW}
    assert settings.encryption.active_key == "k2"
    assert settings.http.jwt_audience == "authenticated"
    assert settings.http.jwt_issuer is None
    assert settings.http.dev_login_enabled is False
    assert settings.calendly.webhook_tolerance_seconds == 180
    assert settings.calendly.refresh_margin_seconds == 300
    assert settings.logging.format == "auto"
    assert settings.logging.level == "INFO"
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8000)


def test_origin_of_a_local_public_url_keeps_its_port() -> None:
    settings = load_settings(minimal_env(PUBLIC_BASE_URL="http://localhost:8000"))
    assert settings.http.app_origins == ("http://localhost:8000",)
    assert settings.calendly.oauth_redirect_uri == "http://localhost:8000/oauth/calendly/callback"


def test_ipv6_loopback_is_local() -> None:
    settings = load_settings(minimal_env(PUBLIC_BASE_URL="http://[::1]:8000"))
    assert settings.http.app_origins == ("http://[::1]:8000",)


def test_blank_values_count_as_unset() -> None:
    settings = load_settings(minimal_env(LOG_LEVEL="  ", PORT=""))
    assert (settings.logging.level, settings.http.port) == ("INFO", 8000)


@pytest.mark.parametrize(
    "name",
    [
        "DATABASE_URL",
        "CALENDLY_OAUTH_CLIENT_ID",
        "CALENDLY_OAUTH_CLIENT_SECRET",
        "CALENDLY_WEBHOOK_SIGNING_KEY",
        "PUBLIC_BASE_URL",
        "TOKEN_ENCRYPTION_KEY",
        "JWT_SECRET",
    ],
)
def test_each_missing_required_variable_is_named(name: str) -> None:
    env = minimal_env()
    del env[name]
    problem = single_problem(env)
    assert problem.startswith(f"{name} is not set; set it to ")


def test_an_empty_environment_lists_every_required_variable() -> None:
    found = problems({})
    assert [problem.split(" ", 1)[0] for problem in found] == [
        "DATABASE_URL",
        "CALENDLY_OAUTH_CLIENT_ID",
        "CALENDLY_OAUTH_CLIENT_SECRET",
        "CALENDLY_WEBHOOK_SIGNING_KEY",
        "PUBLIC_BASE_URL",
        "TOKEN_ENCRYPTION_KEY",
        "JWT_SECRET",
    ]


def test_several_problems_are_reported_together() -> None:
    env = minimal_env(PORT="eighty", DEV_LOGIN_ENABLED="sure", LOG_FORMAT="xml")
    del env["JWT_SECRET"]
    with pytest.raises(ConfigError) as caught:
        load_settings(env)
    found = caught.value.problems
    assert [problem.split(" ", 1)[0] for problem in found] == [
        "JWT_SECRET",
        "DEV_LOGIN_ENABLED",
        "LOG_FORMAT",
        "PORT",
    ]
    text = str(caught.value)
    assert text.startswith("the configuration has 4 problems:\n")
    assert all(f"  - {problem}" in text for problem in found)


def test_a_single_problem_reads_in_the_singular() -> None:
    with pytest.raises(ConfigError, match=r"^the configuration has 1 problem:\n"):
        load_settings(minimal_env(PORT="0"))


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("DATABASE_URL", "mysql://root:pw@localhost/db", "must start with postgresql://"),
        ("DATABASE_RUNTIME_ROLE", "App-Role", "plain SQL identifier"),
        ("DATABASE_RUNTIME_ROLE", "1app", "plain SQL identifier"),
        ("DATABASE_RUNTIME_ROLE", 'app"; drop table x; --', "plain SQL identifier"),
        ("DB_POOL_MIN_SIZE", "0", "from 1 to 100"),
        ("DB_POOL_MAX_SIZE", "101", "from 1 to 100"),
        ("DB_POOL_MAX_SIZE", "ten", "from 1 to 100"),
        ("DB_POOL_MAX_SIZE", "2.5", "from 1 to 100"),
        ("CALENDLY_WEBHOOK_SIGNING_KEY", ", ,", "at least one key"),
        ("CALENDLY_AUTH_BASE_URL", "auth.calendly.com", "http(s) URL"),
        ("CALENDLY_API_BASE_URL", "http://api.calendly.com", "use https://"),
        ("CALENDLY_API_BASE_URL", "https://api.calendly.com:99999", "port"),
        ("PUBLIC_BASE_URL", "http://calendly.example.com", "use https://"),
        ("PUBLIC_BASE_URL", "ftp://calendly.example.com", "http(s) URL"),
        ("PUBLIC_BASE_URL", "https://calendly.example.com/?a=1", "query string"),
        ("PUBLIC_BASE_URL", "https://", "http(s) URL"),
        ("CALENDLY_OAUTH_REDIRECT_URI", "http://calendly.example.com/cb", "use https://"),
        ("CALENDLY_WEBHOOK_CALLBACK_BASE", "https://x.example.com/#frag", "fragment"),
        ("APP_ORIGINS", "*", "list the exact origins"),
        ("APP_ORIGINS", "https://app.example.com/path", "has a path"),
        ("APP_ORIGINS", "http://app.example.com", "use https://"),
        ("APP_ORIGINS", " , ", "holds no origin"),
        ("TOKEN_ENCRYPTION_KEY", "k1:not-a-key", "not valid"),
        ("TOKEN_ENCRYPTION_KEY", f"k1:{b64(KEY_NEW[:16])}", "16 bytes"),
        ("JWT_SECRET", "short-secret", "at least 32"),
        ("DEV_LOGIN_ENABLED", "maybe", "true/false"),
        ("WEBHOOK_TOLERANCE_SECONDS", "0", "from 1 to 3600"),
        ("WEBHOOK_TOLERANCE_SECONDS", "3601", "from 1 to 3600"),
        ("TOKEN_REFRESH_MARGIN_SECONDS", "-1", "from 0 to 3600"),
        ("LOG_FORMAT", "xml", "json, console, auto"),
        ("LOG_LEVEL", "VERBOSE", "DEBUG, INFO, WARNING, ERROR, CRITICAL"),
        ("PORT", "65536", "from 1 to 65535"),
        ("WEBHOOK_LOG_ONE_IN", "0", "from 1 to 1000000"),
        ("WEBHOOK_LOG_ONE_IN", "every", "from 1 to 1000000"),
        ("LIVE_HEARTBEAT_SECONDS", "0", "from 1 to 300"),
        ("LIVE_HEARTBEAT_SECONDS", "15s", "from 1 to 300"),
        ("WORKER_RETRY_BASE_MILLISECONDS", "0", "from 10 to 3600000"),
        ("WORKER_RETRY_MAX_SECONDS", "soon", "from 1 to 86400"),
    ],
)
def test_malformed_values_name_the_variable(name: str, value: str, expected: str) -> None:
    problem = single_problem(minimal_env(**{name: value}))
    assert problem.startswith(name)
    assert expected in problem


def test_live_streams_beat_every_30_seconds_unless_set() -> None:
    assert load_settings(minimal_env()).http.live_heartbeat_seconds == 30
    assert load_settings(minimal_env(LIVE_HEARTBEAT_SECONDS="15")).http.live_heartbeat_seconds == 15
    # The hub's own default is the same, for whoever builds one without settings.
    assert DEFAULT_HEARTBEAT_SECONDS == 30


def test_accepted_webhook_deliveries_are_logged_one_in_a_hundred_unless_set() -> None:
    assert load_settings(minimal_env()).logging.webhook_one_in == 100
    assert load_settings(minimal_env(WEBHOOK_LOG_ONE_IN="1")).logging.webhook_one_in == 1


def test_pool_minimum_above_maximum() -> None:
    problem = single_problem(minimal_env(DB_POOL_MIN_SIZE="8", DB_POOL_MAX_SIZE="4"))
    assert "DB_POOL_MIN_SIZE (8) is larger than DB_POOL_MAX_SIZE (4)" in problem


def test_an_invalid_pool_size_does_not_add_a_comparison_problem() -> None:
    problem = single_problem(minimal_env(DB_POOL_MIN_SIZE="20", DB_POOL_MAX_SIZE="0"))
    assert problem.startswith("DB_POOL_MAX_SIZE is '0'")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("1", True), ("YES", True), ("false", False), ("0", False), ("No", False)],
)
def test_booleans(value: str, expected: bool) -> None:
    env = minimal_env(PUBLIC_BASE_URL="http://localhost:8000", DEV_LOGIN_ENABLED=value)
    assert load_settings(env).http.dev_login_enabled is expected


def test_dev_login_is_refused_on_a_public_host() -> None:
    problem = single_problem(minimal_env(DEV_LOGIN_ENABLED="true"))
    assert problem.startswith("DEV_LOGIN_ENABLED=true")
    assert "localhost" in problem


@pytest.mark.parametrize("host", [EVERY_INTERFACE, "::", "192.0.2.10", "calendly.example.com"])
def test_dev_login_is_refused_unless_the_service_listens_on_loopback_only(host: str) -> None:
    env = minimal_env(PUBLIC_BASE_URL="http://localhost:8000", DEV_LOGIN_ENABLED="true")
    problem = single_problem({**env, "HOST": host})
    assert problem.startswith("DEV_LOGIN_ENABLED=true")
    assert f"HOST is {host!r}" in problem
    assert "other machines" in problem
    assert "HOST=127.0.0.1" in problem


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost", "LocalHost", ""])
def test_dev_login_is_allowed_on_a_loopback_host(host: str) -> None:
    env = minimal_env(PUBLIC_BASE_URL="http://localhost:8000", DEV_LOGIN_ENABLED="true")
    assert load_settings({**env, "HOST": host}).http.dev_login_enabled is True


def test_dev_login_on_a_public_url_and_a_public_host_names_both() -> None:
    found = problems(minimal_env(DEV_LOGIN_ENABLED="true", HOST=EVERY_INTERFACE))
    assert len(found) == 2, found
    assert "PUBLIC_BASE_URL" in found[0]
    assert "HOST is '0.0.0.0'" in found[1]


URL_SETTINGS = (
    "PUBLIC_BASE_URL",
    "CALENDLY_AUTH_BASE_URL",
    "CALENDLY_API_BASE_URL",
    "CALENDLY_OAUTH_REDIRECT_URI",
    "CALENDLY_WEBHOOK_CALLBACK_BASE",
    "APP_ORIGINS",
    "HOST_WEBHOOK_URL",
)


@pytest.mark.parametrize("name", URL_SETTINGS)
@pytest.mark.parametrize(
    "value", ["http://[::1:8000", "https://calendly.example.com]", "http://[x]"]
)
def test_a_url_with_unmatched_brackets_is_a_problem_not_a_crash(name: str, value: str) -> None:
    env = minimal_env(**{name: value})
    if name == "HOST_WEBHOOK_URL":
        env["HOST_WEBHOOK_SECRET"] = WHSEC
    problem = single_problem(env)
    assert problem.startswith(name)
    assert f"is {value!r}; it cannot be read as a URL" in problem
    assert "'[' and ']' may only enclose an IPv6 address" in problem


@pytest.mark.parametrize("host", ["[::1", "[abc]"])
def test_a_database_url_with_unmatched_brackets_is_a_problem_shown_without_its_value(
    host: str,
) -> None:
    problem = single_problem(minimal_env(DATABASE_URL=f"postgresql://o:{DB_PASSWORD}@{host}/db"))
    assert problem.startswith("DATABASE_URL cannot be read as a URL")
    assert "'[' and ']'" in problem
    assert DB_PASSWORD not in problem
    assert f"@{host}/db" not in problem


def test_redirect_uri_is_kept_exactly() -> None:
    uri = "https://calendly.example.com/oauth/calendly/callback/"
    assert (
        load_settings(minimal_env(CALENDLY_OAUTH_REDIRECT_URI=uri)).calendly.oauth_redirect_uri
        == uri
    )


def test_credentials_in_urls_are_never_echoed() -> None:
    env = minimal_env(
        DATABASE_URL=f"mysql://root:{DB_PASSWORD}@db/app",
        PUBLIC_BASE_URL=f"https://admin:{CLIENT_SECRET}@calendly.example.com",
        APP_ORIGINS=f"https://admin:{JWT_SECRET}@app.example.com",
    )
    text = str(ConfigError(problems(env)))
    assert "user:password@" in text
    for secret in (DB_PASSWORD, CLIENT_SECRET, JWT_SECRET):
        assert secret not in text


def test_problems_never_echo_secret_values() -> None:
    env = minimal_env(
        JWT_SECRET="tooshort-canary",
        TOKEN_ENCRYPTION_KEY=f"k1:{b64(KEY_NEW[:20])}",
        DATABASE_URL=f"mysql://root:{DB_PASSWORD}@db/app",
    )
    text = str(ConfigError(problems(env)))
    for secret in ("tooshort-canary", b64(KEY_NEW[:20]), DB_PASSWORD):
        assert secret not in text


def test_repr_shows_no_secret() -> None:
    settings = load_settings(full_env())
    secrets = [
        DB_PASSWORD,
        CLIENT_SECRET,
        SIGNING_KEY,
        OLD_SIGNING_KEY,
        JWT_SECRET,
        b64(KEY_NEW),
        b64(KEY_OLD),
        repr(KEY_NEW),
        repr(KEY_OLD),
        KEY_NEW.hex(),
    ]
    for text in (repr(settings), str(settings), f"{settings}", f"{settings!r}"):
        assert "Settings(" in text
        assert "'k2'" in text
        assert "client-id" in text
        for secret in secrets:
            assert secret not in text


def test_secret_values_lists_what_the_log_redactor_must_scrub() -> None:
    values = load_settings(full_env()).secret_values()
    for secret in (DB_PASSWORD, CLIENT_SECRET, SIGNING_KEY, OLD_SIGNING_KEY, JWT_SECRET):
        assert secret in values
    assert b64(KEY_NEW) in values
    assert len(values) == len(set(values))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://app:pa%zzword@db.example.com/calendly",
        "postgresql://app:password@db.example.com/calendly?nonsense=1",
    ],
)
def test_a_database_url_libpq_cannot_read_is_refused_without_showing_it(url: str) -> None:
    problem = single_problem(minimal_env(DATABASE_URL=url))
    assert problem.startswith("DATABASE_URL cannot be read by libpq")
    assert "pa%zz" not in problem
    assert "password" not in problem.split("(")[0]
    assert "nonsense" not in problem


NEWER_JWT_SECRET = "a-newer-jwt-secret-of-at-least-32-characters"
JWKS = "https://auth.example.com/.well-known/jwks.json"


def jwks_only(**values: str) -> dict[str, str]:
    env = minimal_env(**values)
    del env["JWT_SECRET"]
    return env


def test_jwt_settings_default_to_a_30_second_leeway_and_the_sub_claim() -> None:
    http = load_settings(minimal_env()).http
    assert http.jwt_secrets == (Secret(JWT_SECRET),)
    assert http.jwt_jwks_urls == ()
    assert (http.jwt_leeway_seconds, http.jwt_user_claim) == (30, "sub")


def test_jwt_secret_takes_several_secrets_newest_first() -> None:
    http = load_settings(minimal_env(JWT_SECRET=f" {NEWER_JWT_SECRET} , {JWT_SECRET}")).http
    assert http.jwt_secrets == (Secret(NEWER_JWT_SECRET), Secret(JWT_SECRET))


def test_a_short_secret_in_the_list_is_named_by_position_without_its_value() -> None:
    problem = single_problem(minimal_env(JWT_SECRET=f"{JWT_SECRET},short-one"))
    assert problem.startswith("JWT_SECRET entry 2 is too short")
    assert "short-one" not in problem


def test_jwks_urls_alone_are_enough() -> None:
    local = "http://127.0.0.1:9999/jwks.json"
    env = jwks_only(
        JWT_JWKS_URL=f"{JWKS}, {local}", JWT_LEEWAY_SECONDS="0", JWT_USER_CLAIM="user_id"
    )
    http = load_settings(env).http
    assert http.jwt_secrets == ()
    assert http.jwt_jwks_urls == (JWKS, local)
    assert (http.jwt_leeway_seconds, http.jwt_user_claim) == (0, "user_id")


def test_neither_a_secret_nor_a_jwks_url_is_one_clear_problem() -> None:
    problem = single_problem(jwks_only())
    assert problem.startswith("JWT_SECRET is not set")
    assert "JWT_JWKS_URL" in problem


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("http://auth.example.com/jwks.json", "JWT_JWKS_URL entry 1 is 'http://auth"),
        (f"{JWKS},ftp://x", "JWT_JWKS_URL entry 2 is 'ftp://x'"),
    ],
)
def test_a_jwks_url_must_be_https_unless_loopback(value: str, expected: str) -> None:
    assert single_problem(jwks_only(JWT_JWKS_URL=value)).startswith(expected)


@pytest.mark.parametrize("value", ["-1", "301", "soon"])
def test_the_leeway_is_0_to_300_seconds(value: str) -> None:
    assert single_problem(minimal_env(JWT_LEEWAY_SECONDS=value)).startswith("JWT_LEEWAY_SECONDS")


def test_the_change_log_keeps_14_days_by_default_and_1_to_365() -> None:
    assert load_settings(minimal_env()).worker.change_log_retention_days == 14
    settings = load_settings(minimal_env(CHANGE_LOG_RETENTION_DAYS="30"))
    assert settings.worker.change_log_retention_days == 30
    assert (
        load_settings(minimal_env(CHANGE_LOG_RETENTION_DAYS="1")).worker.change_log_retention_days
        == 1
    )
    assert (
        load_settings(minimal_env(CHANGE_LOG_RETENTION_DAYS="365")).worker.change_log_retention_days
        == 365
    )
    for value in ("0", "366", "two weeks"):
        problem = single_problem(minimal_env(CHANGE_LOG_RETENTION_DAYS=value))
        assert problem.startswith("CHANGE_LOG_RETENTION_DAYS")
        assert "from 1 to 365" in problem


def test_dev_login_needs_an_hs256_secret() -> None:
    env = jwks_only(
        JWT_JWKS_URL=JWKS, PUBLIC_BASE_URL="http://localhost:8000", DEV_LOGIN_ENABLED="true"
    )
    problem = single_problem(env)
    assert problem.startswith("DEV_LOGIN_ENABLED=true signs tokens with an HS256 secret")
    assert "JWT_SECRET" in problem


def test_every_jwt_secret_is_scrubbed_from_logs() -> None:
    settings = load_settings(minimal_env(JWT_SECRET=f"{NEWER_JWT_SECRET},{JWT_SECRET}"))
    values = settings.secret_values()
    assert NEWER_JWT_SECRET in values
    assert JWT_SECRET in values


def test_without_a_jwt_secret_cursors_are_keyed_from_the_token_encryption_key() -> None:
    with_secret = http_config(load_settings(minimal_env(JWT_JWKS_URL=JWKS)))
    jwks = http_config(load_settings(jwks_only(JWT_JWKS_URL=JWKS)))
    assert with_secret.cursor_key is None  # derived from the first JWT secret, as before
    assert jwks.cursor_key is not None
    assert jwks.cursor_key == MeetingCursors.key_from_encryption_key(KEY_NEW)
    assert jwks.cursor_key != KEY_NEW
    rotated = http_config(
        load_settings(jwks_only(JWT_JWKS_URL=JWKS, TOKEN_ENCRYPTION_KEY=f"k1:{b64(KEY_OLD)}"))
    )
    assert rotated.cursor_key != jwks.cursor_key


def test_root_path_is_the_path_of_public_base_url_or_root_path() -> None:
    from_base = load_settings(minimal_env(PUBLIC_BASE_URL="https://app.example.com/calendly"))
    assert from_base.http.root_path == "/calendly"
    assert from_base.http.public_base_url == "https://app.example.com/calendly"

    from_setting = load_settings(
        minimal_env(PUBLIC_BASE_URL="https://app.example.com", ROOT_PATH="/calendly/")
    )
    assert from_setting.http.root_path == "/calendly"
    assert from_setting.http.public_base_url == "https://app.example.com/calendly"
    assert (
        from_setting.calendly.oauth_redirect_uri
        == "https://app.example.com/calendly/oauth/calendly/callback"
    )
    assert (
        from_setting.calendly.webhook_callback_base
        == "https://app.example.com/calendly/webhooks/calendly"
    )
    assert from_setting.http.app_origins == ("https://app.example.com",)
    assert http_config(from_setting).root_path == "/calendly"

    both = load_settings(
        minimal_env(PUBLIC_BASE_URL="https://app.example.com/cal", ROOT_PATH="/cal")
    )
    assert both.http.root_path == "/cal"
    assert both.http.public_base_url == "https://app.example.com/cal"


def test_no_root_path_by_default() -> None:
    settings = load_settings(minimal_env(PUBLIC_BASE_URL="https://calendly.example.com"))
    assert settings.http.root_path == ""


@pytest.mark.parametrize(
    "value", ["calendly", "/a//b", "/a/../b", "/with space", "/<script>", '/"x"', "/a?b"]
)
def test_a_root_path_that_is_not_a_prefix_is_refused(value: str) -> None:
    problem = single_problem(
        minimal_env(PUBLIC_BASE_URL="https://app.example.com", ROOT_PATH=value)
    )
    assert problem.startswith("ROOT_PATH ")
    assert "like /calendly" in problem


def test_root_path_and_the_path_of_public_base_url_must_agree() -> None:
    problem = single_problem(
        minimal_env(PUBLIC_BASE_URL="https://app.example.com/one", ROOT_PATH="/two")
    )
    for named in ("ROOT_PATH", "/one", "/two"):
        assert named in problem


def test_the_page_knows_the_sandbox_only_on_a_local_stack() -> None:
    local = minimal_env(
        PUBLIC_BASE_URL="http://127.0.0.1:8000",
        DEV_LOGIN_ENABLED="true",
        CALENDLY_API_BASE_URL="http://127.0.0.1:8765",
        CALENDLY_AUTH_BASE_URL="http://127.0.0.1:8765",
    )
    assert http_config(load_settings(local)).sandbox_url == "http://127.0.0.1:8765"
    without_dev_login = {**local, "DEV_LOGIN_ENABLED": "false"}
    assert http_config(load_settings(without_dev_login)).sandbox_url is None
    assert http_config(load_settings(minimal_env())).sandbox_url is None


@pytest.mark.parametrize("sign_in", ["JWT_SECRET", "JWKS only"])
def test_user_sessions_are_keyed_from_every_encryption_key_the_active_one_first(
    sign_in: str,
) -> None:
    env = full_env() if sign_in == "JWT_SECRET" else jwks_only(JWT_JWKS_URL=JWKS)
    env["TOKEN_ENCRYPTION_KEY"] = f"k2:{b64(KEY_NEW)},k1:{b64(KEY_OLD)}"
    config = http_config(load_settings(env))
    assert config.session_keys == (
        ("k2", UserSessions.key_from_encryption_key(KEY_NEW)),
        ("k1", UserSessions.key_from_encryption_key(KEY_OLD)),
    )
    assert UserSessions.key_from_encryption_key(KEY_NEW) not in (
        KEY_NEW,
        MeetingCursors.key_from_encryption_key(KEY_NEW),
    )


# ------------------------------------------------------------------ host webhooks (DR-34)
def test_no_host_webhook_url_means_no_endpoint() -> None:
    assert load_settings(minimal_env()).host_webhooks.endpoints == ()


def test_one_host_webhook_url_is_the_default_endpoint() -> None:
    settings = load_settings(
        minimal_env(HOST_WEBHOOK_URL="https://a.example/hooks/calendly", HOST_WEBHOOK_SECRET=WHSEC)
    )
    assert settings.host_webhooks.endpoints == (
        HostWebhookEndpoint(
            name="default", url="https://a.example/hooks/calendly", secrets=(Secret(WHSEC),)
        ),
    )
    assert WHSEC in settings.secret_values()


def test_named_endpoints_with_rotating_secrets_and_event_filters() -> None:
    env = minimal_env(
        HOST_WEBHOOK_URL="crm=https://crm.example/hook, ops=http://127.0.0.1:9000/hook",
        HOST_WEBHOOK_SECRET=f"crm={WHSEC}|{WHSEC_OLD},ops={WHSEC_OLD}",
        HOST_WEBHOOK_EVENTS="ops=connection.*,crm=meeting.*|invitee.no_show_set",
    )
    crm, ops = load_settings(env).host_webhooks.endpoints
    assert crm == HostWebhookEndpoint(
        name="crm",
        url="https://crm.example/hook",
        secrets=(Secret(WHSEC), Secret(WHSEC_OLD)),
        event_types=("meeting.*", "invitee.no_show_set"),
    )
    assert ops == HostWebhookEndpoint(
        name="ops",
        url="http://127.0.0.1:9000/hook",
        secrets=(Secret(WHSEC_OLD),),
        event_types=("connection.*",),
    )


def test_an_unnamed_secret_signs_for_every_endpoint_without_its_own() -> None:
    env = minimal_env(
        HOST_WEBHOOK_URL="crm=https://crm.example/h,ops=https://ops.example/h",
        HOST_WEBHOOK_SECRET=f"{WHSEC},ops={WHSEC_OLD}",
    )
    crm, ops = load_settings(env).host_webhooks.endpoints
    assert (crm.secrets, ops.secrets) == ((Secret(WHSEC),), (Secret(WHSEC_OLD),))


def test_the_dispatcher_yields_the_cpu_by_default_and_the_level_can_be_set() -> None:
    assert load_settings(minimal_env()).host_webhooks.nice == 10
    assert load_settings(minimal_env(HOST_WEBHOOK_NICE="0")).host_webhooks.nice == 0
    hooks = minimal_env(
        HOST_WEBHOOK_URL="https://a.example/h", HOST_WEBHOOK_SECRET=WHSEC, HOST_WEBHOOK_NICE="19"
    )
    assert load_settings(hooks).host_webhooks.nice == 19


@pytest.mark.parametrize("value", ["20", "-1", "low"])
def test_a_priority_outside_0_to_19_is_refused(value: str) -> None:
    problem = single_problem(minimal_env(HOST_WEBHOOK_NICE=value))
    assert problem.startswith("HOST_WEBHOOK_NICE")


def test_a_plain_http_host_webhook_url_outside_loopback_is_refused() -> None:
    problem = single_problem(
        minimal_env(HOST_WEBHOOK_URL="http://crm.example/hook", HOST_WEBHOOK_SECRET=WHSEC)
    )
    assert problem.startswith("HOST_WEBHOOK_URL")
    assert "https" in problem


@pytest.mark.parametrize(
    ("secret", "expected"),
    [
        (None, "has no secret for 'default'"),
        ("h" * 40, "must be whsec_"),
        ("whsec_" + b64(b"short"), "too short"),
        ("whsec_not base64!", "must be whsec_"),
    ],
)
def test_host_webhook_secrets_must_be_standard_webhooks_secrets(
    secret: str | None, expected: str
) -> None:
    env = minimal_env(HOST_WEBHOOK_URL="https://a.example/hook")
    if secret is not None:
        env["HOST_WEBHOOK_SECRET"] = secret
    problem = single_problem(env)
    assert problem.startswith("HOST_WEBHOOK_SECRET")
    assert expected in problem
    if secret:
        assert secret not in problem


def test_every_endpoint_needs_a_secret_and_names_must_match() -> None:
    found = problems(
        minimal_env(
            HOST_WEBHOOK_URL="crm=https://crm.example/h,ops=https://ops.example/h",
            HOST_WEBHOOK_SECRET=f"crm={WHSEC},billing={WHSEC}",
            HOST_WEBHOOK_EVENTS="sales=meeting.*,crm=meeting.booked",
        )
    )
    text = "\n".join(found)
    assert "names 'billing', which HOST_WEBHOOK_URL does not" in text
    assert "has no secret for 'ops'" in text
    assert "names 'sales', which HOST_WEBHOOK_URL does not" in text
    assert "'meeting.booked': not an event" in text


def test_a_secret_or_events_without_a_url_is_a_problem() -> None:
    problem = single_problem(minimal_env(HOST_WEBHOOK_SECRET=WHSEC))
    assert "HOST_WEBHOOK_URL is not" in problem
    assert WHSEC not in problem


def test_the_dispatcher_needs_only_the_database_and_its_endpoints() -> None:
    settings = load_dispatcher_settings(
        {
            "DATABASE_URL": f"postgresql://owner:{DB_PASSWORD}@localhost:5432/calendly",
            "HOST_WEBHOOK_URL": "https://a.example/hook",
            "HOST_WEBHOOK_SECRET": WHSEC,
        }
    )
    assert [e.name for e in settings.host_webhooks.endpoints] == ["default"]
    assert DB_PASSWORD in settings.secret_values()
    assert WHSEC in settings.secret_values()


METRICS_TOKEN = "m" * 40


def test_metrics_are_off_by_default_and_need_nothing() -> None:
    settings = load_settings(minimal_env())

    assert settings.metrics.enabled is False
    assert settings.metrics.token is None
    assert http_config(settings).metrics_token is None


def test_metrics_need_a_token_and_a_multiprocess_directory() -> None:
    found = problems({**minimal_env(), "METRICS_ENABLED": "true"})

    assert any("METRICS_TOKEN" in p for p in found)
    assert any("PROMETHEUS_MULTIPROC_DIR" in p for p in found)


def test_a_short_metrics_token_is_refused_without_showing_it(tmp_path: Path) -> None:
    env = {
        **minimal_env(),
        "METRICS_ENABLED": "true",
        "METRICS_TOKEN": "short-token-value",
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }

    problem = single_problem(env)

    assert "METRICS_TOKEN" in problem
    assert "short-token-value" not in problem


def test_a_missing_multiprocess_directory_is_refused(tmp_path: Path) -> None:
    env = {
        **minimal_env(),
        "METRICS_ENABLED": "true",
        "METRICS_TOKEN": METRICS_TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "missing"),
    }

    assert "PROMETHEUS_MULTIPROC_DIR" in single_problem(env)


def test_enabled_metrics_load_and_their_token_is_a_secret(tmp_path: Path) -> None:
    env = {
        **minimal_env(),
        "METRICS_ENABLED": "true",
        "METRICS_TOKEN": METRICS_TOKEN,
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
    }

    settings = load_settings(env)

    assert settings.metrics.enabled is True
    assert settings.metrics.multiproc_dir == tmp_path
    assert settings.metrics.token == Secret(METRICS_TOKEN)
    assert METRICS_TOKEN in settings.secret_values()
    assert METRICS_TOKEN not in repr(settings)
    assert http_config(settings).metrics_token == Secret(METRICS_TOKEN)
