"""Which Postgres the tests run on, chosen in one place (tests/support/postgres.py, issue 18).

No Docker engine runs on the machines this project is built on, so the container path's logic
is tested here without one: the choice, the image and version, the URL handed to the tests,
and a clear failure (never a silent fallback) when a container was asked for and cannot start.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from tests.support.postgres import (
    EMBEDDED_MAJOR,
    PostgresChoice,
    choose_postgres,
    container_url,
    docker_answers,
    start_container,
)


def never_asked() -> bool:
    raise AssertionError("the Docker engine was probed when nothing needed it")


def answers() -> bool:
    return True


def silent() -> bool:
    return False


def test_test_database_url_wins_over_everything() -> None:
    env = {
        "TEST_DATABASE_URL": "postgresql://u@db.example/x",
        "TEST_POSTGRES": "container",
        "TEST_POSTGRES_VERSION": "13",
    }
    assert choose_postgres(env, never_asked) == PostgresChoice(
        "url", "TEST_DATABASE_URL is set", url="postgresql://u@db.example/x"
    )


def test_a_container_when_asked_for_of_the_embedded_servers_version_by_default() -> None:
    choice = choose_postgres({"TEST_POSTGRES": "container"}, never_asked)
    assert (choice.kind, choice.image) == ("container", f"postgres:{EMBEDDED_MAJOR}")
    versioned = choose_postgres(
        {"TEST_POSTGRES": "Container", "TEST_POSTGRES_VERSION": "15"}, never_asked
    )
    assert versioned.image == "postgres:15"


def test_a_container_when_a_docker_engine_answers_else_the_embedded_server() -> None:
    assert choose_postgres({}, answers).kind == "container"
    assert choose_postgres({"TEST_POSTGRES_VERSION": "17"}, answers).image == "postgres:17"
    assert choose_postgres({}, silent) == PostgresChoice(
        "embedded", "no TEST_DATABASE_URL and no Docker engine"
    )
    assert choose_postgres({"TEST_POSTGRES": "embedded"}, never_asked).kind == "embedded"


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"TEST_POSTGRES": "docker"}, "TEST_POSTGRES='docker' names no kind"),
        ({"TEST_POSTGRES_VERSION": "latest"}, "TEST_POSTGRES_VERSION='latest' is not"),
        ({"TEST_POSTGRES_VERSION": "16; rm -rf /"}, "is not a Postgres version"),
    ],
)
def test_a_setting_that_names_no_postgres_is_refused_with_what_to_use(
    env: dict[str, str], says: str
) -> None:
    with pytest.raises(ValueError, match=says.replace("(", r"\(")):
        choose_postgres(env, silent)


class StartedContainer:
    username = "postgres"
    password = "p@ss/w:rd"
    dbname = "postgres"

    def get_container_host_ip(self) -> str:
        return "127.0.0.1"

    def get_exposed_port(self, port: int) -> str:
        assert port == 5432
        return "49153"


def test_the_container_hands_the_tests_a_superuser_url_on_its_mapped_port() -> None:
    assert container_url(StartedContainer()) == (
        "postgresql://postgres:p%40ss%2Fw%3Ard@127.0.0.1:49153/postgres"
    )


def test_no_engine_answers_without_hanging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")  # nothing listens on the discard port
    started = time.monotonic()
    assert docker_answers(timeout=1.0) is False
    assert time.monotonic() - started < 10


def test_a_container_that_cannot_start_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:9")
    with pytest.raises(RuntimeError, match="TEST_POSTGRES=container, but postgres:16") as caught:
        start_container("postgres:16")
    assert "unset TEST_POSTGRES" in str(caught.value)


def test_the_default_version_is_the_one_the_embedded_server_ships() -> None:
    from pgserver._commands import POSTGRES_BIN_PATH

    out = subprocess.run(
        [str(POSTGRES_BIN_PATH / "postgres"), "--version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.split()[-1].split(".")[0] == str(EMBEDDED_MAJOR), out
