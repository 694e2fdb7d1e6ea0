"""The command line: a wrong argument or setting is one clear error line, never a traceback."""

from __future__ import annotations

import signal
import subprocess
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from entrypoints.cli import HANDLERS, INTERRUPTED, main

ROOT = Path(__file__).resolve().parents[2]

# What the commands read from the environment, cleared so a developer's shell cannot steer them.
READ_FROM_ENVIRONMENT = (
    "DATABASE_URL",
    "CALENDLY_OAUTH_CLIENT_ID",
    "CALENDLY_OAUTH_CLIENT_SECRET",
    "CALENDLY_WEBHOOK_SIGNING_KEY",
    "PUBLIC_BASE_URL",
    "HOST",
    "PORT",
    "SANDBOX_PORT",
    "WORKERS",
    "DATA_DIR",
    "TOKEN_ENCRYPTION_KEY",
    "JWT_SECRET",
    "APP_ORIGINS",
    "DEV_LOGIN_ENABLED",
    "CALENDLY_AUTH_BASE_URL",
    "CALENDLY_API_BASE_URL",
    "CALENDLY_OAUTH_REDIRECT_URI",
    "CALENDLY_WEBHOOK_CALLBACK_BASE",
    "HOST_WEBHOOK_URL",
)
LOCAL_SERVICE = {
    # Nothing listens on port 1: anything that got as far as the database would fail fast.
    "DATABASE_URL": "postgresql://owner:db-password-canary@127.0.0.1:1/calendly",
    "CALENDLY_OAUTH_CLIENT_ID": "client-id",
    "CALENDLY_OAUTH_CLIENT_SECRET": "client-secret-of-the-test",
    "CALENDLY_WEBHOOK_SIGNING_KEY": "signing-key-of-the-test",
    "PUBLIC_BASE_URL": "http://127.0.0.1:8000",
    "TOKEN_ENCRYPTION_KEY": "k1:" + "A" * 43 + "=",
    "JWT_SECRET": "j" * 40,
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in READ_FROM_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)
    # So that `dev`, should it get past what is checked, never starts an embedded Postgres.
    monkeypatch.setenv("DATABASE_URL", LOCAL_SERVICE["DATABASE_URL"])
    # `dev` installs its own SIGINT/SIGTERM handlers; give pytest its own back.
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def run(capfd: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run `calendly-connect argv...`: its exit code and everything it printed.

    An exception that escapes is what a user would see as a traceback, so it is shown as one.
    """
    trace = ""
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse's way of ending on a usage error
        code = exit_.code if isinstance(exit_.code, int) else 1
    except Exception:  # the point: to show what would have escaped to the user
        code, trace = -1, traceback.format_exc()
    out, err = capfd.readouterr()
    return code, out + err + trace


def assert_one_clear_error(code: int, printed: str, expected: int, *fragments: str) -> None:
    assert "Traceback" not in printed, printed
    assert code == expected, printed
    errors = [line for line in printed.splitlines() if "error:" in line]
    assert len(errors) == 1, printed
    for fragment in fragments:
        assert fragment in errors[0], printed


def use_local_service(monkeypatch: pytest.MonkeyPatch, **overrides: str) -> None:
    for name, value in {**LOCAL_SERVICE, **overrides}.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize("option", ["--port", "--sandbox-port"])
@pytest.mark.parametrize("value", ["99999", "65536", "-5", "http"])
def test_dev_refuses_a_port_that_is_not_one(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, option: str, value: str
) -> None:
    argv = ["dev", "--port", "0", "--sandbox-port", "0", "--data-dir", str(tmp_path)]
    argv[argv.index(option) + 1] = value
    code, printed = run(capfd, *argv)
    assert_one_clear_error(code, printed, 2, f"argument {option}", f"{value!r}", "0 to 65535")


@pytest.mark.parametrize("variable", ["PORT", "SANDBOX_PORT"])
def test_dev_refuses_a_port_from_the_environment_that_is_not_one(
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    variable: str,
) -> None:
    monkeypatch.setenv(variable, "99999")
    other = "--sandbox-port" if variable == "PORT" else "--port"
    code, printed = run(capfd, "dev", other, "0", "--data-dir", str(tmp_path))
    assert_one_clear_error(code, printed, 2, "'99999'", "0 to 65535")


@pytest.mark.parametrize("below", [False, True])
def test_dev_refuses_a_data_dir_that_is_a_file(
    capfd: pytest.CaptureFixture[str], tmp_path: Path, below: bool
) -> None:
    regular = tmp_path / "notes.txt"
    regular.write_text("not a folder")
    data_dir = regular / "data" if below else regular
    code, printed = run(capfd, "dev", "--port", "0", "--data-dir", str(data_dir))
    assert_one_clear_error(code, printed, 2, "argument --data-dir", str(regular), "not a directory")


def test_dev_refuses_a_malformed_public_url_before_starting_anything(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    use_local_service(monkeypatch, PUBLIC_BASE_URL="http://[::1:8000")
    code, printed = run(capfd, "dev", "--port", "0", "--data-dir", str(tmp_path))
    assert "Traceback" not in printed, printed
    assert code == 2, printed
    assert "the configuration has 1 problem" in printed
    assert "PUBLIC_BASE_URL is 'http://[::1:8000'" in printed
    assert "applying migrations" not in printed


@pytest.mark.parametrize("value", ["99999", "0", "-5"])
def test_serve_refuses_a_port_that_is_not_one(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    use_local_service(monkeypatch)
    code, printed = run(capfd, "serve", "--port", value)
    assert_one_clear_error(code, printed, 2, "argument --port", f"{value!r}", "1 to 65535")


def test_serve_refuses_a_descriptor_that_cannot_be_one(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    use_local_service(monkeypatch)
    code, printed = run(capfd, "serve", "--fd", "-5")
    assert_one_clear_error(code, printed, 2, "argument --fd", "'-5'")


@pytest.mark.parametrize("value", ["99999", "-5"])
def test_sandbox_refuses_a_port_that_is_not_one(
    capfd: pytest.CaptureFixture[str], value: str
) -> None:
    code, printed = run(capfd, "sandbox", "--port", value)
    assert_one_clear_error(code, printed, 2, "argument --port", f"{value!r}", "0 to 65535")


@pytest.mark.parametrize("command", ["serve", "worker", "repair-connections"])
def test_a_malformed_url_setting_is_a_configuration_error(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    use_local_service(monkeypatch, APP_ORIGINS="http://[::1:3000")
    code, printed = run(capfd, command)
    assert_one_clear_error(code, printed, 2, "the configuration has 1 problem")
    assert "APP_ORIGINS entry 1 is 'http://[::1:3000'" in printed


def test_migrate_refuses_a_malformed_database_url_without_showing_it(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://owner:db-password-canary@[::1/calendly")
    code, printed = run(capfd, "migrate")
    assert_one_clear_error(code, printed, 2, "DATABASE_URL", "[")
    assert "db-password-canary" not in printed


def test_doctor_never_shows_a_malformed_database_url(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://owner:db-password-canary@[::1/calendly")
    code, printed = run(capfd, "doctor")
    assert "Traceback" not in printed, printed
    assert code == 1, printed
    assert "database reachable: DATABASE_URL cannot be read as a URL" in printed
    assert "db-password-canary" not in printed


def test_migrate_does_not_read_the_pool_sizes_it_does_not_use(
    capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """As before the settings were nested: a bad DB_POOL_* stops the service, not migrate."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://nobody@127.0.0.1:9/none?connect_timeout=2")
    monkeypatch.setenv("DB_POOL_MIN_SIZE", "0")
    code, printed = run(capfd, "migrate")
    assert code == 1, printed  # it went on to the database, which is not there
    assert "cannot reach the database" in printed
    assert "DB_POOL_MIN_SIZE" not in printed
    assert "Traceback" not in printed


