"""The `core` fixture: the use cases wired to hand-written fakes (tests/support/core.py)."""

from __future__ import annotations

import pytest

from tests.support.core import Core, build_core


@pytest.fixture
def core() -> Core:
    return build_core()
