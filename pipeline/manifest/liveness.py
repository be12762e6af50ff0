"""Runs and their liveness: register, heartbeat, end, and reap the claims of runs that are gone.

A claim is only as good as the run holding it: a run proves it is alive by its
heartbeat (which also extends its leases), and reap() gives back the claims of a
run whose process is dead (same host, known at once from /proc) or whose heartbeat
is older than a lease (any host). See docs/design/claim-protocol.md.
"""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

from sqlalchemy import and_, or_, select, update
from sqlalchemy.engine import Connection

from pipeline.manifest.database import Database
from pipeline.manifest.tables import runs, videos


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


class RunLivenessMixin(Database):
    """Manifest methods on the runs table, and the leases a run's liveness decides."""

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
