"""Rows gathered in order for formats that write whole files at the end."""

from __future__ import annotations

import numpy as np


class Rows:
    """A preallocated [count, dim] float32 array filled by successive writes."""

    def __init__(self, count: int, dim: int) -> None:
        self.features = np.empty((count, dim), dtype=np.float32)
        self.paths: list[str] = []

    def add(self, paths: list[str], features: np.ndarray) -> None:
        start = len(self.paths)
        if start + len(paths) > len(self.features):
            raise ValueError(f"more rows written than the {len(self.features)} announced")
        self.features[start : start + len(paths)] = features
        self.paths += paths

    def check_full(self) -> None:
        if len(self.paths) != len(self.features):
            raise ValueError(f"{len(self.paths)} rows written of the {len(self.features)} announced")
