"""A list of videos: a text file (one path or URL a line), a CSV or a parquet file.

`scan --video-list FILE` registers every row by name: a local path as LocalFolder names
files (absolute; a relative row is taken relative to the list's own folder, so a rescan
from elsewhere names it the same), an `ARCHIVE::MEMBER` row likewise, and a URL as it is
written (a URL holding credentials is refused, masked, as `--video-dir` refuses it:
pipeline/sources/redact.py). Each row's size and change stamp come from the kind of source that owns its
name (`stat_video`); a row that cannot be stat'ed is one of the scan's unreadable entries,
with its reason. Text files skip blank lines and `#` comments; a CSV or parquet file
takes its column `path` or `url` (in that order, any case), else its first column.

A list is its own location for the rescan diff, but unlike a folder its rows need not
share a prefix, so what it listed is remembered beside the job (`OUT/lists/`): a row the
list named at its last scan and no longer names has vanished; rows that other
locations registered are never this list's.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.sources.base import Entry, Source
from pipeline.sources.redact import redact

SUFFIXES = (".txt", ".csv", ".parquet")
COLUMNS = ("path", "url")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_url(row: str) -> bool:
    return bool(_URL.match(row))


def _refused(url: str) -> str | None:
    """Why a URL row cannot be a video's name (credentials in it, its fsspec package missing),
    masked, by RemoteStore's own check, as `--video-dir URL` refuses it; None if it can."""
    from pipeline.sources.remote import SCHEMES, check_url, scheme_of

    if scheme_of(url) not in SCHEMES:
        return None  # no source owns it: stat_video says so
    try:
        check_url(url)
    except PipelineError as e:
        return str(e)
    return None


def _column(names: list[str]) -> int:
    lowered = [str(n).strip().lower() for n in names]
    return next((lowered.index(c) for c in COLUMNS if c in lowered), 0)


def read_rows(path: Path) -> Iterator[str]:
    """The list's rows as written (stripped), in order; PipelineError if it cannot be read."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            pf = pq.ParquetFile(path)
            names = pf.schema_arrow.names
            if not names:
                return
            column = names[_column(names)]
            for batch in pf.iter_batches(columns=[column], batch_size=65536):  # bounded memory
                for value in batch.column(0).to_pylist():
                    if value is not None and str(value).strip():
                        yield str(value).strip()
            return
        # utf-8-sig: a spreadsheet's CSV often starts with a byte order mark
        with open(path, newline="" if suffix == ".csv" else None, encoding="utf-8-sig") as f:
            if suffix == ".csv":
                reader = csv.reader(f)
                header = next(reader, None)
                if header is None:
                    return
                i = _column(header)
                for row in reader:
                    if i < len(row) and row[i].strip():
                        yield row[i].strip()
                return
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    yield line
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PipelineError(f"cannot read video list {path}: {getattr(e, 'strerror', None) or e}") from None
    except Exception as e:  # pyarrow's own errors (not a parquet file)
        if type(e).__module__.startswith("pyarrow"):
            raise PipelineError(f"cannot read video list {path}: {e}") from None
        raise


class VideoList(Source):
    """A .txt, .csv or .parquet file naming videos; see the module docstring."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        self.path = Path(os.path.abspath(Path(location).expanduser()))
        self.previous: frozenset[str] = frozenset()  # what it listed last time (recall)
        self.listed: list[str] = []  # what it lists now, once entries() has run
        self._listed_set: set[str] = set()

    @classmethod
    def accepts(cls, location: str) -> bool:
        p = Path(location).expanduser()
        return p.is_file() and p.suffix.lower() in SUFFIXES

    def name_of(self, row: str) -> str:
        if is_url(row):
            return row
        return os.path.abspath(os.path.join(self.path.parent, os.path.expanduser(row)))

    def entries(self, extensions: tuple[str, ...], errors: list[str]) -> Iterator[Entry]:
        """Every row, whatever its extension: a list names its videos on purpose."""
        from pipeline.sources import stat_video

        self.listed, seen = [], self._listed_set
        seen.clear()
        for row in read_rows(self.path):
            name = self.name_of(row)
            if name in seen:
                continue
            if is_url(name) and (refused := _refused(name)):
                errors.append(refused)  # never registered, nor remembered in OUT/lists/
                continue
            seen.add(name)
            self.listed.append(name)
            try:
                yield stat_video(name)
            except OSError as e:
                errors.append(f"{redact(name)}: {e.strerror or e}")

    def contains(self, name: str) -> bool:
        """What it listed at its last scan (recall) or lists now."""
        return name in self.previous or name in self._listed_set


    @classmethod
    def owns(cls, name: str) -> bool:
        return False  # its rows are named, and opened, by the kinds that own them

    @classmethod
    def open(cls, name: str) -> str:
        raise PipelineError(f"a video list opens nothing itself: {name!r}")

    # -- what the list named at its last scan, kept beside the job --------------------

    def memory(self, job_dir: str | os.PathLike[str]) -> Path:
        digest = hashlib.sha256(str(self.path).encode()).hexdigest()[:16]
        return Path(job_dir) / "lists" / f"{digest}.json"

    def recall(self, job_dir: str | os.PathLike[str]) -> None:
        try:
            self.previous = frozenset(json.loads(self.memory(job_dir).read_text())["names"])
        except FileNotFoundError:
            self.previous = frozenset()
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise PipelineError(f"cannot read {self.memory(job_dir)}: {e}") from None

    def remember(self, job_dir: str | os.PathLike[str], names: list[str]) -> None:
        """Written atomically (a temporary file renamed over the old one)."""
        path = self.memory(job_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"list": str(self.path), "names": names}))
        os.replace(tmp, path)


def video_list(location: str) -> VideoList:
    """The list `--video-list` names, or a one-line error."""
    p = Path(location).expanduser()
    if not p.is_file():
        raise PipelineError(f"video list not found: {location}")
    if p.suffix.lower() not in SUFFIXES:
        raise PipelineError(f"video list must be a .txt, .csv or .parquet file: {location}")
    return VideoList(location)
