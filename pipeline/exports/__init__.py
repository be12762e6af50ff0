"""The `export` command: the job's committed features written in one of the formats below.

Every format is a class registered in FORMATS, with one constructor, `write` and `close`
(as img2dataset's writers), and a `read` that gives back what was written, so one
contract test holds every format to the same round trip (tests/test_exports.py). A new
format is one module here and one line in FORMATS (docs/design/extending.md).
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np

from pipeline.errors import PipelineError
from pipeline.reader import Features, load_features

log = logging.getLogger(__name__)


class Exporter(ABC):
    """Writes one job's features, rows in the manifest's order, into `out`."""

    name: ClassVar[str]
    help: ClassVar[str]

    def __init__(self, out: Path, count: int, dim: int) -> None:
        self.out = out
        self.count = count
        self.dim = dim

    @abstractmethod
    def write(self, paths: list[str], features: np.ndarray) -> None:
        """Append rows (the next len(paths) of `count`)."""

    @abstractmethod
    def close(self) -> list[Path]:
        """Finish the files (atomically: readers see the old export or the new one); return them."""

    @classmethod
    @abstractmethod
    def read(cls, out: Path) -> tuple[np.ndarray, list[str]]:
        """The features and paths an export in `out` holds."""


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
