"""Videos inside zip and tar archives, read where they lie: no archive is ever unpacked.

A location is an archive (`.zip`, `.tar`, `.tar.gz`/`.tgz`) or a folder that holds one
anywhere under it (DFDC's `dfdc_train_part_N.zip` parts); in a folder, loose videos are
registered too, named as LocalFolder names them, so nothing in the folder is left out.
A member video is named `ARCHIVE::MEMBER`: the archive's absolute path, `::`, the
member's path inside it (docs/design/sources.md says why this form). Members that are
not videos by extension (DFDC's `metadata.json`) are skipped, not failed.

Opening a member gives the decoder a seekable file object over its bytes: a stored zip
member or a plain tar member is a window on the archive file itself (its byte range,
read in place, seeks are free); a deflated zip member is zipfile's own stream (seeking
back decompresses again from its start); a member of a compressed tar is a window on
the decompressed stream (the same). Nothing is read whole into memory.

An archive may also be a URL (`s3://bucket/part_0.zip`, `https://host/part_0.zip`, given
alone or found under a bucket prefix by RemoteStore's listing): it is read through RemoteStore's seekable, block-cached
file (or its --cache-dir copy), so a stored member is a window on the remote object's
ranges and its name is `URL::MEMBER`.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import tarfile
import zipfile
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from pipeline.errors import PipelineError
from pipeline.sources.base import Entry, Source
from pipeline.sources.local import walk_videos

SEPARATOR = "::"
ZIP = (".zip",)
PLAIN_TAR = (".tar",)
GZIP_TAR = (".tar.gz", ".tgz")
SUFFIXES = ZIP + PLAIN_TAR + GZIP_TAR
# walk_videos matches the text after the last dot: ".tar.gz" is "gz", checked again by suffix.
_WALK_EXTENSIONS = ("zip", "tar", "tgz", "gz")


def is_archive(path: str) -> bool:
    return path.lower().endswith(SUFFIXES)


def has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    """The rule LocalFolder applies: the text after the last dot of the file's own name."""
    base = name.rsplit("/", 1)[-1]
    exts = {e.lower().lstrip(".") for e in extensions}
    return "." in base and base.rsplit(".", 1)[1].lower() in exts


def split_name(name: str) -> tuple[str, str] | None:
    """(archive, member) of an `ARCHIVE::MEMBER` name, or None if `name` is not one.

    The archive is the text before the first `::` that ends in an archive suffix, so an
    archive path or a member path may itself hold `::`.
    """
    start = 0
    while (i := name.find(SEPARATOR, start)) >= 0:
        if is_archive(name[:i]) and i + len(SEPARATOR) < len(name):
            return name[:i], name[i + len(SEPARATOR):]
        start = i + 1
    return None


def member_name(archive: str, member: str) -> str:
    return f"{archive}{SEPARATOR}{member}"


def is_remote(archive: str) -> bool:
    from pipeline.sources.remote import SCHEMES, scheme_of

    return scheme_of(archive) in SCHEMES


def _open_archive(archive: str) -> IO[bytes]:
    """The archive file itself: a local file, or the remote object through RemoteStore's
    block cache (its failures are RemoteError, a PipelineError with the reason)."""
    if is_remote(archive):
        from pipeline.sources.remote import RemoteStore

        f = RemoteStore.open(archive)
        return open(f, "rb", buffering=0) if isinstance(f, str) else f  # str: a --cache-dir copy
    return open(archive, "rb", buffering=0)


