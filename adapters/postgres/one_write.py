"""One transaction's statements sent in one write, their answers read in one go (DR-59).

psycopg's pipeline mode sends each statement as it is executed: every `execute` polls the
socket, flushes that one statement and reads whatever has come back, through psycopg's cursor
and result machinery. A batch of the webhook path (DR-48) runs two or three statements per
delivery, so it paid all that per statement, and Postgres woke once per statement. Measured
on this project's machine (16 trivial prepared statements a transaction): 46-58 µs of the
client's CPU and 20-23 µs of the backend's per statement through psycopg's pipeline, against
4-5 µs and 6-7 µs when libpq sends them in one write and the answers are read once.

`run_transaction` does that on a psycopg connection, through psycopg's own libpq wrapper
(`conn.pgconn`): the parameters are converted exactly as psycopg converts them for `execute`
(its `PostgresQuery`, with the connection's adapters), each statement is prepared once per
connection under a name of ours, and BEGIN, the statements and COMMIT go out in one pipeline
with one sync. What psycopg exposes for this is partly private (`psycopg._queries`), which is
why the dependency is pinned and `tests/integration/test_one_write.py` runs it against a real
Postgres, errors and lost prepared statements included.

psycopg itself deallocates every prepared statement of a connection (DEALLOCATE ALL) after a
rollback it ran, ours included. A statement whose name has gone fails the transaction, which
wrote nothing: the connection's names are then forgotten, and the transaction runs once more
with new ones (unless it had joined a transaction already open, whose earlier work the
failure rolled back: that is the caller's to judge).
"""

from __future__ import annotations

import itertools
import weakref
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import abc, errors, pq
from psycopg._queries import PostgresQuery
from psycopg.adapt import Transformer
from psycopg.generators import fetch, send
from psycopg.pq.abc import PGconn, PGresult

Statement = tuple[str, Sequence[Any] | dict[str, Any]]
Key = tuple[bytes, tuple[int, ...]]  # a statement's text (as sent) and its parameters' types

# At most this many statements stay prepared per connection (psycopg keeps 100 of its own):
# the least recently used beyond it are closed in the next transaction's pipeline. A
# statement's parameters typed differently (a NULL, a larger int) make another one.
MAX_PREPARED = 64

_IDLE = pq.TransactionStatus.IDLE
_JOINABLE = (_IDLE, pq.TransactionStatus.INTRANS)
_TUPLES = pq.ExecStatus.TUPLES_OK
_FAILED = (pq.ExecStatus.FATAL_ERROR, pq.ExecStatus.PIPELINE_ABORTED)
# A name of ours gone (psycopg's DEALLOCATE ALL), or one still there that we had forgotten.
_NAMES_LOST = (errors.InvalidSqlStatementName, errors.DuplicatePreparedStatement)


@dataclass(frozen=True, slots=True)
class Answer:
    """What one statement answered: the rows it returned or touched, the first column of its
    first row as text (None without one, or for NULL), and with `rows=True` its rows, loaded
    by psycopg's loaders as its `dict_row` would give them."""

    rowcount: int
    first: bytes | None
    rows: list[dict[str, Any]] | None = None


@dataclass(slots=True)
class _Names:
    """The statements prepared on one connection, least recently used first."""

    prefix: bytes
    names: OrderedDict[Key, bytes] = field(default_factory=OrderedDict)
    made: int = 0

    def new_name(self) -> bytes:
        self.made += 1
        return self.prefix + str(self.made).encode()


@dataclass(slots=True)
class _Plan:
    """What one transaction sends, and where each command's answer will be."""

    begin: bool
    # Each statement's name, its parameters, and whether it is prepared first.
    sends: list[tuple[bytes, PostgresQuery, bool]] = field(default_factory=list)
    prepares: dict[int, tuple[Key, bytes]] = field(default_factory=dict)  # at -> key, name
    closes: dict[int, tuple[Key, bytes]] = field(default_factory=dict)  # at -> key, name
    statements: list[int] = field(default_factory=list)  # at, per statement
    commands: int = 0


