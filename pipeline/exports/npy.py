"""npy: features.npy (float32 [N, D]) and video_paths.txt, line i naming row i, as the
original guide loads them (`np.load`, one path a line).

A path holding a line break cannot be one line of video_paths.txt: such a path is written
with backslash escapes, so the two files still line up however they are split. A line
break is any character `str.splitlines()` splits at (what the guide's loader uses), not
only \\n and \\r: \\n and \\r are written so, the others as \\xHH or \\uHHHH, and
backslashes as \\\\. So that a line can always be read back, a path holding the
text of an escape (`\\n`, `\\u2028`, ...) is escaped too; every other path is written as
it is. The older writer escaped only \\n, \\r and backslashes; its files read back the same,
but for a path holding, unescaped, the text of the escape of another break (`\\x85`, say),
which no writer can tell apart.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np

from pipeline.exports.rows import GatheredExport
from pipeline.writer import atomic_write, npy_bytes

log = logging.getLogger(__name__)

# Every character str.splitlines() breaks a line at.
BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
_BREAK_ESCAPE = r"x(?:0b|0c|1c|1d|1e|85)|u(?:2028|2029)"  # how path_line writes the breaks other than \n, \r
_ESCAPE = re.compile(rf"\\(?:[\\nr]|{_BREAK_ESCAPE})")  # every escape path_line writes
_NEEDS_ESCAPE = re.compile(rf"[{BREAKS}]|\\(?:[nr]|{_BREAK_ESCAPE})")  # a break, or the text of an escape
_TO_ESCAPE = re.compile(f"[\\\\{BREAKS}]")
_UNESCAPED = {"\\": "\\", "n": "\n", "r": "\r"}


def _escaped(c: str) -> str:
    if c in "\\\n\r":
        return {"\\": "\\\\", "\n": "\\n", "\r": "\\r"}[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def path_line(path: str) -> str:
    """`path` as one line of video_paths.txt: as it is unless it holds a line break or the
    text of an escape."""
    if not _NEEDS_ESCAPE.search(path):
        return path
    return _TO_ESCAPE.sub(lambda m: _escaped(m.group()), path)


def _unescaped(escape: str) -> str:
    e = escape[1:]
    return chr(int(e[1:], 16)) if len(e) > 1 else _UNESCAPED[e]  # xHH or uHHHH, else \\, n, r


def line_path(line: str) -> str:
    """The inverse of path_line, and of the older writer's escaping: a line holding \\n or \\r
    was always escaped (the older writer's rule), one holding the escape of another break
    is escaped when every backslash in it starts an escape."""
    if not re.search(r"\\[nr]", line) and not (
            re.search(rf"\\(?:{_BREAK_ESCAPE})", line) and "\\" not in _ESCAPE.sub("", line)):
        return line
    return _ESCAPE.sub(lambda m: _unescaped(m.group()), line)


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
