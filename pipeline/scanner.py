"""Stage 1: find every video file under a folder and register it in the manifest.

A rescan is a diff against the manifest, applied in one transaction: new files are
added, files whose size or mtime changed go back to pending (their old feature is
stale), vanished files are marked missing, and a file that comes back unchanged gets
its old feature back.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.manifest import Manifest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanResult:
    found: int
    new: int
    changed: int
    vanished: int
    restored: int
    unreadable: int


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


def scan(manifest: Manifest, video_dir: str, extensions: tuple[str, ...]) -> ScanResult:
    root = Path(video_dir).expanduser()
    if not root.is_dir():
        raise PipelineError(f"video directory not found: {video_dir}")
    root = Path(os.path.abspath(root))  # absolute, ".." collapsed, symlinks kept as named
    errors: list[str] = []
    found = {p: (s, m) for p, s, m in walk_videos(root, extensions, errors)}
    for e in errors:
        log.warning("scan: cannot read %s", e)

    known = manifest.known_files()
    new, changed, vanished, restored = [], [], [], []
    for path, (size, mtime) in found.items():
        row = known.get(path)
        if row is None:
            new.append((path, size, mtime))
            continue
        vid, old_size, old_mtime, status, shard = row
        same = (old_size, old_mtime) == (size, mtime)
        if not same:
            changed.append((vid, size, mtime))
        elif status == "missing":
            restored.append((vid, "done" if shard else "pending"))
    # Only rows under this root can vanish: a job may be fed from several folders.
    prefix = str(root).rstrip(os.sep) + os.sep
    for path, (vid, _s, _m, status, _shard) in known.items():
        if status != "missing" and path.startswith(prefix) and path not in found:
            vanished.append(vid)

    manifest.apply_scan(sorted(new), changed, vanished, restored)
    result = ScanResult(len(found), len(new), len(changed), len(vanished), len(restored), len(errors))
    log.info("scan %s: %s", root, result)
    return result
