"""The wheel as a deployment gets it: built from this checkout, installed into a fresh virtualenv
outside it with the pinned dependencies, `calendly-connect migrate` on an empty database, then
`calendly-connect serve`: healthy, and a correctly signed Calendly delivery is accepted.

Nothing may come from the checkout: the commands run from a folder outside it, without
PYTHONPATH, and every module and data file they use is checked to be the installed one. The
Dockerfile installs the same wheel the same way (tests/unit/test_container_files.py).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from entrypoints.developer import launcher
from tests.support.container import healthcheck_probe
from tests.support.deliveries import envelope, invitee_payload, sign
from tests.support.postgres import PgCluster

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUNTIME_PACKAGES = ("domain", "adapters", "entrypoints", "calendly_sandbox")
LOCK = ROOT / "requirements.lock"

# Run by the installed interpreter with -I (no PYTHONPATH, no current folder on sys.path):
# imports every module of the wheel and says where each module and data folder came from.
# The modules of an optional extra (`calendly-connect[tracing]`), which the base install, as
# here, does not have: located only, and only they may need it.
EXTRA_MODULES = {
    "adapters.tracing": "opentelemetry",
    "entrypoints.service.http.tracing": "opentelemetry",
}
WHERE_FROM = """
import importlib, importlib.util, json, pkgutil, sys
extras = json.loads(sys.argv[1])
found = {}
for top in sys.argv[2:]:
    package = importlib.import_module(top)
    found[top] = package.__file__
    for info in pkgutil.walk_packages(package.__path__, top + "."):
        if info.name.endswith(".__main__"):  # runs when imported: located only
            found[info.name] = importlib.util.find_spec(info.name).origin
        elif info.name in extras:  # must fail for its extra only, then is located
            try:
                importlib.import_module(info.name)
            except ModuleNotFoundError as exc:
                if exc.name.split(".")[0] != extras[info.name]:
                    raise
            found[info.name] = importlib.util.find_spec(info.name).origin
        else:
            found[info.name] = importlib.import_module(info.name).__file__
from adapters.postgres.migrations import DEFAULT_DIRECTORY, discover
from entrypoints.service.http.app import STATIC_DIR
from entrypoints.service.http.routes.client import CLIENT_DIR, client_file
from entrypoints.service.http.routes.pages import INDEX_HTML
client_file("calendly-connect.js")
print(json.dumps({
    "modules": found,
    "migrations": str(DEFAULT_DIRECTORY),
    "migration_count": len(discover()),
    "static": str(STATIC_DIR),
    "page": str(INDEX_HTML),
    "client": str(CLIENT_DIR),
}))
"""


@dataclass(frozen=True)
class Installed:
    venv: Path
    workdir: Path  # outside the checkout: every command runs here
    env: dict[str, str]  # the base environment: no PYTHONPATH, nothing of the test's own

    @property
    def command(self) -> Path:
        return self.venv / "bin" / "calendly-connect"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"


def run(
    argv: list[str | Path], cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def uv() -> str | None:
    """uv beside the test's interpreter (make install puts it there), else on PATH."""
    return shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def build_wheel(out: Path) -> Path:
    found = uv()
    if found is not None:
        # An sdist first, then the wheel from it: proves the sdist complete too.
        run([found, "build", "--quiet", "--out-dir", out, ROOT])
    else:
        run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", out, ROOT])
    (wheel,) = out.glob("calendly_connect-*.whl")
    return wheel


def outside_checkout(path: Path) -> bool:
    return not path.resolve().is_relative_to(ROOT)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """A fresh virtualenv outside the checkout with the wheel and its pinned dependencies only
    (requirements.lock as constraints: the runtime needs nothing of the dev extra)."""
    base = tmp_path_factory.mktemp("installed")
    assert outside_checkout(base)
    venv, workdir = base / "venv", base / "work"
    workdir.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(base),
        "LANG": "C.UTF-8",
        "PYTHONSAFEPATH": "1",
    }
    # The installers keep the machine's settings (a proxy, its certificates), not PYTHONPATH.
    setup = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    python = venv / "bin" / "python"
    found = uv()
    if found is not None:
        run([found, "venv", "--quiet", "--python", sys.executable, venv], workdir, setup)
        run([found, "pip", "install", "-q", "--python", python, "-c", LOCK, wheel], workdir, setup)
    else:
        run([sys.executable, "-m", "venv", venv], workdir, setup)
        run([python, "-m", "pip", "install", "-q", "-c", LOCK, wheel], workdir, setup)
    return Installed(venv=venv, workdir=workdir, env=env)


@pytest.fixture
def empty_database(pg_cluster: PgCluster) -> Iterator[str]:
    """A new database with nothing in it (not the suite's migrated template)."""
    name = f"cc_wheel_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(pg_cluster.admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield pg_cluster.url_for(name)
    finally:
        pg_cluster.drop(name)


