"""pkl: features.pkl, a dict with `features` (float32 [N, D]) and `video_paths`, every path
exactly. Pickle runs code on load: only load pickle files from sources you trust."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from pipeline.exports.rows import GatheredExport
from pipeline.writer import atomic_write


class PklExport(GatheredExport):
    name = "pkl"
    help = "features.pkl (pickle: load only from trusted sources)"

    def close(self) -> list[Path]:
        self.check_full()
        blob = pickle.dumps({"features": self.features, "video_paths": self.paths}, protocol=4)
        atomic_write(self.out / "features.pkl", blob)
        return [self.out / "features.pkl"]

    @classmethod
    def read(cls, out: Path) -> tuple[np.ndarray, list[str]]:
        with open(out / "features.pkl", "rb") as f:
            data = pickle.load(f)  # the tool's own export: trusted by whoever calls read()
        return data["features"], data["video_paths"]
