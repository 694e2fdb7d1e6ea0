"""`make example` (`calendly-connect dev --example`): the example host app beside the local stack.

The example (examples/host-app/) is a separate web app on its own origin, as a host's would be:
it is started as its own process (it imports nothing from here, nor we from it) and the service
is configured to trust it, exactly as a host configures a deployment:

- JWT_JWKS_URL: the example's /.well-known/jwks.json (its ES256 sign-in keys);
- JWT_AUDIENCE / JWT_ISSUER: what the example puts in `aud` and `iss`;
- APP_ORIGINS: the example's origin (for CORS and the popup's message) beside the service's own;
- HOST_WEBHOOK_URL / HOST_WEBHOOK_SECRET: the example's notification endpoint, and a fresh
  secret both sides are given.

It starts before the service processes, and they start only once its JWKS answers: the service
fetches the JWKS when it verifies its first token, which must find the keys there.
"""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
import time
import urllib.request
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

from entrypoints.developer.launcher import LocalStack, listening_socket

EXAMPLE_DIR: Final = Path(__file__).resolve().parents[2] / "examples" / "host-app"
JWKS_PATH: Final = "/.well-known/jwks.json"
WEBHOOK_PATH: Final = "/webhooks/calendly-connect"
# What the example's tokens carry in `aud`, unless JWT_AUDIENCE says otherwise.
AUDIENCE: Final = "calendly-connect"
READY_SECONDS: Final = 30.0
# What the example's process may see: it is another app, not a part of the service, so none of
# the service's secrets (database URL, encryption key, Calendly credentials) are passed on.
PASSED_THROUGH: Final = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "SYSTEMROOT", "TMPDIR")


@dataclass(frozen=True)
class Example:
    """The running example: where browsers open it, and where the service reaches it."""

    url: str  # http://localhost:<port>: another site than the service's 127.0.0.1
    local_url: str  # http://127.0.0.1:<port>: for the service's server-to-server calls


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _append(env: MutableMapping[str, str], name: str, *values: str) -> None:
    """Add `values` to the comma-separated list in `env[name]` (each once)."""
    entries = [entry.strip() for entry in env.get(name, "").split(",") if entry.strip()]
    entries += [value for value in values if value not in entries]
    env[name] = ",".join(entries)


def start_example(stack: LocalStack, *, host: str, port: int, data_dir: Path) -> Example:
    """Start the example host app on host:port (0: a free one) and configure `stack.env` (the
    service's environment) to trust it; returns once its JWKS answers.

    Call it after `stack.listen` (the example needs the service's URL) and before the
    service processes start.
    """
    env = stack.env
    service_url = env["PUBLIC_BASE_URL"]
    try:
        listener = listening_socket(host, port, backlog=128)
    except OSError as exc:
        raise RuntimeError(
            f"cannot listen on {host}:{port} for the example ({exc}); set EXAMPLE_PORT"
        ) from exc
    with listener:
        bound = listener.getsockname()[1]
        example = Example(url=f"http://localhost:{bound}", local_url=f"http://{host}:{bound}")
        env.setdefault("JWT_AUDIENCE", AUDIENCE)
        env.setdefault("JWT_ISSUER", example.url)
        # Fresh for every run (a Standard Webhooks secret): both sides get it from here.
        secret = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
        child_env: dict[str, str] = {name: env[name] for name in PASSED_THROUGH if name in env}
        child_env.update(
            PYTHONPATH=str(EXAMPLE_DIR),
            PYTHONUNBUFFERED="1",
            EXAMPLE_PUBLIC_URL=example.url,
            EXAMPLE_DATA_DIR=str(data_dir.resolve()),
            CALENDLY_CONNECT_URL=service_url,
            JWT_AUDIENCE=env["JWT_AUDIENCE"],
            JWT_ISSUER=env["JWT_ISSUER"],
            HOST_WEBHOOK_SECRET=secret,
        )
        fd = listener.fileno()
        proc = subprocess.Popen(  # noqa: S603 - the example app, fixed argv
            [sys.executable, "-m", "host_app", "--fd", str(fd)],
            env=child_env,
            cwd=EXAMPLE_DIR,
            pass_fds=(fd,),
        )
        # Watched and stopped with the rest of the stack.
        stack.children.append(("example host app", proc))
    _wait_for_jwks(example.local_url + JWKS_PATH, proc)
    _append(env, "JWT_JWKS_URL", example.local_url + JWKS_PATH)
    _append(env, "APP_ORIGINS", _origin(service_url), example.url, example.local_url)
    env["HOST_WEBHOOK_URL"] = example.local_url + WEBHOOK_PATH
    env["HOST_WEBHOOK_SECRET"] = secret
    return example


def _wait_for_jwks(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the example host app exited with {proc.returncode}")
        try:
            # The example we just started, on loopback.
            with urllib.request.urlopen(url, timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"the example host app did not serve {url}")
