"""The report: one table (each figure beside its same-run reference and its target) and JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str, str]  # what, measured, reference, target, verdict

TARGET_RATE = 2000.0
TARGET_INGEST_P99_MS = 25.0
TARGET_PGBENCH_SHARE = 0.5
TARGET_LIVE_P99_MS = 100.0
TARGET_RECONNECT_CALLS = 3
TARGET_CONNECT_CALLS = 4
TARGET_GROWTH_RATIO = 1.2
TARGET_RSS_MB = 150.0


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def verdict(passed: bool) -> str:
    return "PASS" if passed else "FAIL"


def targets(results: dict[str, Any]) -> dict[str, bool]:
    """Each target of issue 6 that this run measured: met or not."""
    met: dict[str, bool] = {}
    ingest = results.get("ingest")
    if ingest and "service_2" in ingest:
        two = ingest["service_2"]
        met["ingest_rate"] = (two["rate"] or 0) >= TARGET_RATE
        met["ingest_p99"] = (two["p99_ms"] or 1e9) <= TARGET_INGEST_P99_MS
        if "pgbench" in ingest:
            met["ingest_vs_pgbench"] = (two["rate"] or 0) >= TARGET_PGBENCH_SHARE * (
                ingest["pgbench"]["rate"] or 1e9
            )
    live = results.get("live")
    if live:
        met["live_p99"] = (live["p99_ms"] or 1e9) <= TARGET_LIVE_P99_MS
        peaks = [m["VmHWM"] for m in live["memory_mb"].values()]
        met["memory"] = bool(peaks) and max(peaks) <= TARGET_RSS_MB
    calls = results.get("calls")
    if calls:
        unchanged = calls["reconnect_unchanged"]
        met["reconnect_calls"] = unchanged["calls"] <= TARGET_RECONNECT_CALLS
        met["reconnect_writes"] = unchanged["write_transactions"] == 0
        met["connect_calls"] = calls["connect"]["calls"] <= TARGET_CONNECT_CALLS
    growth = results.get("growth")
    if growth:
        met["growth_webhook"] = growth["webhook_ratio"] <= TARGET_GROWTH_RATIO
        met["growth_list"] = growth["list_ratio"] <= TARGET_GROWTH_RATIO
    return met


def rows(results: dict[str, Any]) -> list[Row]:
    met = targets(results)
    out: list[Row] = []

    def v(name: str) -> str:
        return verdict(met[name]) if name in met else "-"

    ingest = results.get("ingest")
    if ingest:
        pg = ingest.get("pgbench")
        pg_ref = f"pgbench {_rate(pg['rate'])}, p99 {_ms(pg['p99_ms'])}" if pg else "-"
        for n in (1, 2):
            svc = ingest.get(f"service_{n}")
            if not svc:
                continue
            bare = ingest.get(f"bare_{n}")
            bare_ref = f"bare Litestar {_rate(bare['rate'])}" if bare else "-"
            share = f" ({svc['rate'] / pg['rate']:.0%} of pgbench)" if pg and pg["rate"] else ""
            correct = "" if svc["ok"] else " WRONG RESULT"
            out.append(
                (
                    f"1. ingest, {n} process{'es' if n > 1 else ''}, 32 conns",
                    f"{_rate(svc['rate'])}{share}, p50 {_ms(svc['p50_ms'])}, "
                    f"p99 {_ms(svc['p99_ms'])}{correct}",
                    f"{pg_ref}; {bare_ref}",
                    "≥ 2,000/s, p99 ≤ 25 ms, ≥ 50 % of pgbench" if n == 2 else "-",
                    (
                        f"rate {v('ingest_rate')}, p99 {v('ingest_p99')}, "
                        f"share {v('ingest_vs_pgbench')}"
                    )
                    if n == 2
                    else "-",
                )
            )
    live = results.get("live")
    if live:
        correct = "" if live["ok"] else " WRONG RESULT"
        out.append(
            (
                f"2. booking to browser, {live['streams']} streams, {live['users']} users",
                f"p50 {_ms(live['p50_ms'])}, p99 {_ms(live['p99_ms'])}{correct}",
                f"webhook POST answered: p50 {_ms(live.get('post_p50_ms'))}, "
                f"p99 {_ms(live.get('post_p99_ms'))} ({live['rate']:.0f} deliveries/s)",
                "p99 ≤ 100 ms",
                v("live_p99"),
            )
        )
    calls = results.get("calls")
    if calls:
        for op, target in (
            ("connect", "≤ 4 calls"),
            ("reconnect_unchanged", "≤ 3 calls, no writes"),
            ("reconnect_token_expired", "-"),
            ("reconnect_token_rejected", "-"),
            ("disconnect", "-"),
        ):
            r = calls[op]
            mark = "-"
            if op == "connect":
                mark = v("connect_calls")
            elif op == "reconnect_unchanged":
                mark = f"calls {v('reconnect_calls')}, writes {v('reconnect_writes')}"
            out.append(
                (
                    f"3. {op.replace('_', ' ')}",
                    f"{r['calls']:.0f} Calendly calls, {r['write_transactions']:.0f} write tx",
                    ", ".join(r["routes"]) or "-",
                    target,
                    mark,
                )
            )
    growth = results.get("growth")
    if growth:
        small, large = growth["small"], growth["large"]
        sizes = growth["sizes"]
        label = f"{sizes['large']['connections']:,} conns / {sizes['large']['meetings']:,} meetings"
        ref = f"{sizes['small']['connections']:,} conns / {sizes['small']['meetings']:,} meetings"
        out.append(
            (
                f"4. webhook p99 at {label}",
                f"{_ms(large['webhook_p99_ms'])} ({growth['webhook_ratio']:.2f}x)",
                f"{_ms(small['webhook_p99_ms'])} at {ref}",
                "≤ 1.2x",
                v("growth_webhook"),
            )
        )
        out.append(
            (
                f"4. meetings list p99 at {label}",
                f"{_ms(large['list_p99_ms'])} ({growth['list_ratio']:.2f}x)",
                f"{_ms(small['list_p99_ms'])} at {ref}",
                "≤ 1.2x",
                v("growth_list"),
            )
        )
    if live:
        peaks = ", ".join(f"{m['VmHWM']:.0f} MB" for m in live["memory_mb"].values())
        idle = live.get("idle_rss_mb") or []
        out.append(
            (
                "5. peak RSS per service process (during 2.)",
                peaks,
                "before the streams opened: " + (", ".join(f"{m:.0f} MB" for m in idle) or "-"),
                "≤ 150 MB",
                v("memory"),
            )
        )
    return out


def table(results: dict[str, Any]) -> str:
    header: Row = ("benchmark", "measured (median)", "reference, same run", "target", "verdict")
    lines = [header, *rows(results)]
    return "\n".join(
        [
            "| " + " | ".join(header) + " |",
            "|" + "|".join("---" for _ in header) + "|",
            *(
                "| " + " | ".join(cell.replace("|", "/") for cell in row) + " |"
                for row in lines[1:]
            ),
        ]
    )


def correctness_failures(results: dict[str, Any]) -> list[str]:
    failures = []
    for name, section in results.items():
        if name == "meta" or not isinstance(section, dict):
            continue
        if name == "ingest":
            for key, item in section.items():
                if not item.get("ok", True):
                    problems = [p for r in item.get("runs", []) for p in r.get("problems", [])]
                    failures.append(f"ingest {key}: {problems[:3]}")
        elif not section.get("ok", True):
            failures.append(f"{name}: {section.get('problems') or 'see the JSON'}")
    return failures


def write(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    results = {**results, "targets": targets(results)}
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")
