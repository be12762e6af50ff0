"""The `dedup` command: groups of near-duplicate videos among a job's done rows.

Two videos are a pair when the cosine of their features is at least the threshold;
groups are the connected components of the pairs (a re-encode of a re-upload joins
the original's group even when the two ends are further apart). Pairs come from
faiss's exact range search, a block of queries at a time so the result stays bounded.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.reader import load_features
from pipeline.writer import atomic_write

BLOCK = 4096  # query rows per range search


@dataclass
class Group:
    videos: list[str]
    pairs: list[tuple[str, str, float]]  # (a, b, cosine), a before b in the job's order


def pairs_at_least(features: np.ndarray, threshold: float, block: int = BLOCK) -> list[tuple[int, int, float]]:
    """Every (i, j, cosine) with i < j and cosine >= threshold (exact)."""
    import faiss

    x = np.ascontiguousarray(features, dtype=np.float32)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    out: list[tuple[int, int, float]] = []
    for start in range(0, len(x), block):
        lims, sims, found = index.range_search(x[start : start + block], float(threshold))
        for q in range(len(lims) - 1):
            i = start + q
            for s, j in zip(sims[lims[q] : lims[q + 1]], found[lims[q] : lims[q + 1]]):
                if j > i:
                    out.append((i, int(j), float(s)))
    return sorted(out)


def components(n: int, pairs: list[tuple[int, int, float]]) -> list[list[int]]:
    """Connected components (of more than one row) of the pair graph, by union-find."""
    parent = list(range(n))

    def root(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j, _ in pairs:
        ri, rj = root(i), root(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in sorted({k for p in pairs for k in p[:2]}):
        groups.setdefault(root(i), []).append(i)
    return sorted(groups.values())


def find_groups(output_dir: str | os.PathLike[str], db: str | None, threshold: float) -> tuple[list[Group], int]:
    """The near-duplicate groups among the done rows, and how many rows were compared."""
    if not -1.0 <= threshold <= 1.0:
        raise PipelineError(f"threshold is a cosine: between -1 and 1, got {threshold}")
    feats = load_features(output_dir, db)
    if not feats.paths:
        raise PipelineError("no video is done yet: nothing to compare (run `run` first)")
    pairs = pairs_at_least(feats.features, threshold)
    group_of = {}
    rows = components(len(feats.paths), pairs)
    for g, members in enumerate(rows):
        for i in members:
            group_of[i] = g
    groups = [Group([feats.paths[i] for i in members], []) for members in rows]
    for i, j, s in pairs:
        groups[group_of[i]].pairs.append((feats.paths[i], feats.paths[j], s))
    return groups, len(feats.paths)


def as_json(groups: list[Group], threshold: float, compared: int) -> dict:
    return {
        "threshold": threshold,
        "videos_compared": compared,
        "pairs": sum(len(g.pairs) for g in groups),
        "groups": [
            {"group": n, "videos": g.videos,
             "pairs": [{"a": a, "b": b, "similarity": round(s, 6)} for a, b, s in g.pairs]}
            for n, g in enumerate(groups)
        ],
    }


def out_format(out: str | os.PathLike[str]) -> str:
    """"csv" or "json" by --out's suffix, and its folder must exist: checked before any work."""
    path = Path(out)
    kind = path.suffix.lower().lstrip(".")
    if kind not in ("csv", "json"):
        raise PipelineError(f"--out must end in .csv or .json, got {path.name!r}")
    if not path.parent.is_dir():
        raise PipelineError(f"--out: no such folder {path.parent}")
    return kind


def write(groups: list[Group], threshold: float, compared: int, out: str | os.PathLike[str]) -> Path:
    """CSV (group, a, b, similarity: one line per pair) or JSON, by the file's suffix; atomic."""
    path = Path(out)
    if out_format(path) == "json":
        data = json.dumps(as_json(groups, threshold, compared), indent=1, ensure_ascii=False).encode("utf-8", "surrogateescape")
    else:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["group", "a", "b", "similarity"])
        for n, g in enumerate(groups):
            for a, b, s in g.pairs:
                w.writerow([n, a, b, f"{s:.6f}"])
        data = buf.getvalue().encode("utf-8", "surrogateescape")
    try:
        atomic_write(path, data)
    except OSError as e:
        raise PipelineError(f"cannot write {path}: {e.strerror or e}") from None
    return path
