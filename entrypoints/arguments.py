"""What every command shares: argument types for argparse and the one-line error."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Final

WHOLE_NUMBER: Final = re.compile(r"\s*[+-]?[0-9]+\s*")
HIGHEST_PORT: Final = 65535


def fail(message: str, code: int = 2) -> int:
    """Say what is wrong on one line of stderr; the exit code to return (2: a usage error)."""
    print(f"error: {message}", file=sys.stderr)
    return code


def port_number(*, lowest: int = 1) -> Callable[[str], int]:
    """An argparse type: a TCP port from `lowest` (0 lets the system pick a free one) up."""

    def parse(text: str) -> int:
        if not WHOLE_NUMBER.fullmatch(text) or not lowest <= int(text) <= HIGHEST_PORT:
            picks = " (0 picks a free one)" if lowest == 0 else ""
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a port: use a whole number from {lowest} to {HIGHEST_PORT}{picks}"
            )
        return int(text)

    return parse


def file_descriptor(text: str) -> int:
    """An argparse type: a file descriptor number (whether it is open is checked on use)."""
    if not WHOLE_NUMBER.fullmatch(text) or int(text) < 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a file descriptor: use a whole number from 0 up"
        )
    return int(text)


def data_folder(text: str) -> Path:
    """An argparse type: a folder for the local database and secrets, made if missing."""
    path = Path(text)
    for folder in (path, *path.parents):
        if folder.exists() and not folder.is_dir():
            raise argparse.ArgumentTypeError(
                f"{text!r} cannot hold the local database: {folder} exists and is not a "
                "directory; give a folder (it is created if missing)"
            )
    return path