@pytest.mark.parametrize(
    ("argv", "fragments"),
    [
        (["create", "--name", "billing", "--scope", "admin"], ["--scope", "'admin'", "read"]),
        (["create", "--name", ""], ["--name", "must not be empty"]),
        (["create", "--name", "n" * 101], ["--name", "at most 100"]),
        (["create", "--name", "a\tb"], ["--name", "control characters"]),
        (["create"], ["--name"]),
        (["rotate"], ["'rotate'"]),
        (["revoke"], ["ID-OR-PREFIX"]),
    ],
)
def test_api_keys_refuses_bad_arguments_before_the_database(
    capfd: pytest.CaptureFixture[str], argv: list[str], fragments: list[str]
) -> None:
    code, printed = run(capfd, "api-keys", *argv)
    assert_one_clear_error(code, printed, 2, *fragments)


def test_api_keys_says_when_the_database_cannot_be_reached(
    capfd: pytest.CaptureFixture[str],
) -> None:
    code, printed = run(capfd, "api-keys", "list")
    assert_one_clear_error(code, printed, 1, "cannot reach the database")
    assert "db-password-canary" not in printed


def test_ctrl_c_before_a_command_takes_it_over_stops_quietly(
    monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    # As `serve` meets a Ctrl-C while it still imports the web stack (a slow start under `dev`).
    def interrupted(_argv: object, _environ: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setitem(HANDLERS, "serve", interrupted)
    try:
        code, printed = run(capfd, "serve")
    except KeyboardInterrupt:
        pytest.fail("Ctrl-C escaped `main` (a user would see a traceback)")
    assert code == INTERRUPTED == 130
    assert printed == "interrupted\n"


def test_the_program_stopped_by_ctrl_c_ends_by_sigint() -> None:
    """So that a shell script running it stops too, as after any interrupted program."""
    program = (
        "import entrypoints.cli as cli\n"
        "def interrupted(argv, environ):\n"
        "    raise KeyboardInterrupt\n"
        "cli.HANDLERS['doctor'] = interrupted\n"
        "import sys; sys.argv = ['calendly-connect', 'doctor']\n"
        "cli.run()\n"
    )
    ended = subprocess.run(
        [sys.executable, "-c", program],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert ended.returncode == -signal.SIGINT, ended.stderr
    assert ended.stderr == "interrupted\n"
