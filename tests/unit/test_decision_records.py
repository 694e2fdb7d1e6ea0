"""ARCHITECTURE.md's decision records: each number once and in order, and every DR-n that the
code, the migrations or the docs cite is one of them (a record written twice once went
unnoticed for a session)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEADING = re.compile(r"^### DR-(\d+): ", re.MULTILINE)
CITED = re.compile(r"\bDR-(\d+)\b")


def recorded() -> list[int]:
    return [int(n) for n in HEADING.findall((ROOT / "ARCHITECTURE.md").read_text())]


def test_each_decision_record_is_written_once_in_order() -> None:
    numbers = recorded()
    assert numbers, "ARCHITECTURE.md has no decision records"
    assert numbers == list(range(1, len(numbers) + 1))


def test_every_cited_decision_record_exists() -> None:
    tracked = subprocess.run(
        ["git", "ls-files", "*.py", "*.sql", "*.md", "*.js", "Makefile"],  # noqa: S607
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    known = set(recorded())
    missing = {
        f"{path}: DR-{n}"
        for path in tracked
        if (ROOT / path).is_file()
        for n in CITED.findall((ROOT / path).read_text(errors="replace"))
        if int(n) not in known
    }
    assert missing == set()
