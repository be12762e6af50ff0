"""Read-only views of the manifest: counts, failures, runs, and the done rows export reads.

status, the progress bar, the launcher and reader.py only read; each view is one
read transaction, so on SQLite it never takes the write lock a run needs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from pipeline.manifest.database import Database
from pipeline.manifest.tables import STATES, runs, videos


@dataclass(frozen=True)
class DoneRow:
    id: int
    path: str
    shard: str
    shard_index: int
    num_frames: int | None = None  # frames counted in the stream
    times: list[float | None] | None = None  # its frames' presentation times, s (the shard's sidecar; reader fills it)


class ReportsMixin(Database):
    """Manifest methods that report on the job without changing it."""

    def counts(self) -> dict[str, int]:
        q = select(videos.c.status, func.count()).group_by(videos.c.status)
        got = dict(self.read(lambda c: c.execute(q).all()))
        out = {s: int(got.get(s, 0)) for s in STATES}
        out["total"] = sum(out.values())
        return out

    def decoded_on(self) -> dict[str, int]:
        """Done videos by where their frames were decoded: 'gpu', 'cpu', and 'unknown'
        (done before this was recorded); only the keys that occur."""
        q = select(videos.c.decoded_on, func.count()).where(videos.c.status == "done").group_by(videos.c.decoded_on)
        return {(on or "unknown"): int(n) for on, n in self.read(lambda c: c.execute(q).all())}

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
            select(videos.c.id, videos.c.path, videos.c.shard, videos.c.shard_index, videos.c.num_frames)
            .where(videos.c.status == "done")
            .order_by(videos.c.id)
        )
        return [DoneRow(*r) for r in self.read(lambda c: c.execute(q).all())]
