"""The `export` command's work: a job's committed features, in manifest order, through one format."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.exports import FORMATS
from pipeline.reader import Features, load_features

log = logging.getLogger(__name__)


def export(output_dir: str | os.PathLike[str], db: str | None, fmt: str) -> tuple[list[Path], Features]:
    kind = FORMATS.load(fmt)
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
