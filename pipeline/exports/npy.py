"""npy: features.npy (float32 [N, D]) and video_paths.txt, line i naming row i, as the
original guide loads them (`np.load`, one path a line).

A path holding a line break cannot be one line of video_paths.txt: such a path is written
with backslash escapes (\\n, \\r, and \\\\ for its backslashes), so the two files still
line up. So that a line can always be read back, a path holding the two characters of
an escape (a backslash then n or r) is escaped too; every other path is written as it is.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from pipeline.exports.rows import GatheredExport
from pipeline.writer import atomic_write, npy_bytes

log = logging.getLogger(__name__)

_NEEDS_ESCAPE = re.compile(r"[\n\r]|\\[nr]")
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_UNESCAPED = {"\\": "\\", "n": "\n", "r": "\r"}


def path_line(path: str) -> str:
    if not _NEEDS_ESCAPE.search(path):
        return path
    return path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")


def line_path(line: str) -> str:
    """The inverse of path_line."""
    if not _NEEDS_ESCAPE.search(line):
        return line
    return _ESCAPE.sub(lambda m: _UNESCAPED.get(m.group(1), m.group(0)), line)


class NpyExport(GatheredExport):
    name = "npy"
    help = "features.npy + video_paths.txt"

    def close(self) -> list[Path]:
        self.check_full()
        lines = [path_line(p) for p in self.paths]
        escaped = sum(1 for a, b in zip(lines, self.paths) if a != b)
        if escaped:
            log.warning("%d paths contain line breaks or escapes: written escaped in video_paths.txt", escaped)
        atomic_write(self.out / "features.npy", npy_bytes(self.features))
        atomic_write(self.out / "video_paths.txt", "".join(f"{line}\n" for line in lines).encode("utf-8", "surrogateescape"))
        return [self.out / "features.npy", self.out / "video_paths.txt"]

    @classmethod
    def read(cls, out: Path) -> tuple[np.ndarray, list[str]]:
        text = (out / "video_paths.txt").read_bytes().decode("utf-8", "surrogateescape")
        return np.load(out / "features.npy"), [line_path(line) for line in text.split("\n")[:-1]]
