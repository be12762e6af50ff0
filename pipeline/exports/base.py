"""The interface every export implements; the registry is in pipeline/exports/__init__.py."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np


log = logging.getLogger(__name__)


@dataclass
class RowFacts:
    """What a job knows of each row beyond its path and feature, for formats that keep it
    (parquet); npy and pkl ignore it. Each field holds one entry per row written, or None."""

    stream_frames: list[int | None] | None = None  # frames counted in the stream (the manifest's num_frames)
    frame_indices: list[list[int] | None] | None = None  # display indices of the sampled frames, where known
    frames: np.ndarray | None = None  # [n, num_frames, dim] per-frame features (save_frames jobs)
    frame_times: list[list[float | None] | None] | None = None  # the sampled frames' pts in seconds, where recorded


class Exporter(ABC):
    """Writes one job's features, rows in the manifest's order, into `out`."""

    name: ClassVar[str]
    help: ClassVar[str]
    keeps_facts: ClassVar[bool] = False  # True: the job passes RowFacts (and per-frame features) to write

    def __init__(self, out: Path, count: int, dim: int, job: dict[str, str] | None = None) -> None:
        self.out = out
        self.count = count
        self.dim = dim
        self.job = dict(job or {})  # the job's settings as the manifest records them (model, pretrained, ...)

    @abstractmethod
    def write(self, paths: list[str], features: np.ndarray, facts: RowFacts | None = None) -> None:
        """Append rows (the next len(paths) of `count`)."""

    def abort(self) -> None:
        """Drop what a failed export left half-written (formats that stream to a temporary file)."""

    @abstractmethod
    def close(self) -> list[Path]:
        """Finish the files (atomically: readers see the old export or the new one); return them."""

    @classmethod
    @abstractmethod
    def read(cls, out: Path) -> tuple[np.ndarray, list[str]]:
        """The features and paths an export in `out` holds."""