def _identity(archive: str) -> tuple[str, int, int, int]:
    """What changes when the archive is replaced: inode, size, mtime; a remote one's size and ETag stamp."""
    if is_remote(archive):
        from pipeline.sources.remote import RemoteStore

        e = RemoteStore.stat(archive)  # OSError with the reason
        return (archive, 0, e.size, e.mtime_ns)
    st = os.stat(archive)
    return (archive, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Member:
    """Where one regular member's bytes are, and its stamp for the rescan diff."""

    name: str  # path inside the archive
    size: int  # uncompressed bytes
    stamp: int  # the member's own mtime (ns), with a zip member's CRC-32 in its sub-second part
    start: int  # zip: local header offset; tar: data offset (in the decompressed stream)
    stored: bool  # zip: no compression, read in place; tar: always True
    encrypted: bool = False


def _zip_stamp(info: zipfile.ZipInfo) -> int:
    """DOS time has 2-second resolution, so the CRC fits below the second: a member whose
    bytes change within the same second still reads as changed."""
    import calendar

    try:
        seconds = calendar.timegm((*info.date_time, 0, 0, 0))
    except (OverflowError, ValueError):
        seconds = 0
    return seconds * 1_000_000_000 + info.CRC % 1_000_000_000


def _read_members(archive: str) -> dict[str, Member]:
    """Every regular member of an archive; OSError or an archive error when it cannot be read."""
    lower = archive.lower()
    members: dict[str, Member] = {}
    if lower.endswith(ZIP):
        with _open_archive(archive) as f, zipfile.ZipFile(f) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                members[info.filename] = Member(
                    info.filename, info.file_size, _zip_stamp(info), info.header_offset,
                    info.compress_type == zipfile.ZIP_STORED, bool(info.flag_bits & 0x1),
                )
        return members
    with _open_archive(archive) as f, tarfile.open(fileobj=f, mode="r:gz" if lower.endswith(GZIP_TAR) else "r:") as tf:
        for info in tf:
            if info.isreg():
                members[info.name] = Member(info.name, info.size, int(info.mtime) * 1_000_000_000, info.offset_data, True)
    return members


# Each decode worker opens many members of few archives: their member tables are kept
# (a few archives' worth, keyed by the archive file's identity, so a replaced archive is
# read again) instead of reading a tar's headers or a zip's central directory per video.
_CACHE: OrderedDict[tuple[str, int, int, int], dict[str, Member]] = OrderedDict()
_CACHE_SIZE = 8


def members_of(archive: str) -> dict[str, Member]:
    key = _identity(archive)
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    members = _read_members(archive)
    _CACHE[key] = members
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return members


def _reason(e: BaseException) -> str:
    if isinstance(e, PipelineError):  # a remote archive's failure, already in words
        return str(e)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return f"{type(e).__name__}: {e}"


class Window(io.RawIOBase):
    """A seekable, read-only view of `length` bytes of `base` from `start`.

    `base` is the archive file (a member read in place) or a decompressed stream (zipfile's
    for a deflated member: start 0); the window owns it and closes it. `bytes_read`
    counts what the decoder pulled through. A damaged or truncated member is a
    PipelineError with the reason.
    """

    def __init__(self, base: IO[bytes], start: int, length: int, name: str) -> None:
        super().__init__()
        self._base, self._start, self._length, self.name = base, start, length, name
        self._pos = 0
        self.bytes_read = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        left = self._length - self._pos
        n = left if size is None or size < 0 else min(size, left)
        if n <= 0:
            return b""
        # Raised through PyAV's read callback to the worker, which reports a PipelineError's words.
        try:
            self._base.seek(self._start + self._pos)
            data = self._base.read(n)
        except (zlib.error, zipfile.BadZipFile, gzip.BadGzipFile, EOFError) as e:
            raise PipelineError(f"damaged archive member: {e}") from None
        except OSError as e:
            raise PipelineError(f"cannot read archive: {_reason(e)}") from None
        if len(data) < n:
            raise PipelineError("the archive ends inside the member (truncated?)")
        self._pos += len(data)
        self.bytes_read += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._base.close()
        super().close()


def open_member(archive: str, member: str) -> IO[bytes]:
    """A seekable binary file object over one member's bytes; PipelineError with the reason."""
    try:
        members = members_of(archive)
    except FileNotFoundError:
        raise PipelineError("archive not found (vanished since the scan?)") from None
    except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError) as e:
        raise PipelineError(f"cannot read archive: {_reason(e)}") from None
    m = members.get(member)
    if m is None:
        raise PipelineError("no such member in the archive (removed since the scan?)")
    if m.encrypted:
        raise PipelineError("encrypted archive member")
    try:
        if archive.lower().endswith(ZIP):
            if not m.stored:  # deflated (or bzip2, lzma): zipfile's seekable stream, which
                # keeps the archive open until it is closed, and checks the CRC at the end
                return Window(zipfile.ZipFile(_open_archive(archive)).open(member), 0, m.size, member)
            raw = _open_archive(archive)
            raw.seek(m.start)
            header = raw.read(30)
            if len(header) < 30 or header[:4] != b"PK\x03\x04":
                raw.close()
                raise PipelineError("damaged archive: no local header where the directory says")
            name_len, extra_len = struct.unpack("<HH", header[26:30])
            return Window(raw, m.start + 30 + name_len + extra_len, m.size, member)
        if archive.lower().endswith(GZIP_TAR):
            return Window(gzip.open(_open_archive(archive) if is_remote(archive) else archive, "rb"), m.start, m.size, member)
        return Window(_open_archive(archive), m.start, m.size, member)
    except FileNotFoundError:
        raise PipelineError("archive not found (vanished since the scan?)") from None
    except (OSError, zipfile.BadZipFile, NotImplementedError) as e:
        raise PipelineError(f"cannot read archive member: {_reason(e)}") from None


