"""The `export` command: the job's committed features written in one of the formats below.

Every format is a class registered in FORMATS, with one constructor, `write` and `close`
(as img2dataset's writers), and a `read` that gives back what was written, so one
contract test holds every format to the same round trip (tests/test_exports.py). A new
format is one module here and one line in FORMATS (docs/design/extending.md).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.exports.base import Exporter
from pipeline.reader import Features, load_features

__all__ = ["Exporter", "export", "exporter", "formats"]

log = logging.getLogger(__name__)


def formats() -> dict[str, type[Exporter]]:
    """The registry: every export format by name."""
    from pipeline.exports.npy import NpyExport
    from pipeline.exports.pkl import PklExport

    return {f.name: f for f in (NpyExport, PklExport)}


def exporter(fmt: str) -> type[Exporter]:
    known = formats()
    if fmt not in known:
        raise PipelineError(f"--format must be one of {', '.join(known)}, got {fmt!r}")
    return known[fmt]


def export(output_dir: str | os.PathLike[str], db: str | None, fmt: str) -> tuple[list[Path], Features]:
    kind = exporter(fmt)
    feats = load_features(output_dir, db)
    out = Path(output_dir)
    try:
        writer = kind(out, len(feats.paths), feats.features.shape[1])
        writer.write(feats.paths, feats.features)
        written = writer.close()
    except OSError as e:
        raise PipelineError(f"cannot write export to {out}: {e.strerror or e}") from None
    log.info("exported %d features (%s) to %s", len(feats.paths), fmt, out)
    return written, feats
