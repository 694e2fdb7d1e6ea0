"""The embedded Postgres of `make run`, `make chaos` and `make bench` (the developer launcher)
runs with its own server settings (DR-55), kept in its data folder across restarts."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from entrypoints.developer import launcher
from entrypoints.developer.launcher import EMBEDDED_SETTINGS, EmbeddedPostgres, apply_settings

pytestmark = pytest.mark.slow


def setting(url: str, name: str, expected: str) -> str:
    """`name` as a new session sees it, once it is `expected` or after 10 s (a reload reaches
    the server's sessions a moment after it is asked for)."""
    deadline = time.monotonic() + 10
    while True:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()
        assert row is not None
        if row[0] == expected or time.monotonic() > deadline:
            return str(row[0])
        time.sleep(0.1)


def test_the_embedded_server_makes_wal_segments_without_zero_filling_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "postgres"
    server = EmbeddedPostgres(data, "app")
    try:
        assert setting(server.url, "wal_init_zero", "off") == "off"
        # Kept by the server itself, not by a session: in its data folder, written once.
        auto = (data / "postgresql.auto.conf").read_text()
        assert auto.count("wal_init_zero") == 1, auto
        with psycopg.connect(server.admin_url, autocommit=True) as conn:
            apply_settings(conn, EMBEDDED_SETTINGS)  # already so: nothing written again
        assert (data / "postgresql.auto.conf").read_text() == auto
    finally:
        server.close()
    # The same folder started again, applying nothing itself: the server kept the setting.
    monkeypatch.setattr(launcher, "EMBEDDED_SETTINGS", {})
    again = EmbeddedPostgres(data, "app")
    try:
        assert setting(again.url, "wal_init_zero", "off") == "off"
    finally:
        again.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[EmbeddedPostgres]:
    started = EmbeddedPostgres(tmp_path / "postgres", "app")
    try:
        yield started
    finally:
        started.close()


def test_a_setting_changed_by_hand_is_set_back(server: EmbeddedPostgres) -> None:
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        conn.execute("ALTER SYSTEM SET wal_init_zero = on")
        conn.execute("SELECT pg_reload_conf()")
    assert setting(server.url, "wal_init_zero", "on") == "on"
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        apply_settings(conn, EMBEDDED_SETTINGS)
    assert setting(server.url, "wal_init_zero", "off") == "off"


def test_a_setting_only_a_restart_applies_is_refused(server: EmbeddedPostgres) -> None:
    with psycopg.connect(server.admin_url, autocommit=True) as conn:
        with pytest.raises(ValueError, match="shared_buffers is not a setting a reload"):
            apply_settings(conn, {"shared_buffers": "256MB"})
        with pytest.raises(ValueError, match="no_such_setting is not a setting this server"):
            apply_settings(conn, {"no_such_setting": "on"})
