"""Stage 1: list every video of a source (pipeline/sources/) and register it in the manifest.

A rescan is a diff against the manifest, applied in one transaction: new files are
added, files whose size or mtime changed go back to pending (their old feature is
stale), vanished files are marked missing, and a file that comes back unchanged gets
its old feature back.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pipeline.manifest import Manifest
from pipeline.sources import source_for

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScanResult:
    found: int
    new: int
    changed: int
    vanished: int
    restored: int
    unreadable: int


def scan(manifest: Manifest, video_dir: str, extensions: tuple[str, ...]) -> ScanResult:
    source = source_for(video_dir)
    errors: list[str] = []
    found = {e.name: (e.size, e.mtime_ns) for e in source.entries(extensions, errors)}
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
    # Only this source's rows can vanish: a job may be fed from several folders.
    for path, (vid, _s, _m, status, _shard) in known.items():
        if status != "missing" and source.contains(path) and path not in found:
            vanished.append(vid)

    manifest.apply_scan(sorted(new), changed, vanished, restored)
    result = ScanResult(len(found), len(new), len(changed), len(vanished), len(restored), len(errors))
    log.info("scan %s: %s", video_dir, result)
    return result
