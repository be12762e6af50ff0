"""The scan's side of the manifest: what is registered, and a scan's diff applied whole.

scanner.py computes the diff (new, changed, vanished, restored files) against
known_files(); apply_scan writes it in one transaction so a scan killed halfway
leaves the manifest as it was, and two scans of the same job never interleave.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.engine import Connection

from pipeline.manifest.database import Database
from pipeline.manifest.tables import videos


class ScanMixin(Database):
    """Manifest methods that register videos."""

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
