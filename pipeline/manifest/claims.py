"""Claims on videos: take pending rows, commit them done, count failures, give them back.

Every method changes only rows this run still owns (owner = run_id and status =
running), so a run that lost a claim while stalled cannot overwrite its new
owner's work. See docs/design/claim-protocol.md and docs/design/commit-order.md.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from sqlalchemy import and_, bindparam, case, func, select, update
from sqlalchemy.engine import Connection

from pipeline.manifest.database import Database
from pipeline.manifest.tables import runs, videos


@dataclass(frozen=True)
class Claim:
    id: int
    path: str
    attempts: int
    size: int


class ClaimsMixin(Database):
    """Manifest methods that move a video through running to done, failed or back to pending."""

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

    def complete(
        self, run_id: str, shard: str, rows: Sequence[tuple[int, int, int]], frames: int,
        decoded_on: Mapping[int, str] | None = None,
    ) -> int:
        """Mark (id, shard_index, num_frames) rows done in `shard`, only those still ours.

        Called after the shard file is durably in place (see writer.py); a row whose
        claim we lost meanwhile is left to its new owner and its line in the shard
        is simply never read. `decoded_on`: video id -> 'gpu' or 'cpu', recorded with
        the commit (status shows the share).
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
            where = [{"vid": i, "on": decoded_on[i]} for i, _idx, _nf in rows if decoded_on and i in decoded_on]
            if where:
                conn.execute(
                    update(videos).where(and_(videos.c.id == bindparam("vid"), videos.c.shard == shard))
                    .values(decoded_on=bindparam("on")),
                    where,
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
