"""pkl: features.pkl, a dict with `features` (float32 [N, D]) and `video_paths`, every path
exactly. Pickle runs code on load: only load pickle files from sources you trust."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from pipeline.exports.base import Exporter
from pipeline.exports.rows import Rows
from pipeline.writer import atomic_write


class PklExport(Exporter):
    name = "pkl"
    help = "features.pkl (pickle: load only from trusted sources)"

    def __init__(self, out: Path, count: int, dim: int) -> None:
        super().__init__(out, count, dim)
        self.rows = Rows(count, dim)

    def write(self, paths: list[str], features: np.ndarray) -> None:
        self.rows.add(paths, features)

    def close(self) -> list[Path]:
        self.rows.check_full()
        blob = pickle.dumps({"features": self.rows.features, "video_paths": self.rows.paths}, protocol=4)
        atomic_write(self.out / "features.pkl", blob)
        return [self.out / "features.pkl"]

    @classmethod
    def read(cls, out: Path) -> tuple[np.ndarray, list[str]]:
        with open(out / "features.pkl", "rb") as f:
            data = pickle.load(f)  # the tool's own export: trusted by whoever calls read()
        return data["features"], data["video_paths"]
