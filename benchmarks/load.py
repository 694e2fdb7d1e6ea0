"""The load generator (wrk with benchmarks/lua/replay.lua), pgbench, and the numbers they give."""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LUA = Path(__file__).parent / "lua" / "replay.lua"


class ToolMissing(RuntimeError):
    pass


def require(tool: str) -> str:
    if tool == "pgbench":
        # The embedded Postgres' own pgbench (same version as the server), from its wheel.
        from pgserver._commands import POSTGRES_BIN_PATH

        bundled = Path(POSTGRES_BIN_PATH) / "pgbench"
        if bundled.exists():
            return str(bundled)
    found = shutil.which(tool)
    if found is None:
        raise ToolMissing(f"{tool} is not installed (make bench installs it with apt)")
    return found


@dataclass
class WrkResult:
    requests: int
    seconds: float
    sent: int
    wraps: int
    errors: dict[str, int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    acks: list[tuple[str, int, str]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())


def wrk(
    url: str,
    requests_file: Path,
    *,
    connections: int,
    seconds: float,
    record: bool = False,
    threads: int = 1,
) -> WrkResult:
    """Replay the raw requests of `requests_file` against `url` for `seconds`."""
    binary = require("wrk")
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        out = Path(tmp) / "result.json"
        env = {
            **os.environ,
            "BENCH_REQUESTS": str(requests_file),
            "BENCH_OUT": str(out),
            "BENCH_RECORD": "1" if record else "0",
        }
        argv = [binary, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--timeout", "5s"]
        argv += ["-s", str(LUA), url]
        done = subprocess.run(  # noqa: S603 - wrk with our own script, loopback only
            argv, env=env, capture_output=True, text=True, check=False
        )
        if done.returncode != 0 or not out.exists():
            raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
        data: dict[str, Any] = json.loads(out.read_text())
    lat = data["latency_us"]
    acks = []
    for line in data["acks"]:
        rid, status, outcome = line.split(" ")
        acks.append((rid, int(status), outcome))
    return WrkResult(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        sent=int(data["sent"]),
        wraps=int(data["wraps"]),
        errors={k: int(v) for k, v in data["errors"].items()},
        p50_ms=lat["p50"] / 1000,
        p90_ms=lat["p90"] / 1000,
        p99_ms=lat["p99"] / 1000,
        max_ms=lat["max"] / 1000,
        statuses={str(k): int(v) for k, v in data["statuses"].items()},
        acks=acks,
    )


@dataclass
class PgbenchResult:
    tps: float
    p50_ms: float | None
    p99_ms: float | None
    transactions: int
    failed: int


def pgbench(
    script: str,
    *,
    host: str,
    dbname: str,
    clients: int,
    seconds: int,
    defines: dict[str, str],
    role: str,
    mode: str = "prepared",
) -> PgbenchResult:
    """Run `script` as `role`: prepared statements (as the service runs them, DR-20) unless
    `mode` says otherwise (`extended`: parsed and planned every time)."""
    binary = require("pgbench")
    with tempfile.TemporaryDirectory(prefix="pgbench-") as tmp:
        path = Path(tmp) / "tx.sql"
        path.write_text(script)
        log_prefix = Path(tmp) / "log"
        argv = [binary, "-n", "-M", mode, "-c", str(clients), "-j", "2"]
        argv += ["-T", str(seconds), "-h", host, "-U", "postgres", "-f", str(path)]
        argv += ["-l", "--log-prefix", str(log_prefix)]
        for name, value in defines.items():
            argv += ["-D", f"{name}={value}"]
        argv.append(dbname)
        env = {**os.environ, "PGOPTIONS": f"-c role={role}"}
        done = subprocess.run(  # noqa: S603 - pgbench on our own database
            argv, env=env, capture_output=True, text=True, check=False, cwd=tmp
        )
        if done.returncode != 0:
            raise RuntimeError(f"pgbench failed: {done.stderr[-2000:]}")
        latencies = []
        for log in Path(tmp).glob("log*"):
            for line in log.read_text().splitlines():
                parts = line.split()
                if len(parts) >= 3:
                    latencies.append(int(parts[2]) / 1000)
    tps = transactions = failed = 0.0
    for line in done.stdout.splitlines():
        if line.startswith("tps =") and "without initial connection time" in line:
            tps = float(line.split()[2])
        elif line.startswith("number of transactions actually processed:"):
            transactions = int(line.split(":")[1].split("/")[0].strip())
        elif line.startswith("number of failed transactions:"):
            failed = int(line.split(":")[1].split("(")[0].strip())
    return PgbenchResult(
        tps=tps,
        p50_ms=percentile(latencies, 50) if latencies else None,
        p99_ms=percentile(latencies, 99) if latencies else None,
        transactions=int(transactions),
        failed=int(failed),
    )


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]


def median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None
