"""`python -m benchmarks` (what `make bench` runs): see benchmarks/__init__.py."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import calls, growth, host_webhooks, ingest, live, report, storage, worker

DEFAULT_OUT = Path(__file__).parent / "results" / "latest.json"


def say(message: str) -> None:
    print(message, flush=True)


def meta(args: argparse.Namespace) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],  # noqa: S607 - git from PATH, fixed argv
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],  # noqa: S607 - as above
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return {
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit + ("+changes" if dirty else ""),
        "cpus": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "seconds_per_run": args.seconds,
        "repeats": args.repeats,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "--only",
        default="1,2,3,4,6,7,8",
        help="benchmarks to run, e.g. 1,3 (5 is measured in 2)",
    )
    parser.add_argument("--seconds", type=int, default=10, help="duration of one measured run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument(
        "--large", type=int, default=100_000, help="connections of benchmark 4's large size"
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the JSON report")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    only = {part.strip() for part in args.only.split(",") if part.strip()}
    if "5" in only:
        only.add("2")
    results: dict[str, Any] = {"meta": meta(args)}
    started = time.monotonic()
    if "1" in only:
        say("1. webhook ingest (32 connections; 1 and 2 processes; pgbench; bare Litestar)")
        results["ingest"] = ingest.run(
            ingest.Config(seconds=args.seconds, repeats=args.repeats), log=say
        )
    if "2" in only:
        say(
            "2. booking to browser (10,000 streams, 2,000 users, 2 processes), ingest beside"
            " them, 5. memory"
        )
        results["live"] = live.run(live.Config(seconds=args.seconds, repeats=args.repeats), say)
    if "3" in only:
        say("3. Calendly calls per operation")
        results["calls"] = calls.run(repeats=args.repeats, log=say)
    if "4" in only:
        say("4. cost as data grows")
        results["growth"] = growth.run(
            growth.Config(seconds=args.seconds, repeats=args.repeats, large_connections=args.large),
            log=say,
        )
    if "6" in only:
        say("6. booking to host webhook delivered (50 bookings/s, 50 users; ingest with/without)")
        results["host_webhooks"] = host_webhooks.run(
            host_webhooks.Config(seconds=args.seconds, repeats=args.repeats), log=say
        )
    if "7" in only:
        say("7. the worker at scale (claim cost at 1,000 and 1,000,000 connections)")
        results["worker"] = worker.run(log=say)
    if "8" in only:
        say("8. storage under continuous ingest (60 days of deliveries, pruned as the worker does)")
        results["storage"] = storage.run(log=say)
    results["meta"]["elapsed_seconds"] = round(time.monotonic() - started)
    say("")
    say(report.table(results))
    met = report.targets(results)
    missed = [name for name, ok in met.items() if not ok]
    say("")
    say(
        f"targets met: {sum(met.values())}/{len(met)}"
        + (f"; missed: {', '.join(missed)}" if missed else "")
    )
    report.write(results, args.out)
    say(f"written to {args.out}")
    failures = report.correctness_failures(results)
    for failure in failures:
        say(f"CORRECTNESS FAILURE: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
