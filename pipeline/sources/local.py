"""A folder on a local (or mounted) file system, searched recursively, symlinks followed."""

from __future__ import annotations

import os
from stat import S_ISREG
from collections.abc import Iterator
from pathlib import Path

from pipeline.sources.base import Entry, Source


def walk_videos(root: Path, extensions: tuple[str, ...], errors: list[str]) -> Iterator[tuple[str, int, int]]:
    """Yield (absolute path, size, mtime_ns) of matching files, following symlinks.

    Directories are remembered by (device, inode), so a symlink loop is entered once.
    """
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    seen_dirs: set[tuple[int, int]] = set()
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            st = folder.stat()
            key = (st.st_dev, st.st_ino)
            if key in seen_dirs:
                continue
            seen_dirs.add(key)
            entries = list(os.scandir(folder))
        except OSError as e:
            errors.append(f"{folder}: {e.strerror or e}")
            continue
        for entry in sorted(entries, key=lambda e: e.name, reverse=True):
            try:
                if entry.is_dir(follow_symlinks=True):
                    stack.append(Path(entry.path))
                    continue
                # The text after the last dot: splitext() would see no extension in "..mp4".
                if "." not in entry.name or "." + entry.name.rsplit(".", 1)[1].lower() not in exts:
                    continue
                if not entry.is_file(follow_symlinks=True):
                    if entry.is_symlink() and not os.path.exists(entry.path):
                        errors.append(f"{entry.path}: dangling symlink")
                    continue
                st = entry.stat(follow_symlinks=True)
            except OSError as e:  # dangling symlink, permission denied
                errors.append(f"{entry.path}: {e.strerror or e}")
                continue
            yield entry.path, st.st_size, st.st_mtime_ns


class LocalFolder(Source):
    """Videos are named by absolute path (".." collapsed, symlinks kept as named)."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.root = Path(os.path.abspath(Path(location).expanduser()))

    @classmethod
    def accepts(cls, location: str) -> bool:
        return Path(location).expanduser().is_dir()

    def entries(self, extensions: tuple[str, ...], errors: list[str]) -> Iterator[Entry]:
        for path, size, mtime in walk_videos(self.root, extensions, errors):
            yield Entry(path, size, mtime)

    def contains(self, name: str) -> bool:
        return name.startswith(str(self.root).rstrip(os.sep) + os.sep)

    @classmethod
    def owns(cls, name: str) -> bool:
        return name.startswith(os.sep)

    @classmethod
    def open(cls, name: str) -> str:
        return name  # PyAV opens the path itself: its errors name the file

    @classmethod
    def stat(cls, name: str) -> Entry:
        st = os.stat(name)  # follows symlinks, as the folder walk does
        if not S_ISREG(st.st_mode):
            raise OSError("not a file")
        return Entry(name, st.st_size, st.st_mtime_ns)
