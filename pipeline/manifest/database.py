"""The manifest's connection to its database: engines, transactions, retries, the schema.

Every other part of the manifest is written as functions of one Connection run by
write() or read() here, so the rules that keep concurrent runs safe live in one
place: on SQLite, writers take the lock up front (BEGIN IMMEDIATE) and never deadlock
upgrading a read lock; on PostgreSQL, READ COMMITTED with row locks taken by the
claim itself. A busy database or a dropped connection is retried, never surfaced.
"""

from __future__ import annotations

import atexit
import random
import time
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from pipeline.errors import PipelineError

SCHEMA_SQL = Path(__file__).resolve().parent.parent.parent / "schema.sql"
# Columns schema.sql gained after jobs existed, in the order added: (table, column, SQL type).
# A new column goes at the end of its table in schema.sql and here, so old and new jobs agree.
ADDED_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("videos", "decoded_on", "TEXT"),
)
T = TypeVar("T")

# Every engine still open, closed at exit: Python's teardown used to close them by garbage
# collection, and the CLI now leaves by os._exit (pipeline/quick_exit.py) after the atexit
# handlers. Closing SQLite's last connection merges its WAL into manifest.sqlite.
_OPEN: "weakref.WeakSet[Engine]" = weakref.WeakSet()


@atexit.register
def close_all() -> None:
    for engine in list(_OPEN):
        engine.dispose()


def _retry_locked(fn: Callable[[], T], tries: int = 8) -> T:
    """Retry what is worth retrying, with backoff.

    SQLite: a busy database (its busy timeout covers most waits, this the rest).
    PostgreSQL: a connection that dropped (server restart, network blip in a day-long
    run); the pool has already thrown it away, the next try opens a fresh one.
    """
    delay = 0.05
    for attempt in range(tries):
        try:
            return fn()
        except DBAPIError as e:
            text = str(e).lower()
            transient = e.connection_invalidated or "locked" in text or "busy" in text
            if attempt == tries - 1 or not transient:
                raise
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


class Database:
    """An open manifest database: the base every per-job part of Manifest builds on."""

    def __init__(self, url: str) -> None:
        self.url = url = _with_driver(url)
        self.is_sqlite = url.startswith("sqlite")
        try:
            self.engine: Engine = self._make_engine(url)
        except (SQLAlchemyError, ImportError, ValueError) as e:
            raise PipelineError(f"cannot open manifest {url}: {e}") from None
        _OPEN.add(self.engine)

    def _make_engine(self, url: str) -> Engine:
        if not self.is_sqlite:
            # READ COMMITTED, and claims take rows with FOR UPDATE SKIP LOCKED (see claim()).
            # No pre-ping (a round trip per transaction): a dropped connection is retried instead.
            # A client frozen inside a transaction (SIGSTOP, swap storm) would hold its row
            # locks for ever: the server ends such a transaction after a minute.
            return create_engine(
                url, pool_size=2, max_overflow=2,
                connect_args={"options": "-c idle_in_transaction_session_timeout=60000"},
            )
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            # The driver's own transaction handling is off; we issue BEGIN ourselves
            # so that writers take the lock up front (BEGIN IMMEDIATE) and never
            # deadlock upgrading a read lock.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Connection) -> None:
            mode = "DEFERRED" if conn.get_execution_options().get("readonly") else "IMMEDIATE"
            conn.exec_driver_sql(f"BEGIN {mode}")

        return engine

    def write(self, fn: Callable[[Connection], T]) -> T:
        """Run fn in one write transaction, retried while the database is busy."""

        def attempt() -> T:
            with self.engine.begin() as conn:
                return fn(conn)

        try:
            return _retry_locked(attempt)
        except OperationalError as e:
            raise PipelineError(f"manifest {self.url}: {e.orig}") from None

    def read(self, fn: Callable[[Connection], T]) -> T:
        """Run fn in one read transaction: on SQLite BEGIN DEFERRED, no write lock taken (WAL)."""

        def attempt() -> T:
            with self.engine.connect().execution_options(readonly=True) as conn:
                with conn.begin():
                    return fn(conn)

        try:
            return _retry_locked(attempt)
        except OperationalError as e:
            raise PipelineError(f"manifest {self.url}: {e.orig}") from None

    def create_schema(self) -> None:
        """Apply schema.sql; every statement is idempotent, so this is safe at every open."""
        statements = [s.strip() for s in _strip_comments(SCHEMA_SQL.read_text()).split(";")]

        def apply(conn: Connection) -> None:
            for stmt in statements:
                if stmt:
                    conn.exec_driver_sql(stmt)

        self.write(apply)
        self.migrate()

    def migrate(self) -> None:
        """Add the columns schema.sql gained after a job was created (CREATE TABLE IF NOT
        EXISTS leaves an old table as it was). Only reads unless one is missing; the check
        is repeated inside the write transaction, so two runs starting at once add it once."""

        def missing(conn: Connection) -> list[tuple[str, str, str]]:
            have: dict[str, set[str]] = {}
            for table, _column, _kind in ADDED_COLUMNS:
                if table not in have:
                    if self.is_sqlite:
                        rows = conn.exec_driver_sql(f"PRAGMA table_info({table})").all()
                        have[table] = {r[1] for r in rows}
                    else:
                        rows = conn.exec_driver_sql(
                            "SELECT column_name FROM information_schema.columns "
                            "WHERE table_name = %(t)s AND table_schema = current_schema()", {"t": table}
                        ).all()
                        have[table] = {r[0] for r in rows}
            return [c for c in ADDED_COLUMNS if have[c[0]] and c[1] not in have[c[0]]]

        if not self.read(missing):
            return

        def add(conn: Connection) -> None:
            for table, column, kind in missing(conn):
                conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")

        self.write(add)

    def close(self) -> None:
        self.engine.dispose()


def _with_driver(url: str) -> str:
    """postgresql:// means psycopg 3 here (SQLAlchemy's own default would be psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
