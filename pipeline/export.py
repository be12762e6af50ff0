"""The `export` command: the original guide's files, from the committed shards.

npy: features.npy (float32 [N, D]) and video_paths.txt, line i naming row i.
pkl: features.pkl, a dict with `features` and `video_paths`. Pickle runs code on
load: only load pickle files from sources you trust.

A path holding a newline cannot be one line of video_paths.txt; such a path is
written with backslash escapes (\\n, \\r, and \\\\ for its backslashes) so the two
files still line up; features.pkl keeps every path exactly.
"""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.reader import Features, load_features
from pipeline.writer import atomic_write, npy_bytes

log = logging.getLogger(__name__)

FORMATS = ("npy", "pkl")


def path_line(path: str) -> str:
    if "\n" not in path and "\r" not in path:
        return path
    return path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def export(output_dir: str | os.PathLike[str], db: str | None, fmt: str) -> tuple[list[Path], Features]:
    if fmt not in FORMATS:
        raise PipelineError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    feats = load_features(output_dir, db)
    out = Path(output_dir)
    try:
        if fmt == "npy":
            lines = [path_line(p) for p in feats.paths]
            escaped = sum(1 for a, b in zip(lines, feats.paths) if a != b)
            if escaped:
                log.warning("%d paths contain line breaks: written escaped in video_paths.txt", escaped)
            atomic_write(out / "features.npy", npy_bytes(feats.features))
            atomic_write(out / "video_paths.txt", "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape"))
            written = [out / "features.npy", out / "video_paths.txt"]
        else:
            blob = pickle.dumps({"features": feats.features, "video_paths": feats.paths}, protocol=4)
            atomic_write(out / "features.pkl", blob)
            written = [out / "features.pkl"]
    except OSError as e:
        raise PipelineError(f"cannot write export to {out}: {e.strerror or e}") from None
    log.info("exported %d features (%s) to %s", len(feats.paths), fmt, out)
    return written, feats
