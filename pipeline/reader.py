"""The Python API over a job's output: features straight from the shards, no export needed.

Only rows the manifest marks done are read, at the shard and position it records,
so a shard left behind by a crash (written, never committed) is never seen. Each
shard's sidecar is checked against the manifest so a mismatch fails loudly.

    from pipeline.reader import load_features
    feats = load_features("features")      # feats.features [N, D], feats.paths
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.manifest import DoneRow, open_manifest


@dataclass
class Features:
    features: np.ndarray  # [N, D] float32, unit norm, in manifest (scan) order
    paths: list[str]
    ids: list[int]
    frames: np.ndarray | None = None  # [N, num_frames, D] with save_frames
    stream_frames: list[int | None] | None = None  # frames counted in each row's stream (the manifest's)
    times: list[list[float | None] | None] | None = None  # each row's frames' pts in s (None: shard written before)


def _gather(rows: list[DoneRow], shards: Path, suffix: str) -> np.ndarray | None:
    by_shard: dict[str, list[int]] = defaultdict(list)
    for pos, r in enumerate(rows):
        by_shard[r.shard].append(pos)
    out: np.ndarray | None = None
    for shard, positions in by_shard.items():
        file = shards / f"{shard}{suffix}"
        try:
            data = np.load(file, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as e:
            raise PipelineError(f"shard {file} cannot be read: {e}") from None
        if out is None:
            out = np.empty((len(rows),) + data.shape[1:], dtype=np.float32)
        index = np.fromiter((rows[p].shard_index for p in positions), dtype=np.int64, count=len(positions))
        if index.size and index.max() >= data.shape[0]:
            raise PipelineError(f"shard {file} is shorter than the manifest says")
        out[positions] = data[index]
    return out


def _check_sidecars(rows: list[DoneRow], shards: Path) -> list[DoneRow]:
    """Check each row against its shard's sidecar; return the rows with the sidecar's frame
    times filled in (None for shards written before times were recorded)."""
    by_shard: dict[str, list[int]] = defaultdict(list)
    for pos, r in enumerate(rows):
        by_shard[r.shard].append(pos)
    out = list(rows)
    for shard, positions in by_shard.items():
        try:
            side = json.loads((shards / f"{shard}.json").read_text())["videos"]
        except (OSError, ValueError, KeyError) as e:
            raise PipelineError(f"shard {shard}: sidecar unreadable: {e}") from None
        for pos in positions:
            r = rows[pos]
            if r.shard_index >= len(side) or side[r.shard_index]["id"] != r.id:
                raise PipelineError(f"shard {shard} does not hold video {r.id} at {r.shard_index}")
            out[pos] = replace(r, times=side[r.shard_index].get("times"))
    return out


def load_features(
    output_dir: str | os.PathLike[str] = "features", db: str | None = None, frames: bool = False
) -> Features:
    manifest = open_manifest(output_dir, db)
    try:
        rows = manifest.done_rows()
        dim = int(manifest.settings().get("dim", 0) or 0)
    finally:
        manifest.close()
    shards = Path(output_dir) / "shards"
    rows = _check_sidecars(rows, shards)
    feats = _gather(rows, shards, ".npy")
    if feats is None:
        feats = np.zeros((0, dim), dtype=np.float32)
    per_frame = _gather(rows, shards, ".frames.npy") if frames and rows else None
    return Features(feats, [r.path for r in rows], [r.id for r in rows], per_frame, [r.num_frames for r in rows],
                    [r.times for r in rows])
