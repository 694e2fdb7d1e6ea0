"""One transaction's statements sent in one write, their answers read in one go (DR-59).

psycopg's pipeline mode sends each statement as it is executed: every `execute` polls the
socket, flushes that one statement and reads whatever has come back. A batch of the webhook
path (DR-48) runs two or three statements per delivery, so it paid a poll, a send and often a
receive per statement, and Postgres woke once per statement. Measured on this project's
machine (16 trivial prepared statements a transaction): 46-58 µs of the client's CPU and
20-23 µs of the backend's per statement through psycopg's pipeline, against 4-5 µs and
6-7 µs when libpq sends them in one write and the answers are read once.

`run_transaction` does that on a psycopg connection, through psycopg's own libpq wrapper
(`conn.pgconn`): the parameters are converted exactly as psycopg converts them for `execute`
(its `PostgresQuery`, with the connection's adapters), each statement is prepared once per
connection under a name of ours, and BEGIN, the statements and COMMIT go out in one pipeline
with one sync. What psycopg exposes for this is partly private (`psycopg._queries`), which is
why the dependency is pinned and `tests/integration/test_one_write.py` runs every statement
kind of the webhook path through it against a real Postgres, errors and lost prepared
statements included.

psycopg itself deallocates every prepared statement of a connection (DEALLOCATE ALL) after a
rollback it ran, ours included. A statement whose name has gone fails the transaction, which
wrote nothing: the connection's names are then forgotten, and the transaction runs once more
with new ones.
"""

from __future__ import annotations

import itertools
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors, pq
from psycopg._queries import PostgresQuery
from psycopg.adapt import Transformer
from psycopg.generators import fetch, send
from psycopg.pq.abc import PGconn, PGresult

Statement = tuple[str, Sequence[Any] | dict[str, Any]]