_generations = itertools.count(1)
_prepared: weakref.WeakKeyDictionary[psycopg.AsyncConnection[Any], _Names] = (
    weakref.WeakKeyDictionary()
)


def _names_of(conn: psycopg.AsyncConnection[Any]) -> _Names:
    names = _prepared.get(conn)
    if names is None:
        names = _prepared[conn] = _Names(b"_cc%d_" % next(_generations))
    return names


async def run_transaction(
    conn: psycopg.AsyncConnection[Any], statements: Sequence[Statement], *, rows: bool = False
) -> list[Answer]:
    """`statements` as one transaction in one write; their answers, in order.

    The transaction is BEGIN, them, COMMIT, or, on a connection with a transaction already
    open (the pool's check of an idle connection runs a SELECT, which opens one), that
    transaction, joined as psycopg's own `execute` joins it and committed with them. The first
    statement that fails fails them all: its error is raised as psycopg raises it (the same
    classes), and the connection is left idle, the transaction rolled back. Cancelled or
    broken half-way, the connection is closed (its pool replaces it), and a failure to roll
    back is raised as an OperationalError.
    """
    try:
        return await _run(conn, statements, rows)
    except _TryAgain:
        return await _run(conn, statements, rows)


class _TryAgain(Exception):
    """The transaction failed on a name of ours gone, wrote nothing and undid nothing else."""


async def _run(
    conn: psycopg.AsyncConnection[Any], statements: Sequence[Statement], rows: bool
) -> list[Answer]:
    transformer = Transformer.from_context(conn)
    converted: list[PostgresQuery] = []
    for query, parameters in statements:  # bad input fails here, before anything is sent
        statement = PostgresQuery(transformer)
        statement.convert(query, parameters)
        converted.append(statement)
    pgconn = conn.pgconn
    async with conn.lock:
        status = pgconn.transaction_status
        if status not in _JOINABLE or pgconn.pipeline_status:
            raise psycopg.ProgrammingError(
                f"run_transaction needs an idle connection or an open transaction, not {status!r}"
            )
        names = _names_of(conn)
        plan = _plan(names, converted, begin=status == _IDLE)
        try:
            results = await _exchange(conn, plan)
        except BaseException:
            await conn.close()  # cancelled or broken mid-exchange: its state is unknown
            raise
        _keep_names(names, plan, results)
        # What follows COMMIT (statements closed) cannot undo it: only what precedes counts.
        failure = _first_failure(results[: plan.commands - len(plan.closes)], conn)
        if failure is not None:
            if isinstance(failure, _NAMES_LOST):
                _prepared.pop(conn, None)  # the next names are new ones: no clash with any left
            if pgconn.transaction_status != _IDLE:
                try:
                    pgconn.send_query(b"ROLLBACK")
                    await conn.wait(_answer_of_one(pgconn))
                except BaseException as exc:
                    await conn.close()  # its state is unknown: the pool replaces it
                    if isinstance(exc, Exception):
                        raise psycopg.OperationalError("the rollback failed") from failure
                    raise  # cancelled
            if isinstance(failure, _NAMES_LOST) and plan.begin:
                raise _TryAgain from failure
            raise failure
    loader = transformer if rows else None
    return [_answer(results[at], loader) for at in plan.statements]


def _plan(names: _Names, converted: list[PostgresQuery], *, begin: bool) -> _Plan:
    """The commands to send: each statement, prepared first where this connection lacks it,
    and the least recently used statements beyond MAX_PREPARED closed."""
    plan = _Plan(begin=begin)
    plan.commands = 1 if begin else 0
    new: dict[Key, bytes] = {}
    in_use: set[Key] = set()
    for statement in converted:
        key = (statement.query, tuple(statement.types))
        in_use.add(key)
        name = names.names.get(key) or new.get(key)
        prepare = name is None
        if name is None:
            name = new[key] = names.new_name()
            plan.prepares[plan.commands] = (key, name)
            plan.commands += 1
        elif key in names.names:
            names.names.move_to_end(key)
        plan.sends.append((name, statement, prepare))
        plan.statements.append(plan.commands)
        plan.commands += 1
    plan.commands += 1  # COMMIT
    excess = len(names.names) + len(new) - MAX_PREPARED
    for key, name in names.names.items():  # least recently used first
        if excess <= 0:
            break
        if key not in in_use:
            plan.closes[plan.commands] = (key, name)
            plan.commands += 1
            excess -= 1
    return plan


