"""The example host app (examples/host-app/) for tests: its modules, and `make example` running.

The example is not part of the installed project (it stands for a host's own repository): its
package `host_app` is imported from its folder, and `make example` is started as
`calendly-connect dev --example` on free ports in a throwaway data folder.
"""

from __future__ import annotations

import importlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
EXAMPLE_DIR = REPO / "examples" / "host-app"
# Variables that would configure the stack otherwise than `make example` does on a bare machine.
FOREIGN = ("CALENDLY_", "DATABASE_", "JWT_", "APP_ORIGINS", "HOST_WEBHOOK_", "EXAMPLE_")


def host_app_module(name: str) -> ModuleType:
    """`host_app.<name>` (keys, sessions, notifications, config, web) from examples/host-app/."""
    if str(EXAMPLE_DIR) not in sys.path:
        sys.path.insert(0, str(EXAMPLE_DIR))
    return importlib.import_module(f"host_app.{name}")


@dataclass
class ExampleStack:
    """`make example` running: the service, the sandbox and the example, by URL."""

    service: str  # PUBLIC_BASE_URL: http://127.0.0.1:<port> unless `env` said otherwise
    sandbox: str
    example: str  # http://localhost:<port>: the origin browsers open
    data_dir: Path
    output: list[str] = field(default_factory=list)  # what the launcher printed so far
    local: str = ""  # where the service itself listens (behind any proxy)

    @property
    def example_local(self) -> str:
        """The example on 127.0.0.1 (the same server; for HTTP clients that avoid localhost)."""
        return self.example.replace("://localhost:", "://127.0.0.1:")


@contextmanager
def example_stack(
    *, workers: int = 1, seconds: float = 120.0, env: Mapping[str, str] | None = None
) -> Iterator[ExampleStack]:
    """`calendly-connect dev --example` (what `make example` runs) on free ports in a temporary
    data folder, with `env` on top; stopped with SIGTERM (as Ctrl-C would) when the block ends."""
    given = dict(env or {})
    env = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    env["LOG_LEVEL"] = "WARNING"
    env.update(given)
    # Outside pytest's temporary tree (see tests/conftest.py, pg_cluster).
    data = Path(tempfile.mkdtemp(prefix="calendly-example-"))
    argv = [sys.executable, "-m", "entrypoints.cli", "dev", "--example"]
    argv += ["--workers", str(workers), "--port", "0", "--sandbox-port", "0"]
    argv += ["--example-port", "0", "--data-dir", str(data)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, env=env, cwd=REPO)
    output: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        # Read to the end: a full pipe would stall the stack's processes.
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            output.append(line)
            if line.startswith("READY "):
                ready.set()
        ready.set()

    threading.Thread(target=pump, daemon=True).start()
    try:
        deadline = time.monotonic() + seconds
        while not ready.wait(0.2) and time.monotonic() < deadline:
            pass
        line = next((line for line in output if line.startswith("READY ")), None)
        assert line is not None, "the stack did not start:\n" + "\n".join(output[-40:])
        fields = dict(part.split("=", 1) for part in line.split()[1:])
        yield ExampleStack(
            service=fields["url"],
            sandbox=fields["sandbox"],
            example=fields["example"],
            data_dir=data,
            output=output,
            local=fields.get("local", fields["url"]),
        )
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(data, ignore_errors=True)