def test_the_wheel_carries_the_runtime_packages_and_their_files_and_nothing_else(
    wheel: Path,
) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        path.relative_to(ROOT).as_posix()
        for top in RUNTIME_PACKAGES
        for path in (ROOT / top).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    expected |= {f"{top}/py.typed" for top in RUNTIME_PACKAGES}
    expected |= {f"adapters/postgres/sql/{p.name}" for p in (ROOT / "migrations").glob("*.sql")}
    expected |= {
        f"entrypoints/service/http/js_client/{name}"
        for name in ("calendly-connect.js", "calendly-connect.d.ts")
    }
    for static in (ROOT / "entrypoints/service/http/static", ROOT / "calendly_sandbox/static"):
        expected |= {p.relative_to(ROOT).as_posix() for p in static.rglob("*") if p.is_file()}
    assert expected - names == set(), "missing from the wheel"
    stray = {
        name
        for name in names
        if name.split("/")[0] not in RUNTIME_PACKAGES and ".dist-info/" not in name
    }
    assert stray == set(), "not part of the runtime"
    assert not any("/test" in name for name in names if name.startswith("entrypoints/"))


def test_the_installed_wheel_migrates_an_empty_database_and_serves_a_signed_delivery(
    installed: Installed, empty_database: str
) -> None:
    shipped = sorted(p.name for p in (ROOT / "migrations").glob("*.sql"))
    port = free_port()
    environ = {
        **installed.env,
        **launcher.service_environment(
            database_url=empty_database,
            public_url=f"http://127.0.0.1:{port}",
            client_id="wheel-test",
            HOST="127.0.0.1",
            PORT=str(port),
            LOG_FORMAT="json",
        ),
    }
    migrated = run([installed.command, "migrate"], cwd=installed.workdir, env=environ)
    with psycopg.connect(empty_database) as conn:
        applied = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    assert [v for (v,) in applied] == [int(name[:4]) for name in shipped], migrated.stdout
    run([installed.command, "migrate", "--check"], cwd=installed.workdir, env=environ)

    base = f"http://127.0.0.1:{port}"
    with serving(installed, environ) as server:
        server.wait_ready(base)
        assert status_of(f"{base}/health/live") == 200
        assert status_of(f"{base}/health/ready") == 200
        # The image's HEALTHCHECK, run by the installed interpreter.
        run([installed.python, "-c", healthcheck_probe()], installed.workdir, environ)
        host = "https://api.calendly.test/users/wheel-host"
        body = envelope(
            "invitee.created",
            invitee_payload(host_uri=host, event_id="wheel-e1", invitee_id="wheel-i1"),
            host,
        )
        unsigned = post(f"{base}/webhooks/calendly", body, {})
        assert unsigned[0] == 401, unsigned
        signature = sign(body, environ["CALENDLY_WEBHOOK_SIGNING_KEY"])
        status, answer = post(
            f"{base}/webhooks/calendly", body, {"Calendly-Webhook-Signature": signature}
        )
        assert 200 <= status < 300, (status, answer, server.logs.read_text())
    with psycopg.connect(empty_database) as conn:
        stored = conn.execute("SELECT count(*) FROM calendly_webhook_events").fetchone()
    assert stored == (1,)

    # Everything it ran came from the virtualenv, data included, never from the checkout.
    where = json.loads(
        run(
            [
                installed.python,
                "-I",
                "-c",
                WHERE_FROM,
                json.dumps(EXTRA_MODULES),
                *RUNTIME_PACKAGES,
            ],
            cwd=installed.workdir,
            env=installed.env,
        ).stdout
    )
    site = installed.venv.resolve()
    data = {key: where[key] for key in ("migrations", "static", "page", "client")}
    for name, file in {**where["modules"], **data}.items():
        assert Path(file).resolve().is_relative_to(site), f"{name} comes from {file}"
    assert where["migration_count"] == len(shipped)


@contextmanager
def serving(installed: Installed, environ: dict[str, str]) -> Iterator[Server]:
    """`calendly-connect serve` in the background, its output in a file; stopped at the end."""
    logs = installed.workdir / "serve.log"
    with logs.open("w") as out:
        process = subprocess.Popen(
            [str(installed.command), "serve"],
            cwd=installed.workdir,
            env=environ,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield Server(process, logs)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@dataclass(frozen=True)
class Server:
    process: subprocess.Popen[bytes]
    logs: Path

    def wait_ready(self, base: str, seconds: float = 60) -> None:
        deadline = time.monotonic() + seconds
        while True:
            assert self.process.poll() is None, f"serve stopped:\n{self.logs.read_text()}"
            try:
                if status_of(f"{base}/health/ready") == 200:
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, f"serve not ready:\n{self.logs.read_text()}"
            time.sleep(0.1)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def status_of(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, str]:
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
