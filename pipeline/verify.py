"""`verify`: are the job's features what the manifest says they are? Reads; never writes.

For every video the manifest marks done (the rows done so far, while a run goes on):
its shard is there and readable, holds a row at the recorded position, of the job's
dimension, finite and of unit norm (the stored feature is the L2-normalised mean of
the L2-normalised frame features, pipeline/encoder.py, so |norm - 1| < 1e-3 holds for
every honest row; per-frame features, with --save-frames, are checked the same way).
Each shard's sidecar must list the same videos at the same rows as the manifest, and
as many as the shard holds. The model fingerprint (pipeline/fingerprint.py) each shard
was made with must be the job's, and the job's checkpoint and model config must still
hash to what was recorded.

A shard is read once, memory-mapped, shard by shard, so a million-row job is checked
in bounded memory. Problems name their shard or video; jobs from before fingerprints
were recorded get a warning saying what could not be checked.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import fingerprint as fingerprints
from pipeline.errors import PipelineError
from pipeline.exports.npy import path_line
from pipeline.manifest import DoneRow, open_manifest

NORM_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Problem:
    message: str  # one line, naming the shard or video
    shard: str | None = None
    video: str | None = None


@dataclass
class Verified:
    done: int
    shards: int
    dim: int
    fingerprint: dict[str, Any] | None
    problems: list[Problem] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "done": self.done, "shards": self.shards, "dim": self.dim,
            "fingerprint": self.fingerprint, "problems": [asdict(p) for p in self.problems],
            "warnings": self.warnings,
        }


class _Checker:
    def __init__(self, shards: Path, dim: int, num_frames: int, job_fp: dict[str, Any] | None) -> None:
        self.dir, self.dim, self.num_frames, self.job_fp = shards, dim, num_frames, job_fp
        self.problems: list[Problem] = []
        self.unfingerprinted = 0

    def problem(self, message: str, shard: str | None = None, video: str | None = None) -> None:
        self.problems.append(Problem(message, shard, video))

    def video(self, row: DoneRow, message: str) -> None:
        self.problem(f"video {path_line(row.path)} (shard {row.shard}, row {row.shard_index}): {message}", row.shard, row.path)

    def _load(self, shard: str, suffix: str, rows: list[DoneRow]) -> np.ndarray | None:
        file = self.dir / f"{shard}{suffix}"
        try:
            data = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            reason = "missing" if not file.exists() else f"unreadable ({' '.join(str(e).split())})"
            self.problem(f"shard {file.name}: {reason}; {len(rows)} done videos have their feature there", shard)
            return None
        want = 2 if suffix == ".npy" else 3
        if data.ndim != want or data.dtype != np.float32 or data.shape[-1] != self.dim:
            self.problem(f"shard {file.name}: {data.dtype} {list(data.shape)}, not float32 [rows, "
                         f"{'frames, ' if want == 3 else ''}{self.dim}] as the job's", shard)
            return None
        if want == 3 and data.shape[1] != self.num_frames:
            self.problem(f"shard {file.name}: {data.shape[1]} frames per video, the job has {self.num_frames}", shard)
            return None
        return data

    def values(self, shard: str, suffix: str, rows: list[DoneRow]) -> int:
        """The rows' features: present, finite, unit norm. Returns the shard's row count (or -1)."""
        data = self._load(shard, suffix, rows)
        if data is None:
            return -1
        what = "feature" if suffix == ".npy" else "per-frame features"
        inside = [r for r in rows if 0 <= r.shard_index < data.shape[0]]
        for r in rows:
            if not 0 <= r.shard_index < data.shape[0]:
                self.video(r, f"no such row in {shard}{suffix}, which holds {data.shape[0]}")
        if not inside:
            return int(data.shape[0])
        index = np.fromiter((r.shard_index for r in inside), dtype=np.int64, count=len(inside))
        try:
            got = np.asarray(data[index], dtype=np.float64)
        except (OSError, ValueError) as e:
            self.problem(f"shard {shard}{suffix}: cannot be read ({e})", shard)
            return -1
        finite = np.isfinite(got).reshape(len(inside), -1).all(axis=1)
        norms = np.linalg.norm(np.where(np.isfinite(got), got, 0.0), axis=-1).reshape(len(inside), -1)
        for r, ok, n in zip(inside, finite, norms):
            if not ok:
                self.video(r, f"NaN or Inf in its {what}")
            elif np.abs(n - 1).max() >= NORM_TOLERANCE:
                worst = float(n.flat[np.abs(n - 1).argmax()])
                self.video(r, f"norm {worst:.6f}, not 1, of its {what}")
        return int(data.shape[0])

    def sidecar(self, shard: str, rows: list[DoneRow], shard_rows: int, frames: bool) -> None:
        file = self.dir / f"{shard}.json"
        try:
            side = json.loads(file.read_text())
            listed = side["videos"]
            assert isinstance(listed, list)
        except (OSError, ValueError, KeyError, TypeError, AssertionError) as e:
            self.problem(f"shard {shard}: sidecar {file.name} unreadable ({type(e).__name__}: {e})", shard)
            return
        if shard_rows >= 0 and len(listed) != shard_rows:
            self.problem(f"shard {shard}: sidecar lists {len(listed)} videos, the shard holds {shard_rows} rows", shard)
        if side.get("dim") is not None and side.get("dim") != self.dim:
            self.problem(f"shard {shard}: sidecar says {side.get('dim')}-d, the job is {self.dim}-d", shard)
        for r in rows:
            entry = listed[r.shard_index] if 0 <= r.shard_index < len(listed) else None
            if not isinstance(entry, dict):
                self.video(r, f"the sidecar of {shard} has no row {r.shard_index}")
            elif entry.get("id") != r.id or entry.get("path") != r.path:
                self.video(r, f"the sidecar of {shard} says row {r.shard_index} is video {entry.get('id')} "
                              f"({path_line(str(entry.get('path')))}), the manifest says {r.id}")
        if frames and not side.get("frames_file"):
            self.problem(f"shard {shard}: the job keeps per-frame features, its sidecar names no frames file", shard)
        shard_fp = side.get("fingerprint")
        if shard_fp is None:
            self.unfingerprinted += 1
        elif self.job_fp is not None and shard_fp.get("digest") != self.job_fp.get("digest"):
            what = ", ".join(fingerprints.differences(self.job_fp, shard_fp)) or "digest"
            self.problem(f"shard {shard}: made with another model than the job's ({what} differ: "
                         f"{fingerprints.describe(shard_fp)}, the job's {fingerprints.describe(self.job_fp)})", shard)


def verify(output_dir: str | os.PathLike[str], db: str | None = None) -> Verified:
    """Check every done row of the job (see the module doc); raises only when nothing can be checked."""
    manifest = open_manifest(output_dir, db)
    try:
        rows = manifest.done_rows()
        settings = manifest.settings()
        job = manifest.job()
        job_fp = fingerprints.stored(manifest)
    finally:
        manifest.close()
    if not rows:
        raise PipelineError(f"nothing to verify in {output_dir}: no video is done yet")
    dim = int(settings.get("dim", 0) or 0)
    checker = _Checker(Path(output_dir) / "shards", dim, job.num_frames, job_fp)
    warnings: list[str] = []
    if job_fp is None:
        warnings.append("the job's model fingerprint is unknown (no run of this version yet): "
                        "the shards are checked, the model they were made with is not")
    else:
        for message in fingerprints.check_current(job_fp, job):
            checker.problem(message)
        if job_fp.get("dim") != dim:
            checker.problem(f"the job's fingerprint says {job_fp.get('dim')}-d features, the job records {dim}-d")

    by_shard: dict[str, list[DoneRow]] = defaultdict(list)
    for r in rows:
        if r.shard is None or r.shard_index is None:
            checker.problem(f"video {path_line(r.path)}: done, but the manifest names no shard for it", video=r.path)
        else:
            by_shard[r.shard].append(r)
    for shard, members in sorted(by_shard.items()):
        shard_rows = checker.values(shard, ".npy", members)
        if job.save_frames:
            checker.values(shard, ".frames.npy", members)
        checker.sidecar(shard, members, shard_rows, job.save_frames)
    if checker.unfingerprinted:
        warnings.append(f"{checker.unfingerprinted} of {len(by_shard)} shards were written before fingerprints "
                        f"were recorded: the model they were made with cannot be checked")
    return Verified(len(rows), len(by_shard), dim, job_fp, checker.problems, warnings)
