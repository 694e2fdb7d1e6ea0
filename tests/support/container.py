"""The Dockerfile's instructions, read for the tests that keep it in step with the wheel."""

from __future__ import annotations

import re
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"


def instructions(name: str) -> list[str]:
    """The arguments of every `name` instruction (RUN, CMD...), continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text(encoding="utf-8"))
    return [m.group(1).strip() for m in re.finditer(rf"^{name}\s+(.*)$", joined, re.MULTILINE)]


def healthcheck_probe() -> str:
    """The python code the image's HEALTHCHECK runs (`python -c <code>`)."""
    (check,) = instructions("HEALTHCHECK")
    probe = re.search(r'CMD \["python", "-c", "(.*)"\]$', check)
    assert probe is not None, check
    return probe.group(1)
