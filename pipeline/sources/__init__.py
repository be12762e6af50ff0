"""Sources: where a job's videos come from, how they are listed and how one is opened.

`scan --video-dir LOCATION` asks each registered source whether it takes LOCATION; that
source lists the videos (name, size, mtime) for the scanner's diff, says which manifest
rows are its own (only those can vanish when it is rescanned), and opens one video for
the decoder by its name. Names are what the manifest, status and the exports show.
Adding a kind of source (an archive, a bucket) is one module here and one entry in
SOURCES (docs/design/extending.md).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

from pipeline.errors import PipelineError


@dataclass(frozen=True)
class Entry:
    name: str  # how the job names the video, for ever
    size: int
    mtime_ns: int


class Source(ABC):
    """One location given to `scan`."""

    def __init__(self, location: str) -> None:
        self.location = location

    @classmethod
    @abstractmethod
    def accepts(cls, location: str) -> bool:
        """Is `location` one of this kind's?"""

    @abstractmethod
    def entries(self, extensions: tuple[str, ...], errors: list[str]) -> Iterator[Entry]:
        """Every video under the location; what cannot be read goes to `errors`, not raised."""

    @abstractmethod
    def contains(self, name: str) -> bool:
        """Is a manifest row named `name` this location's (so it vanished if not listed)?"""

    @classmethod
    @abstractmethod
    def owns(cls, name: str) -> bool:
        """Is `name` a video name this kind of source gives out (for opening it)?"""

    @classmethod
    @abstractmethod
    def open(cls, name: str) -> str | IO[bytes]:
        """What the decoder opens: a local path, or a seekable file object."""


def _sources() -> list[type[Source]]:
    from pipeline.sources.local import LocalFolder

    return [LocalFolder]


def source_for(location: str) -> Source:
    for kind in _sources():
        if kind.accepts(location):
            return kind(location)
    raise PipelineError(f"video directory not found: {location}")


def open_video(name: str) -> str | IO[bytes]:
    """A registered video by its manifest name, for decoding."""
    for kind in _sources():
        if kind.owns(name):
            return kind.open(name)
    raise PipelineError(f"no source can open {name!r}")
