"""Stage 4: collect encoded batches into shard files and commit them durably.

Commit order (docs/design/commit-order.md): every file of a shard is written under a
temporary name, fsynced and renamed, the directory is fsynced, and only then does the
manifest mark the shard's rows done, in one transaction recording each row's shard
and position. A crash before that transaction leaves a shard no row points to, which
nothing ever reads; a crash after it leaves a complete shard.
"""

from __future__ import annotations

import errno
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError


@dataclass
class ShardRecord:
    name: str
    rows: list[tuple[int, int, int]]  # (video id, index in shard, frames in stream)


@dataclass
class _Buffer:
    ids: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    times: list[list[float | None] | None] = field(default_factory=list)  # per video: its frames' pts, s
    videos: list[np.ndarray] = field(default_factory=list)
    frames: list[np.ndarray] = field(default_factory=list)
    opened: float = field(default_factory=time.monotonic)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write to a temporary name, fsync, rename: readers see all of it or nothing."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def _entry(video_id: int, path: str, index: int, times: list[float | None] | None) -> dict[str, object]:
    """A video's sidecar entry; "times" (rounded to the microsecond) only where the decoder gave them,
    so a shard's keys are the old ones plus that one."""
    entry: dict[str, object] = {"id": video_id, "path": path, "index": index}
    if times is not None:
        entry["times"] = [None if t is None else round(t, 6) for t in times]
    return entry


class ShardWriter:
    """Buffers encoded videos; `flush` writes one shard and returns what to commit."""

    def __init__(self, shards_dir: Path, writer_id: str, save_frames: bool) -> None:
        self.dir = shards_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.writer_id = writer_id
        self.save_frames = save_frames
        self.seq = 0
        self.buffer = _Buffer()
        self.extra: dict[str, object] = {}  # more keys for every sidecar (the model fingerprint)

    def __len__(self) -> int:
        return len(self.buffer.ids)

    def age(self) -> float:
        return time.monotonic() - self.buffer.opened if self.buffer.ids else 0.0

    def add(
        self, ids: list[int], paths: list[str], counts: list[int], videos: np.ndarray, frames: np.ndarray,
        times: list[list[float | None] | None] | None = None,
    ) -> None:
        """Buffer encoded videos; `times` (per video, its sampled frames' presentation times in
        seconds, or None where unknown) goes into the sidecar's entry for the export."""
        p = self.buffer
        if not p.ids:
            p.opened = time.monotonic()
        p.ids += ids
        p.paths += paths
        p.counts += counts
        p.times += list(times) if times is not None else [None] * len(ids)
        p.videos.append(videos)
        if self.save_frames:
            p.frames.append(frames)

    def flush(self, limit: int | None = None) -> ShardRecord | None:
        """Write the first `limit` buffered videos (all of them by default) as one shard.

        A batch may be larger than a shard: the rest stays buffered for the next flush,
        so no shard ever holds more than `limit` rows.
        """
        p = self.buffer
        if not p.ids:
            return None
        take = len(p.ids) if limit is None else min(limit, len(p.ids))
        self.seq += 1
        name = f"{self.writer_id}-{self.seq:05d}"
        all_videos = np.concatenate(p.videos).astype(np.float32, copy=False)
        all_frames = np.concatenate(p.frames).astype(np.float32, copy=False) if self.save_frames else None
        videos = all_videos[:take]
        ids, paths, counts, times = p.ids[:take], p.paths[:take], p.counts[:take], p.times[:take]
        sidecar = {
            "shard": name,
            "videos": [_entry(i, path, k, t) for k, (i, path, t) in enumerate(zip(ids, paths, times))],
            "dim": int(videos.shape[1]),
            "frames_file": f"{name}.frames.npy" if self.save_frames else None,
            **self.extra,
        }
        try:
            atomic_write(self.dir / f"{name}.npy", npy_bytes(videos))
            if all_frames is not None:
                atomic_write(self.dir / f"{name}.frames.npy", npy_bytes(all_frames[:take]))
            atomic_write(self.dir / f"{name}.json", json.dumps(sidecar, ensure_ascii=False).encode())
            fsync_dir(self.dir)
        except OSError as e:
            for suffix in (".npy", ".frames.npy", ".json"):
                (self.dir / f"{name}{suffix}").unlink(missing_ok=True)
            what = "disk full" if e.errno in (errno.ENOSPC, errno.EDQUOT) else (e.strerror or str(e))
            raise PipelineError(f"cannot write shards to {self.dir}: {what}") from None
        record = ShardRecord(name, [(i, k, c) for k, (i, c) in enumerate(zip(ids, counts))])
        rest = _Buffer(p.ids[take:], p.paths[take:], p.counts[take:], p.times[take:], opened=p.opened)
        if rest.ids:
            rest.videos.append(all_videos[take:])
            if all_frames is not None:
                rest.frames.append(all_frames[take:])
        self.buffer = rest
        return record
