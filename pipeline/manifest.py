"""The manifest: every video's state, the job's settings, and who holds which claim.

Everything that must survive a crash goes through here, in short transactions.
The tables are created from schema.sql (the source of truth); the SQLAlchemy
declarations below mirror it for queries and tests/test_schema.py checks the two
agree. See docs/design/claim-protocol.md for why claims look the way they do.
"""

from __future__ import annotations

import os
import random
import re
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    bindparam,
    case,
    create_engine,
    event,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, OperationalError, SQLAlchemyError

from pipeline.errors import PipelineError
from pipeline.settings import JobSettings, to_text

SCHEMA_SQL = Path(__file__).resolve().parent.parent / "schema.sql"
DB_FILENAME = "manifest.sqlite"
T = TypeVar("T")

metadata = MetaData()
job_settings = Table(
    "job_settings",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
videos = Table(
    "videos",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("path", Text, nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("owner", Text),
    Column("lease_until", Float),
    Column("claims", Integer, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    Column("shard", Text),
    Column("shard_index", Integer),
    Column("num_frames", Integer),
    Column("updated_at", Float),
)
runs = Table(
    "runs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("proc_start", Text),
    Column("state", Text, nullable=False),
    Column("device", Text),
    Column("batch_size", Integer),
    Column("num_workers", Integer),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("videos_done", Integer, nullable=False, server_default="0"),
    Column("videos_failed", Integer, nullable=False, server_default="0"),
    Column("frames_done", BigInteger, nullable=False, server_default="0"),
    Column("message", String),
)

STATES = ("pending", "running", "done", "failed", "missing")


@dataclass(frozen=True)
class Claim:
    id: int
    path: str
    attempts: int
    size: int


@dataclass(frozen=True)
class DoneRow:
    id: int
    path: str
    shard: str
    shard_index: int


def _proc_stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def proc_start_ticks(pid: int) -> str | None:
    """The kernel's start time of a process: with the pid, names one process for ever."""
    stat = _proc_stat(pid)
    return stat[19] if stat else None


def process_alive(pid: int, start: str | None) -> bool:
    """Alive: exists, is not a zombie (dead, not yet waited for), and is the same process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc: trust kill()
    return stat[0] not in ("Z", "X") and (start is None or stat[19] == start)


def database_url(output_dir: str | os.PathLike[str], db: str | None) -> str:
    if db:
        return db
    return f"sqlite:///{Path(output_dir).resolve() / DB_FILENAME}"


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


class Manifest:
    """One job's manifest. Cheap to open; every method is one short transaction."""

    def __init__(self, url: str) -> None:
        self.url = url = _with_driver(url)
        self.is_sqlite = url.startswith("sqlite")
        try:
            self.engine: Engine = self._make_engine(url)
        except (SQLAlchemyError, ImportError, ValueError) as e:
            raise PipelineError(f"cannot open manifest {url}: {e}") from None

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

    # -- plumbing ---------------------------------------------------------------

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

    def exists(self) -> bool:
        def check(conn: Connection) -> bool:
            if self.is_sqlite:
                q = "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='job_settings'"
            else:
                q = "SELECT count(*) FROM information_schema.tables WHERE table_name='job_settings'"
            if not conn.exec_driver_sql(q).scalar():
                return False
            return bool(conn.execute(select(func.count()).select_from(job_settings)).scalar())

        return self.read(check)

    def close(self) -> None:
        self.engine.dispose()

    # -- job settings --------------------------------------------------------------

    def settings(self) -> dict[str, str]:
        return self.read(lambda c: {k: v for k, v in c.execute(select(job_settings.c.key, job_settings.c.value))})

    def job(self) -> JobSettings:
        return JobSettings.from_strings(self.settings())

    def set_setting(self, key: str, value: str) -> None:
        def put(conn: Connection) -> None:
            conn.execute(job_settings.delete().where(job_settings.c.key == key))
            conn.execute(job_settings.insert().values(key=key, value=value))

        self.write(put)

    def create_job(self, job: JobSettings, asked: dict[str, Any]) -> JobSettings:
        """Record the job's settings on first use; afterwards refuse different ones."""

        def create_or_check(conn: Connection) -> JobSettings:
            stored = {k: v for k, v in conn.execute(select(job_settings.c.key, job_settings.c.value))}
            if not stored:
                rows = [{"key": k, "value": v} for k, v in job.as_strings().items()]
                conn.execute(job_settings.insert(), rows)
                return job
            existing = JobSettings.from_strings(stored)
            _check_same(existing, asked)
            return existing

        return self.write(create_or_check)

    def check_job(self, asked: dict[str, Any]) -> JobSettings:
        existing = self.job()
        _check_same(existing, asked)
        return existing

    # -- scanning ------------------------------------------------------------------

    def known_files(self) -> dict[str, tuple[int, int, int, str, str | None]]:
        """path -> (id, size, mtime_ns, status, shard) for every row."""
        q = select(videos.c.path, videos.c.id, videos.c.size, videos.c.mtime_ns, videos.c.status, videos.c.shard)
        return self.read(lambda c: {r[0]: tuple(r[1:]) for r in c.execute(q)})

    def apply_scan(
        self,
        new: Sequence[tuple[str, int, int]],
        changed: Sequence[tuple[int, int, int]],
        vanished: Sequence[int],
        restored: Sequence[tuple[int, str]],
    ) -> None:
        """One transaction: a scan is applied whole or not at all."""
        now = time.time()

        def apply(conn: Connection) -> None:
            if not self.is_sqlite:  # SQLite's BEGIN IMMEDIATE already serialises scans
                conn.exec_driver_sql("LOCK TABLE videos IN SHARE ROW EXCLUSIVE MODE")
            next_id = (conn.execute(select(func.max(videos.c.id))).scalar() or 0) + 1
            if new:
                conn.execute(
                    videos.insert(),
                    [
                        {"id": next_id + i, "path": p, "size": s, "mtime_ns": m, "status": "pending", "updated_at": now}
                        for i, (p, s, m) in enumerate(new)
                    ],
                )
            if changed:
                conn.execute(
                    update(videos)
                    .where(videos.c.id == bindparam("vid"))
                    .values(
                        size=bindparam("s"), mtime_ns=bindparam("m"), status="pending", owner=None,
                        lease_until=None, attempts=0, claims=0, error=None, shard=None, shard_index=None,
                        num_frames=None, updated_at=now,
                    ),
                    [{"vid": i, "s": s, "m": m} for i, s, m in changed],
                )
            if vanished:
                conn.execute(
                    update(videos)
                    .where(videos.c.id == bindparam("vid"))
                    .values(status="missing", owner=None, lease_until=None, updated_at=now),
                    [{"vid": i} for i in vanished],
                )
            if restored:
                conn.execute(
                    update(videos).where(videos.c.id == bindparam("vid")).values(status=bindparam("st"), updated_at=now),
                    [{"vid": i, "st": st} for i, st in restored],
                )

        self.write(apply)

    # -- runs ----------------------------------------------------------------------

    def register_run(self, device: str, batch_size: int, num_workers: int) -> str:
        pid = os.getpid()
        host = socket.gethostname()
        safe_host = re.sub(r"[^A-Za-z0-9.]+", "_", host).strip("._")[:40] or "host"
        run_id = f"{safe_host}-{pid}-{os.urandom(3).hex()}"  # also names shard files
        now = time.time()
        self.write(
            lambda c: c.execute(
                runs.insert().values(
                    id=run_id, host=host, pid=pid, proc_start=proc_start_ticks(pid), state="running",
                    device=device, batch_size=batch_size, num_workers=num_workers,
                    started_at=now, heartbeat_at=now,
                )
            )
        )
        return run_id

    def end_run(self, run_id: str, state: str, message: str | None = None) -> None:
        self.write(
            lambda c: c.execute(
                update(runs).where(runs.c.id == run_id).values(state=state, ended_at=time.time(), message=message)
            )
        )

    def heartbeat(self, run_id: str, lease_seconds: float) -> None:
        """Prove this run is alive and extend its claims.

        A run that was only stalled (and so declared dead, its claims taken) is alive
        again: it says so, and goes on with whatever it claims next.
        """
        now = time.time()

        def beat(conn: Connection) -> None:
            conn.execute(update(runs).where(runs.c.id == run_id).values(heartbeat_at=now, state="running", ended_at=None))
            conn.execute(
                update(videos)
                .where(and_(videos.c.owner == run_id, videos.c.status == "running"))
                .values(lease_until=now + lease_seconds)
            )

        self.write(beat)

    def reap(self, lease_seconds: float, max_claims: int) -> int:
        """Give back the claims of runs that are gone; return how many rows went back.

        A run on this host whose process is dead is gone at once; a run elsewhere
        is gone when its heartbeat is older than a lease. Rows whose own lease ran
        out are free too. A row claimed max_claims times without ever finishing is
        failed rather than handed out for ever.
        """
        now = time.time()
        host = socket.gethostname()

        def reap_tx(conn: Connection) -> int:
            live = conn.execute(
                select(runs.c.id, runs.c.host, runs.c.pid, runs.c.proc_start, runs.c.heartbeat_at).where(
                    runs.c.state == "running"
                )
            ).all()
            dead = [
                r.id
                for r in live
                if (r.host == host and not process_alive(r.pid, r.proc_start)) or r.heartbeat_at < now - lease_seconds
            ]
            if dead:
                conn.execute(
                    update(runs)
                    .where(runs.c.id.in_(dead))
                    .values(state="crashed", ended_at=now, message="process gone; claims given back")
                )
            stale = and_(
                videos.c.status == "running",
                or_(videos.c.owner.in_(dead) if dead else False, videos.c.lease_until < now),
            )
            exhausted = conn.execute(
                update(videos)
                .where(and_(stale, videos.c.claims >= max_claims))
                .values(
                    status="failed", owner=None, lease_until=None, updated_at=now,
                    error=f"abandoned: claimed {max_claims} times by runs that stopped before finishing it",
                )
            ).rowcount
            back = conn.execute(
                update(videos).where(stale).values(status="pending", owner=None, lease_until=None, updated_at=now)
            ).rowcount
            return back + exhausted

        return self.write(reap_tx)

    # -- claims --------------------------------------------------------------------

    def claim(self, run_id: str, limit: int, lease_seconds: float) -> list[Claim]:
        """Atomically take up to `limit` pending rows for this run (one statement)."""
        now = time.time()
        pick = select(videos.c.id).where(videos.c.status == "pending").order_by(videos.c.id).limit(limit)
        if not self.is_sqlite:
            pick = pick.with_for_update(skip_locked=True)
        stmt = (
            update(videos)
            .where(videos.c.id.in_(pick.scalar_subquery()))
            .values(
                status="running", owner=run_id, lease_until=now + lease_seconds,
                claims=videos.c.claims + 1, updated_at=now,
            )
            .returning(videos.c.id, videos.c.path, videos.c.attempts, videos.c.size)
        )
        rows = self.write(lambda c: c.execute(stmt).all())
        return sorted((Claim(r.id, r.path, r.attempts, r.size) for r in rows), key=lambda c: c.id)

    def complete(self, run_id: str, shard: str, rows: Sequence[tuple[int, int, int]], frames: int) -> int:
        """Mark (id, shard_index, num_frames) rows done in `shard`, only those still ours.

        Called after the shard file is durably in place (see writer.py); a row whose
        claim we lost meanwhile is left to its new owner and its line in the shard
        is simply never read.
        """
        now = time.time()

        def commit(conn: Connection) -> int:
            conn.execute(
                update(videos)
                .where(and_(videos.c.id == bindparam("vid"), videos.c.owner == run_id, videos.c.status == "running"))
                .values(
                    status="done", shard=shard, shard_index=bindparam("idx"), num_frames=bindparam("nf"),
                    owner=None, lease_until=None, error=None, updated_at=now,
                ),
                [{"vid": i, "idx": idx, "nf": nf} for i, idx, nf in rows],
            )
            # Counted, not taken from rowcount: drivers disagree on it for executemany.
            done = conn.execute(select(func.count()).where(videos.c.shard == shard)).scalar() or 0
            conn.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(
                    videos_done=runs.c.videos_done + done, frames_done=runs.c.frames_done + frames, heartbeat_at=now
                )
            )
            return done

        return self.write(commit)

    def fail_attempt(self, run_id: str, video_id: int, error: str, max_attempts: int, final: bool = False) -> str:
        """Count a failed attempt; the row goes back to pending or, at the limit (or if final), to failed."""
        if final:
            max_attempts = 0
        now = time.time()

        def fail(conn: Connection) -> str:
            conn.execute(
                update(videos)
                .where(and_(videos.c.id == video_id, videos.c.owner == run_id))
                .values(
                    attempts=videos.c.attempts + 1,
                    status=case((videos.c.attempts + 1 >= max_attempts, "failed"), else_="pending"),
                    error=error[:2000], owner=None, lease_until=None, updated_at=now,
                )
            )
            status = conn.execute(select(videos.c.status).where(videos.c.id == video_id)).scalar()
            if status == "failed":
                conn.execute(update(runs).where(runs.c.id == run_id).values(videos_failed=runs.c.videos_failed + 1))
            return status or "missing"

        return self.write(fail)

    def release(self, run_id: str) -> int:
        """Give this run's claims back untouched (a clean stop): no attempt is counted."""
        stmt = (
            update(videos)
            .where(and_(videos.c.owner == run_id, videos.c.status == "running"))
            .values(status="pending", owner=None, lease_until=None, claims=func.max(videos.c.claims - 1, 0)
                    if self.is_sqlite else func.greatest(videos.c.claims - 1, 0))
        )
        return self.write(lambda c: c.execute(stmt).rowcount)

    def reset_failed(self) -> int:
        stmt = (
            update(videos)
            .where(videos.c.status == "failed")
            .values(status="pending", attempts=0, claims=0, error=None, updated_at=time.time())
        )
        return self.write(lambda c: c.execute(stmt).rowcount)

    # -- reading -------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        q = select(videos.c.status, func.count()).group_by(videos.c.status)
        got = dict(self.read(lambda c: c.execute(q).all()))
        out = {s: int(got.get(s, 0)) for s in STATES}
        out["total"] = sum(out.values())
        return out

    def failures(self, limit: int | None = None) -> list[tuple[str, str]]:
        q = select(videos.c.path, videos.c.error).where(videos.c.status == "failed").order_by(videos.c.id)
        if limit:
            q = q.limit(limit)
        return [(p, e or "") for p, e in self.read(lambda c: c.execute(q).all())]

    def runs(self) -> list[dict[str, Any]]:
        q = select(runs).order_by(runs.c.started_at)
        return [dict(r._mapping) for r in self.read(lambda c: c.execute(q).all())]

    def done_rows(self) -> list[DoneRow]:
        q = (
            select(videos.c.id, videos.c.path, videos.c.shard, videos.c.shard_index)
            .where(videos.c.status == "done")
            .order_by(videos.c.id)
        )
        return [DoneRow(*r) for r in self.read(lambda c: c.execute(q).all())]


def _with_driver(url: str) -> str:
    """postgresql:// means psycopg 3 here (SQLAlchemy's own default would be psycopg2)."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def _check_same(existing: JobSettings, asked: dict[str, Any]) -> None:
    for key, value in asked.items():
        have = getattr(existing, key)
        if have != value:
            raise PipelineError(
                f"this job was created with {key}={to_text(have)}, not {to_text(value)}: "
                f"use another --output-dir for different settings"
            )


def open_manifest(output_dir: str | os.PathLike[str], db: str | None, create: bool = False) -> Manifest:
    """Open the job's manifest; only `scan` creates one, every other command needs it."""
    url = database_url(output_dir, db)
    if url.startswith("sqlite") and not db:
        path = Path(output_dir) / DB_FILENAME
        if not create and not path.exists():
            raise PipelineError(f"no job in {output_dir}: run 'scan --video-dir DIR --output-dir {output_dir}' first")
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    m = Manifest(url)
    if create:
        m.create_schema()
    elif not m.exists():
        raise PipelineError(f"no job in {url}: run 'scan' first")
    return m


def job_exists(output_dir: str | os.PathLike[str], db: str | None) -> bool:
    try:
        open_manifest(output_dir, db).close()
        return True
    except PipelineError:
        return False
