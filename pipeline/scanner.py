"""Stage 1: list every video of a source (pipeline/sources/) and register it in the manifest.

A rescan is a diff against the manifest, applied in one transaction: new files are
added, files whose size or mtime changed go back to pending (their old feature is
stale), vanished files are marked missing, and a file that comes back unchanged gets
its old feature back.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.manifest import Manifest
from pipeline.sources import Source, source_for
from pipeline.sources.lists import VideoList

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
    """One location, as `scan --video-dir DIR` has always done."""
    return scan_all(manifest, [source_for(video_dir)], extensions)[0]


def unstorable(name: str) -> str | None:
    """Why a listed name cannot be a manifest row, or None. A file name that is not valid
    UTF-8 (Python hands it over with surrogate escapes) is text neither SQLite nor
    PostgreSQL will store: it is one of the scan's unreadable entries, named by its bytes,
    instead of a traceback that registers nothing of the whole scan."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raw = name.encode("utf-8", "surrogateescape")
        return f"{raw!r}: the file name is not valid UTF-8, which the manifest cannot hold; rename it (e.g. convmv)"
    return None


def scan_all(
    manifest: Manifest, sources: Sequence[Source], extensions: tuple[str, ...], job_dir: str | None = None
) -> list[ScanResult]:
    """Several locations diffed against the manifest and applied in one transaction.

    Each location reports its own counts (a video two locations list is new once, for the
    first). A row vanishes when a location it belongs to no longer lists it and no other
    location of this scan does; rows no scanned location contains are left alone. A
    video list remembers its rows in `job_dir` (pipeline/sources/lists.py): before the
    scan is applied with what it listed then and now, after it with what it lists now, so
    a scan killed in between forgets nothing.
    """
    lists = [s for s in sources if isinstance(s, VideoList)]
    if job_dir is not None:
        for s in lists:
            s.recall(job_dir)
    known = manifest.known_files()
    listed: list[dict[str, tuple[int, int]]] = []
    unreadable: list[int] = []
    for source in sources:
        errors: list[str] = []
        found: dict[str, tuple[int, int]] = {}
        for e in source.entries(extensions, errors):
            if (why := unstorable(e.name)) is not None:
                errors.append(why)
            else:
                found[e.name] = (e.size, e.mtime_ns)
        listed.append(found)
        for e in errors:
            log.warning("scan: cannot read %s", e)
        unreadable.append(len(errors))
    found_anywhere = {name for names in listed for name in names}

    new: dict[str, tuple[str, int, int]] = {}
    changed, vanished, restored = [], [], []
    done_ids: set[int] = set()
    results = []
    for source, found, n_errors in zip(sources, listed, unreadable):
        n_new = n_changed = n_vanished = n_restored = 0
        for path, (size, mtime) in found.items():
            row = known.get(path)
            if row is None:
                if path not in new:
                    new[path] = (path, size, mtime)
                    n_new += 1
                continue
            vid, old_size, old_mtime, status, shard = row
            if vid in done_ids:
                continue
            done_ids.add(vid)
            if (old_size, old_mtime) != (size, mtime):
                changed.append((vid, size, mtime))
                n_changed += 1
            elif status == "missing":
                restored.append((vid, "done" if shard else "pending"))
                n_restored += 1
        # Only this location's rows can vanish: a job may be fed from several.
        for path, (vid, _s, _m, status, _shard) in known.items():
            if (status != "missing" and vid not in done_ids and path not in found_anywhere
                    and source.contains(path)):
                done_ids.add(vid)
                vanished.append(vid)
                n_vanished += 1
        results.append(ScanResult(len(found), n_new, n_changed, n_vanished, n_restored, n_errors))

    if job_dir is not None:
        for s in lists:
            s.remember(job_dir, sorted(s.previous | set(s.listed)))
    manifest.apply_scan(sorted(new.values()), changed, vanished, restored)
    if job_dir is not None:
        for s in lists:
            s.remember(job_dir, s.listed)
    for source, result in zip(sources, results):
        log.info("scan %s: %s", source.location, result)
    return results
