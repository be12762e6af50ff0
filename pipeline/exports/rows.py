"""Formats that write whole files at the end: rows gathered in order, in one array."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.exports.base import Exporter, RowFacts


class GatheredExport(Exporter):
    """Fills a preallocated [count, dim] float32 array by successive writes; `close` writes it."""

    def __init__(self, out: Path, count: int, dim: int, job: dict[str, str] | None = None) -> None:
        super().__init__(out, count, dim, job)
        self.features = np.empty((count, dim), dtype=np.float32)
        self.paths: list[str] = []

    def write(self, paths: list[str], features: np.ndarray, facts: RowFacts | None = None) -> None:
        start = len(self.paths)
        if start + len(paths) > len(self.features):
            raise ValueError(f"more rows written than the {len(self.features)} announced")
        self.features[start : start + len(paths)] = features
        self.paths += paths

    def check_full(self) -> None:
        """Called first by close: a short export is refused before any file is written."""
        if len(self.paths) != len(self.features):
            raise ValueError(f"{len(self.paths)} rows written of the {len(self.features)} announced")
