"""The interface every export implements; the registry is in pipeline/exports/__init__.py."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar

import numpy as np


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
