"""What the webhook path's batches send to Postgres, for tests that count their statements."""

from __future__ import annotations

from typing import Any

import pytest

from adapters.postgres import group_commit


def sent_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The queries of every transaction the ledger sends from now on."""
    sent: list[str] = []
    original = group_commit.run_transaction  # type: ignore[attr-defined]

    async def spy(conn: Any, statements: Any, **kwargs: Any) -> Any:
        sent.extend(query for query, _ in statements)
        return await original(conn, statements, **kwargs)

    monkeypatch.setattr(group_commit, "run_transaction", spy)
    return sent
