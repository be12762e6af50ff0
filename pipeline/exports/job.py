"""The `export` command's work: a job's committed features, in manifest order, through one format."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.exports import FORMATS
from pipeline.exports.base import RowFacts
from pipeline.manifest import open_manifest
from pipeline.reader import Features, load_features
from pipeline.samplers import sample_indices

log = logging.getLogger(__name__)

CHUNK_ROWS = 65536  # rows per write: a streaming format writes a row group each


def frame_indices(settings: dict[str, str], stream_frames: int | None) -> list[int] | None:
    """The display indices a row's feature was made from, where the job's definition fixes
    them from the stream's frame count alone: exact sampling's round(linspace(0, n-1, k)),
    on the count the decoder recorded. Keyframe sampling's choice depends on the packet
    index, which is not stored, so it is None there (as it is without a count)."""
    if settings.get("sampling", "exact") != "exact" or not stream_frames:
        return None
    return sample_indices(int(stream_frames), int(settings.get("num_frames", 0) or 0) or 1)


def export(output_dir: str | os.PathLike[str], db: str | None, fmt: str) -> tuple[list[Path], Features]:
    kind = FORMATS.load(fmt)
    manifest = open_manifest(output_dir, db)
    try:
        settings = manifest.settings()
    finally:
        manifest.close()
    frames = kind.keeps_facts and settings.get("save_frames") == "true"
    feats = load_features(output_dir, db, frames=frames)
    out = Path(output_dir)
    writer = None
    try:
        writer = kind(out, len(feats.paths), feats.features.shape[1], settings)
        for start in range(0, len(feats.paths), CHUNK_ROWS):
            end = start + CHUNK_ROWS
            facts = None
            if kind.keeps_facts:
                counts = (feats.stream_frames or [None] * len(feats.paths))[start:end]
                facts = RowFacts(counts, [frame_indices(settings, n) for n in counts],
                                 feats.frames[start:end] if feats.frames is not None else None,
                                 (feats.times or [None] * len(feats.paths))[start:end])
            writer.write(feats.paths[start:end], feats.features[start:end], facts)
        written = writer.close()
    except OSError as e:
        if writer is not None:
            writer.abort()
        raise PipelineError(f"cannot write export to {out}: {e.strerror or e}") from None
    log.info("exported %d features (%s) to %s", len(feats.paths), fmt, out)
    return written, feats
