"""One transaction in one write (adapters/postgres/one_write.py, DR-59), on a real Postgres: the
answers in order, all or nothing, psycopg's error classes, a connection left idle and usable,
prepared statements that psycopg deallocated prepared again, and the write really one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from adapters.postgres import one_write
from adapters.postgres.one_write import Answer, run_transaction

SET = "SELECT set_config('app.x', %s, true)"


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        await conn.execute("CREATE TABLE notes (id int PRIMARY KEY, body text, raw bytea)")
        await conn.commit()
        yield conn


async def rows(url: str) -> list[tuple[Any, ...]]:
    """What another connection sees: committed rows only."""
    async with await psycopg.AsyncConnection.connect(url) as other:
        cursor = await other.execute("SELECT id, body, raw FROM notes ORDER BY id")
        return await cursor.fetchall()


async def ours(conn: psycopg.AsyncConnection[Any]) -> list[str]:
    """The names of the statements run_transaction prepared on `conn`."""
    cursor = await conn.execute(
        "SELECT name FROM pg_prepared_statements WHERE name LIKE '\\_cc%%' ORDER BY name"
    )
    names = [row[0] for row in await cursor.fetchall()]
    await conn.commit()
    return names


def waits_of(pid: int) -> int:
    """How often the backend `pid` has slept waiting (voluntary context switches)."""
    status = Path(f"/proc/{pid}/status")
    if not status.exists() or "postgres" not in Path(f"/proc/{pid}/cmdline").read_text():
        pytest.skip(
            "the test Postgres runs elsewhere (TEST_DATABASE_URL): its backends are not here"
        )
    for line in status.read_text().splitlines():
        if line.startswith("voluntary_ctxt_switches:"):
            return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in /proc")


async def test_answers_come_in_order_and_the_writes_commit_together(
    conn: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    answers = await run_transaction(
        conn,
        [
            ("INSERT INTO notes VALUES (%s, %s, %s)", (1, "one", b"\x00\xff")),
            (
                "INSERT INTO notes VALUES (%(id)s, %(body)s, %(raw)s)",
                {"id": 2, "body": None, "raw": None},
            ),
            ("SELECT count(*) FROM notes", ()),
            ("UPDATE notes SET body = 'x' WHERE id > %s", (5,)),
            (SET, ("tenant",)),
        ],
    )
    assert answers == [
        Answer(1, None),
        Answer(1, None),
        Answer(1, b"2"),
        Answer(0, None),
        Answer(1, b"tenant"),
    ]
    assert await rows(database_url) == [(1, "one", b"\x00\xff"), (2, None, None)]
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # The connection goes on as psycopg's, and runs the same statements prepared the second time.
    await conn.execute("SELECT 1")
    await conn.commit()
    again = await run_transaction(conn, [("SELECT count(*) FROM notes", ())])
    assert again == [Answer(1, b"2")]


async def test_one_failure_writes_nothing_raises_psycopgs_class_and_leaves_the_connection_idle(
    conn: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    await run_transaction(conn, [("INSERT INTO notes VALUES (%s, %s, NULL)", (1, "one"))])
    with pytest.raises(psycopg.errors.UniqueViolation):
        await run_transaction(
            conn,
            [
                ("INSERT INTO notes VALUES (%s, %s, NULL)", (2, "two")),
                ("INSERT INTO notes VALUES (%s, %s, NULL)", (1, "again")),
                ("INSERT INTO notes VALUES (%s, %s, NULL)", (3, "three")),
            ],
        )
    assert await rows(database_url) == [(1, "one", None)]
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    # Usable at once, the statements prepared before the failure included.
    answers = await run_transaction(
        conn, [("INSERT INTO notes VALUES (%s, %s, NULL)", (3, "three"))]
    )
    assert answers == [Answer(1, None)]
    assert [r[0] for r in await rows(database_url)] == [1, 3]


async def test_a_transaction_already_open_is_joined_and_committed_or_rolled_back_with_it(
    conn: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """As psycopg's own `execute` joins it (the pool's check of an idle connection opens one)."""
    await conn.execute("INSERT INTO notes VALUES (1, 'before', NULL)")
    await run_transaction(conn, [("INSERT INTO notes VALUES (%s, %s, NULL)", (2, "with"))])
    assert [r[0] for r in await rows(database_url)] == [1, 2]
    await conn.execute("INSERT INTO notes VALUES (3, 'before', NULL)")
    with pytest.raises(psycopg.errors.UniqueViolation):
        await run_transaction(conn, [("INSERT INTO notes VALUES (%s, %s, NULL)", (2, "again"))])
    assert [r[0] for r in await rows(database_url)] == [1, 2]
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_a_lock_not_available_is_psycopgs_lock_error(
    conn: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """The group commit tells a batch's own trouble by psycopg's classes (BATCH_ONLY)."""
    async with await psycopg.AsyncConnection.connect(database_url) as other:
        await other.execute("SELECT pg_advisory_xact_lock(42)")
        with pytest.raises(psycopg.errors.LockNotAvailable):
            await run_transaction(
                conn,
                [
                    ("SELECT set_config('lock_timeout', %s, true)", ("50ms",)),
                    ("SELECT pg_advisory_xact_lock(%s)", (42,)),
                ],
            )
        await other.rollback()
    assert await run_transaction(conn, [("SELECT pg_advisory_xact_lock(%s)", (42,))]) == [
        Answer(1, b"")
    ]


async def test_statements_psycopg_deallocated_are_prepared_again(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """psycopg sends DEALLOCATE ALL after a rollback of its own (once it prepared anything)."""
    statements = [(SET, (str(n),)) for n in range(3)]
    await run_transaction(conn, statements)
    await conn.execute("DEALLOCATE ALL")
    await conn.commit()
    assert await run_transaction(conn, statements) == [Answer(1, str(n).encode()) for n in range(3)]
    assert len(await ours(conn)) == 1  # prepared again, once


async def test_a_statement_postgres_cannot_prepare_fails_with_psycopgs_class(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    with pytest.raises(psycopg.errors.IndeterminateDatatype):
        await run_transaction(conn, [(SET, ("a",)), ("SELECT %s IS NULL", (None,))])
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert await run_transaction(conn, [(SET, ("b",))]) == [Answer(1, b"b")]


async def test_a_parameter_of_another_type_gets_its_own_statement(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    query = "SELECT %s::text IS NULL"
    assert await run_transaction(conn, [(query, (None,)), (query, (1,)), (query, ("a",))]) == [
        Answer(1, b"t"),
        Answer(1, b"f"),
        Answer(1, b"f"),
    ]


async def test_a_transaction_cancelled_half_way_closes_its_connection(
    conn: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    task = asyncio.create_task(
        run_transaction(
            conn,
            [
                ("INSERT INTO notes VALUES (%s, %s, NULL)", (1, "one")),
                ("SELECT pg_sleep(%s)", (30,)),
            ],
        )
    )
    await asyncio.sleep(0.3)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    assert conn.closed  # its pool replaces it
    assert await rows(database_url) == []


async def test_the_statements_reach_postgres_in_one_write(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """Postgres' backend sleeps between reads: statements sent one by one wake it for each
    (about 20 times here through psycopg's pipeline), one write about once."""
    statements = [(SET, (str(n),)) for n in range(20)]
    await run_transaction(conn, statements)  # prepared: the next run sends only executions
    pid = conn.info.backend_pid
    before = waits_of(pid)
    await run_transaction(conn, statements)
    assert waits_of(pid) - before <= 3


async def test_rows_are_loaded_as_psycopgs_dict_rows_would_be(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    await run_transaction(
        conn, [("INSERT INTO notes VALUES (%s, %s, %s)", (1, "one", b"\x00\xff"))]
    )
    query = "SELECT id, body, raw FROM notes WHERE id = ANY(%(ids)s::int[]) OR id = %(ids)s[1]"
    answers = await run_transaction(
        conn, [(query, {"ids": [1, 7]}), (query, {"ids": [9]})], rows=True
    )
    assert answers[0].rows == [{"id": 1, "body": "one", "raw": b"\x00\xff"}]
    assert answers[1].rows == []
    cursor = await conn.cursor(row_factory=psycopg.rows.dict_row).execute(query, {"ids": [1, 7]})
    assert await cursor.fetchall() == answers[0].rows


async def test_names_lost_in_a_joined_transaction_fail_it_whole_and_are_made_anew_next_time(
    conn: psycopg.AsyncConnection[Any], database_url: str
) -> None:
    """Trying again would commit the batch without the joined transaction's earlier work,
    which the failure rolled back: the error is the caller's."""
    insert = "INSERT INTO notes VALUES (%s, %s, NULL)"
    await run_transaction(conn, [(insert, (1, "one"))])
    await conn.execute("DEALLOCATE ALL")
    await conn.commit()
    await conn.execute("INSERT INTO notes VALUES (100, 'earlier', NULL)")
    with pytest.raises(psycopg.errors.InvalidSqlStatementName):
        await run_transaction(conn, [(insert, (2, "two"))])
    assert [r[0] for r in await rows(database_url)] == [1]
    await run_transaction(conn, [(insert, (2, "two"))])
    assert [r[0] for r in await rows(database_url)] == [1, 2]


async def test_a_failed_rollback_closes_the_connection_and_says_so(
    conn: psycopg.AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(pgconn: Any) -> Any:
        raise psycopg.OperationalError("the server went away")
        yield  # a generator, as the one it replaces

    insert = "INSERT INTO notes VALUES (%s, %s, NULL)"
    await run_transaction(conn, [(insert, (1, "one"))])
    monkeypatch.setattr(one_write, "_answer_of_one", broken)
    with pytest.raises(psycopg.OperationalError) as raised:
        await run_transaction(conn, [(insert, (1, "again"))])
    assert isinstance(raised.value.__cause__, psycopg.errors.UniqueViolation)
    assert conn.closed  # its pool replaces it


async def test_input_refused_before_sending_leaves_no_name_behind(
    conn: psycopg.AsyncConnection[Any],
) -> None:
    """A statement whose parameters psycopg refuses (a NUL in text) fails before anything is
    sent; the statements of that call are prepared when first really sent, under the same
    names as the rest (no name failing, no second generation)."""
    insert = "INSERT INTO notes VALUES (%s, %s, NULL)"
    await run_transaction(conn, [(SET, ("a",))])
    with pytest.raises(psycopg.DataError):
        await run_transaction(conn, [("SELECT %s::int", (1,)), (insert, (1, "a\x00b"))])
    await run_transaction(conn, [("SELECT %s::int", (2,)), (insert, (1, "ab"))])
    names = await ours(conn)
    assert len(names) == 3
    assert len({name.rsplit("_", 1)[0] for name in names}) == 1, names


async def test_statements_beyond_the_cap_are_closed_least_recently_used_first(
    conn: psycopg.AsyncConnection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(one_write, "MAX_PREPARED", 3)
    queries = [f"SELECT %s::int + {n}" for n in range(5)]
    for n, query in enumerate(queries):
        assert await run_transaction(conn, [(query, (1,))]) == [Answer(1, str(1 + n).encode())]
        assert len(await ours(conn)) <= 3
    # The most recent ones stayed prepared, and one used again is kept over older ones.
    assert await run_transaction(conn, [(queries[2], (5,))]) == [Answer(1, b"7")]
    await run_transaction(conn, [(queries[0], (1,))])
    cursor = await conn.execute(
        "SELECT statement FROM pg_prepared_statements WHERE name LIKE '\\_cc%%'"
    )
    kept = sorted(row[0] for row in await cursor.fetchall())
    await conn.commit()
    assert kept == sorted(q.replace("%s", "$1") for q in (queries[0], queries[2], queries[4]))