async def _exchange(conn: psycopg.AsyncConnection[Any], plan: _Plan) -> list[list[PGresult]]:
    """The plan's commands in one pipeline with one sync, each command's results in order."""
    pgconn = conn.pgconn
    pgconn.enter_pipeline_mode()
    if plan.begin:
        pgconn.send_query_params(b"BEGIN", None)
    for name, statement, prepare in plan.sends:
        if prepare:
            pgconn.send_prepare(name, statement.query, param_types=statement.types)
        pgconn.send_query_prepared(
            name, statement.params, param_formats=statement.formats, result_format=pq.Format.TEXT
        )
    pgconn.send_query_params(b"COMMIT", None)
    for _, name in plan.closes.values():  # after COMMIT: closing one is not transactional
        pgconn.send_close_prepared(name)
    pgconn.pipeline_sync()
    results: list[list[PGresult]] = await conn.wait(_all_answers(pgconn, plan.commands))
    pgconn.exit_pipeline_mode()
    return results


def _keep_names(names: _Names, plan: _Plan, results: list[list[PGresult]]) -> None:
    """Remember the statements prepared now and forget those closed, as the server answered."""
    for at, (key, name) in plan.prepares.items():
        if results[at] and results[at][-1].status == pq.ExecStatus.COMMAND_OK:
            names.names[key] = name
    for at, (key, _) in plan.closes.items():
        if results[at] and results[at][-1].status == pq.ExecStatus.COMMAND_OK:
            names.names.pop(key, None)


def _all_answers(pgconn: PGconn, commands: int) -> abc.PQGen[list[list[PGresult]]]:
    """Generator (for `conn.wait`): flush everything, then each command's results until the
    sync."""
    yield from send(pgconn)
    answers: list[list[PGresult]] = []
    current: list[PGresult] = []
    while True:
        result = yield from fetch(pgconn)
        if result is None:  # the end of one command's results
            if pgconn.status == pq.ConnStatus.BAD or len(answers) == commands:
                raise psycopg.OperationalError("the connection gave no end to the answers")
            answers.append(current)
            current = []
        elif result.status == pq.ExecStatus.PIPELINE_SYNC:
            if len(answers) != commands:
                raise psycopg.OperationalError(f"{len(answers)} answers to {commands} commands")
            return answers
        else:
            current.append(result)


def _answer_of_one(pgconn: PGconn) -> abc.PQGen[None]:
    """Generator (for `conn.wait`): flush one simple query and read its results to the end."""
    yield from send(pgconn)
    while (yield from fetch(pgconn)) is not None:
        pass


def _first_failure(
    results: list[list[PGresult]], conn: psycopg.AsyncConnection[Any]
) -> psycopg.Error | None:
    """The error of the first command that failed (the ones after it were not run)."""
    for command in results:
        for result in command:
            if result.status == pq.ExecStatus.FATAL_ERROR:
                return errors.error_from_result(result, encoding=conn.info.encoding)
    if any(result.status in _FAILED for command in results for result in command):
        return psycopg.OperationalError("the pipeline was aborted without an error")
    return None


def _answer(results: list[PGresult], loader: abc.Transformer | None) -> Answer:
    if not results:
        return Answer(0, None, [] if loader else None)
    result = results[-1]
    count = result.ntuples
    if result.status != _TUPLES:
        return Answer(result.command_tuples or 0, None, [] if loader else None)
    first = result.get_value(0, 0) if count and result.nfields else None
    if loader is None:
        return Answer(count, first)
    loader.set_pgresult(result)
    names = [(result.fname(n) or b"").decode(loader.encoding) for n in range(result.nfields)]
    loaded = loader.load_rows(0, count, lambda values: dict(zip(names, values, strict=True)))
    return Answer(count, first, loaded)