def _holds_archive(root: Path) -> bool:
    """Is there an archive anywhere under `root` (symlinks followed, loops entered once)?

    Stops at the first one. Names only, no stat but of folders, so that a folder without
    any (which LocalFolder then walks again) costs little: it is every plain folder's scan.
    """
    seen: set[tuple[int, int]] = set()
    stack = [str(root)]
    while stack:
        folder = stack.pop()
        try:
            st = os.stat(folder)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            with os.scandir(folder) as it:
                for entry in it:
                    if is_archive(entry.name):
                        return True
                    try:
                        if entry.is_dir(follow_symlinks=True):
                            stack.append(entry.path)
                    except OSError:
                        continue
        except OSError:
            continue  # LocalFolder's walk reports it
    return False


class ArchiveSource(Source):
    """An archive, or a folder with archives (and loose videos) anywhere under it."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.url = location if is_remote(location) else None  # one remote archive
        if self.url is not None:
            from pipeline.sources.remote import check_url

            check_url(location)  # credentials in it: refused at the door, as RemoteStore does
        self.root = Path(os.path.abspath(Path(location).expanduser()))

    @classmethod
    def accepts(cls, location: str) -> bool:
        if is_remote(location):
            return is_archive(location)
        p = Path(location).expanduser()
        if p.is_file():
            return is_archive(str(p))
        if not p.is_dir():
            return False
        return _holds_archive(p)

    def _archive_entries(self, archive: str, extensions: tuple[str, ...], errors: list[str]) -> Iterator[Entry]:
        try:
            members = members_of(archive)
        except (OSError, zipfile.BadZipFile, tarfile.TarError, EOFError, PipelineError) as e:
            errors.append(f"{archive}: {_reason(e)}")
            return
        for m in members.values():
            if has_extension(m.name, extensions):
                yield Entry(member_name(archive, m.name), m.size, m.stamp)

    def entries(self, extensions: tuple[str, ...], errors: list[str]) -> Iterator[Entry]:
        if self.url is not None:
            yield from self._archive_entries(self.url, extensions, errors)
            return
        if self.root.is_file():
            yield from self._archive_entries(str(self.root), extensions, errors)
            return
        videos = tuple(extensions)
        for path, size, mtime in walk_videos(self.root, (*videos, *_WALK_EXTENSIONS), errors):
            if is_archive(path):
                yield from self._archive_entries(path, extensions, errors)
            elif has_extension(path, videos):
                yield Entry(path, size, mtime)

    def contains(self, name: str) -> bool:
        if self.url is not None:
            return name.startswith(self.url + SEPARATOR)
        if self.root.is_file():
            return name.startswith(str(self.root) + SEPARATOR)
        return name.startswith(str(self.root).rstrip(os.sep) + os.sep)

    @classmethod
    def owns(cls, name: str) -> bool:
        # A local file that happens to be named like a member is LocalFolder's.
        return split_name(name) is not None and not os.path.lexists(name)

    @classmethod
    def open(cls, name: str) -> IO[bytes]:
        parts = split_name(name)
        if parts is None:
            raise PipelineError(f"not an archive member: {name!r}")
        return open_member(*parts)

    @classmethod
    def stat(cls, name: str) -> Entry:
        parts = split_name(name)
        if parts is None:
            raise OSError(f"not an archive member: {name}")
        try:
            m = members_of(parts[0]).get(parts[1])
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, PipelineError) as e:
            raise OSError(f"cannot read archive: {_reason(e)}") from None
        if m is None:
            raise OSError("no such member in the archive")
        return Entry(name, m.size, m.stamp)
