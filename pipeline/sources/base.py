"""The interface every source implements; the registry is in pipeline/sources/__init__.py."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO



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

    @classmethod
    def stat(cls, name: str) -> Entry:
        """One named video's size and change stamp (for lists of paths or URLs); raises OSError with the reason."""
        raise OSError(f"{cls.__name__} cannot stat {name}")