_OK = (pq.ExecStatus.COMMAND_OK, pq.ExecStatus.TUPLES_OK)
_IDLE = pq.TransactionStatus.IDLE
_JOINABLE = (_IDLE, pq.TransactionStatus.INTRANS)
# A name of ours gone (psycopg's DEALLOCATE ALL), or one still there that we had forgotten.
_NAMES_LOST = (errors.InvalidSqlStatementName, errors.DuplicatePreparedStatement)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one statement answered: the rows it returned or touched, and the first column of
    its first row as text (None without one, or for NULL)."""

    rowcount: int
    first: bytes | None


@dataclass(slots=True)
class _Names:
    """The statements prepared on one connection, by their text and parameter types."""

    prefix: bytes
    names: dict[tuple[bytes, tuple[int, ...]], bytes]


_generations = itertools.count(1)
_prepared: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], _Names] = (
    weakref.WeakKeyDictionary()
)


def _names_of(conn: psycopg.AsyncConnection[Any]) -> _Names:
    names = _prepared.get(conn)
    if names is None:
        names = _prepared[conn] = _Names(b"_cc%d_" % next(_generations), {})
    return names


async def run_transaction(
    conn: psycopg.AsyncConnection[Any], statements: Sequence[Statement]
) -> list[Answer]:
    """`statements` as one transaction (BEGIN, them, COMMIT) in one write; their answers, in
    order. The first statement that fails fails them all: its error is raised as psycopg
    raises it (the same classes), and the connection is left idle, the transaction rolled
    back. `conn` must be idle, outside any transaction or pipeline.

    Cancelled or broken half-way, the connection is closed (its pool replaces it)."""
    try:
        return await _run(conn, statements)
    except _NAMES_LOST:
        _prepared.pop(conn, None)  # the next names are new ones: no clash with any left
        return await _run(conn, statements)


async def _run(conn: psycopg.AsyncConnection[Any], statements: Sequence[Statement]) -> list[Answer]:
    pgconn = conn.pgconn
    status = pgconn.transaction_status
    # A transaction already open (the pool's check of an idle connection runs a SELECT, which
    # opens one) is joined, as psycopg's own `execute` joins it, and committed with the rest.
    if status not in _JOINABLE or pgconn.pipeline_status:
        raise psycopg.ProgrammingError(
            f"run_transaction needs an idle connection or an open transaction, not {status!r}"
        )
    names = _names_of(conn)
    transformer = Transformer.from_context(conn)
    sends: list[tuple[bytes, PostgresQuery, bool]] = []  # name, converted, prepared here
    for query, parameters in statements:
        converted = PostgresQuery(transformer)
        converted.convert(query, parameters)
        key = (converted.query, tuple(converted.types))
        name = names.names.get(key)
        fresh = name is None
        if name is None:
            name = names.prefix + str(len(names.names)).encode()
        sends.append((name, converted, fresh))
        names.names.setdefault(key, name)

    async with conn.lock:
        try:
            results, skip = await _exchange(conn, names, sends, begin=status == _IDLE)
        except BaseException:
            await conn.close()  # cancelled or broken mid-exchange: its state is unknown
            raise
        failure = _first_failure(results, conn)
        if failure is not None:
            if pgconn.transaction_status != pq.TransactionStatus.IDLE:
                try:
                    pgconn.send_query(b"ROLLBACK")
                    await conn.wait(_answer_of_one(pgconn))
                except BaseException as exc:
                    await conn.close()  # its state is unknown: the pool replaces it
                    if isinstance(exc, Exception):
                        raise failure from None
                    raise  # cancelled
            raise failure
    return [_answer(r) for n, r in enumerate(results[:-1]) if n not in skip]


async def _exchange(
    conn: psycopg.AsyncConnection[Any],
    names: _Names,
    sends: list[tuple[bytes, PostgresQuery, bool]],
    *,
    begin: bool,
) -> tuple[list[list[PGresult]], set[int]]:
    """BEGIN (if `begin`), the statements (each prepared first where this connection lacks
    it) and COMMIT, sent in one pipeline with one sync; each command's results (COMMIT's
    last), and the places of those that are not the statements' (BEGIN, the Prepares)."""
    pgconn = conn.pgconn
    prepares: list[tuple[int, tuple[bytes, tuple[int, ...]]]] = []  # command index, key
    pgconn.enter_pipeline_mode()
    commands = 0
    if begin:
        pgconn.send_query_params(b"BEGIN", None)
        commands += 1
    for name, converted, fresh in sends:
        if fresh:
            pgconn.send_prepare(name, converted.query, param_types=converted.types)
            prepares.append((commands, (converted.query, tuple(converted.types))))
            commands += 1
        pgconn.send_query_prepared(
            name, converted.params, param_formats=converted.formats, result_format=pq.Format.TEXT
        )
        commands += 1
    pgconn.send_query_params(b"COMMIT", None)
    commands += 1
    pgconn.pipeline_sync()
    results = await conn.wait(_all_answers(pgconn))
    pgconn.exit_pipeline_mode()
    prepared_ok = {at for at, _ in prepares if results[at][-1].status in _OK}
    for at, key in prepares:
        if at not in prepared_ok:  # not prepared after all: prepared again next time
            names.names.pop(key, None)
    if len(results) != commands:
        raise psycopg.InternalError(f"{len(results)} answers to {commands} commands")
    return results, {at for at, _ in prepares} | ({0} if begin else set())


def _all_answers(pgconn: PGconn) -> Any:
    """Generator (for `conn.wait`): flush everything, then each command's results until the
    sync."""
    yield from send(pgconn)
    answers: list[list[PGresult]] = []
    current: list[PGresult] = []
    while True:
        result = yield from fetch(pgconn)
        if result is None:  # the end of one command's results
            answers.append(current)
            current = []
        elif result.status == pq.ExecStatus.PIPELINE_SYNC:
            return answers
        else:
            current.append(result)


def _answer_of_one(pgconn: PGconn) -> Any:
    """Generator (for `conn.wait`): flush one simple query and read its results to the end."""
    yield from send(pgconn)
    while (yield from fetch(pgconn)) is not None:
        pass


def _first_failure(
    results: list[list[PGresult]], conn: psycopg.AsyncConnection[Any]
) -> psycopg.Error | None:
    for command in results:
        for result in command:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                return errors.error_from_result(result, encoding=conn.info.encoding)
    for command in results:
        if not command or command[-1].status not in _OK:
            status = command[-1].status if command else None
            return psycopg.InternalError(f"a statement answered {status!r}")
    return None


def _answer(results: list[PGresult]) -> Answer:
    result = results[-1]
    rows = result.ntuples
    first = result.get_value(0, 0) if rows and result.nfields else None
    if result.status == pq.ExecStatus.TUPLES_OK:
        return Answer(rows, first)
    return Answer(result.command_tuples or 0, None)
