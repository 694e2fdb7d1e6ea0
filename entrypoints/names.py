"""A name for this process, unique among the processes sharing the database (leases, rows)."""

from __future__ import annotations

import os
import secrets
import socket


def process_name() -> str:
    """host:pid:random, the random part telling a restarted process from its predecessor."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
