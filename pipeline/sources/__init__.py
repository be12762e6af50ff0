"""Sources: where a job's videos come from, how they are listed and how one is opened.

`scan --video-dir LOCATION` asks each registered source whether it takes LOCATION; that
source lists the videos (name, size, mtime) for the scanner's diff, says which manifest
rows are its own (only those can vanish when it is rescanned), and opens one video for
the decoder by its name. Names are what the manifest, status and the exports show.
Adding a kind of source (an archive, a bucket) is one module here and one entry in
SOURCES (docs/design/extending.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import IO

from pipeline.errors import PipelineError
from pipeline.registry import Registry
from pipeline.sources.base import Entry, Source

__all__ = ["SOURCES", "Entry", "Source", "open_video", "source_for", "stat_video"]


SOURCES = Registry("source", {
    "archive": "pipeline.sources.archive:ArchiveSource",  # before local: it takes folders that hold archives
    "list": "pipeline.sources.lists:VideoList",
    "local": "pipeline.sources.local:LocalFolder",
    "remote": "pipeline.sources.remote:RemoteStore",
})  # tried in this order: the first kind that accepts a location takes it


def source_for(location: str) -> Source:
    for kind in SOURCES.classes().values():
        if kind.accepts(location):
            return kind(location)
    if Path(location).is_file():  # one video: no source takes a lone file (a list is .txt/.csv/...)
        raise PipelineError(f"--video-dir {location} is a file, not a directory: give its folder, "
                            f"or list it in a --video-list file")
    raise PipelineError(f"video directory not found: {location}")


def open_video(name: str) -> str | IO[bytes]:
    """A registered video by its manifest name, for decoding."""
    for kind in SOURCES.classes().values():
        if kind.owns(name):
            return kind.open(name)
    raise PipelineError(f"no source can open {name!r}")


def stat_video(name: str) -> Entry:
    """A registered video's size and change stamp by its name (a row of a video list), from
    the kind that owns the name; OSError with the reason when it cannot be had."""
    for kind in SOURCES.classes().values():
        if kind.owns(name):
            return kind.stat(name)
    raise OSError("no source can read this name")
