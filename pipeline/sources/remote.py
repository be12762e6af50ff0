"""Object stores and web servers through fsspec: `s3://bucket/prefix/`, `gs://`, `az://`, `http(s)://`.

A video is named by its URL (never with credentials: pipeline/sources/redact.py) and read
through a seekable fsspec file whose reads are whole blocks of BLOCK_SIZE bytes kept in
an LRU of MAX_BLOCKS (fsspec's BlockCache): a worker holds at most BLOCK_SIZE x MAX_BLOCKS
of any object, the decoder's seeks read only the blocks they touch, and no block the
cache holds is fetched twice. An object is copied whole only where `--cache-dir` asks for
local copies (atomic, reused by later opens). Failures are the video's, in words
(RemoteError); the reasons that speak of the endpoint rather than the object let the
engine stop a run whose endpoint is down (docs/design/sources.md, Remote).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import importlib.util
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

from pipeline.errors import PipelineError
from pipeline.sources.base import Entry, Source
from pipeline.sources.redact import redact, secret_parts

BLOCK_SIZE = 1 << 20  # one ranged GET: big enough that request latency is not the cost
MAX_BLOCKS = 16  # per open file: memory per worker stays under 16 MiB whatever the object
HTTP_RETRIES = 3  # aiohttp has no retry of its own: transient failures are retried here
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 60.0

# scheme -> (fsspec protocol, package that implements it)
SCHEMES: dict[str, tuple[str, str]] = {
    "s3": ("s3", "s3fs"), "s3a": ("s3", "s3fs"),
    "gs": ("gcs", "gcsfs"), "gcs": ("gcs", "gcsfs"),
    "az": ("abfs", "adlfs"), "abfs": ("abfs", "adlfs"), "abfss": ("abfs", "adlfs"),
    "http": ("http", "aiohttp"), "https": ("http", "aiohttp"),
}

_cache_dir: Path | None = None  # set in each decode worker from --cache-dir


def set_cache_dir(path: str | None) -> None:
    """Keep whole local copies of remote videos in `path` (None: ranged reads only)."""
    global _cache_dir
    _cache_dir = Path(path).expanduser() if path else None


class RemoteError(PipelineError):
    """A remote video's failure in words; `endpoint` names the store when the reason is about
    the store (refused, timed out, credentials), not this object (403, 404, truncated)."""

    def __init__(self, reason: str, endpoint: str | None = None) -> None:
        super().__init__(redact(reason))
        self.endpoint = endpoint


def scheme_of(url: str) -> str:
    return url.split("://", 1)[0].lower() if "://" in url else ""


def endpoint_of(url: str) -> str:
    """`s3://bucket`, `https://host:port`: what is down when every open fails alike."""
    parts = urlsplit(url)
    return redact(f"{parts.scheme}://{parts.netloc}")


def check_url(url: str) -> None:
    """Refuse credentials in a URL (they would be stored with the name) and a missing fsspec package."""
    if secret := secret_parts(url):
        raise PipelineError(
            f"{redact(url)}: credentials in a URL ({', '.join(secret)}) are not accepted; "
            "give them the standard way (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, "
            "GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_* variables)"
        )
    _protocol, package = SCHEMES[scheme_of(url)]
    if importlib.util.find_spec(package) is None:
        raise PipelineError(f"{redact(url)}: reading {scheme_of(url)}:// URLs needs the {package} package (pip install {package})")


_filesystems: dict[tuple[str, ...], Any] = {}


def _filesystem(url: str) -> Any:
    """The process's fsspec file system for `url`'s protocol, with the client's own retries.

    One per protocol and configuring environment (credentials and endpoint are read when its
    session starts), kept for the process: a worker opens video after video on one session."""
    protocol, _package = SCHEMES[scheme_of(url)]
    env = tuple(sorted(f"{k}={v}" for k, v in os.environ.items() if k.startswith(("AWS_", "FSSPEC_"))))
    key = (protocol, *env)
    if key not in _filesystems:
        _filesystems[key] = _new_filesystem(protocol)
    return _filesystems[key]


def _new_filesystem(protocol: str) -> Any:
    import fsspec

    if protocol == "s3":
        # botocore's standard retry mode: exponential backoff with jitter on throttling,
        # 5xx, connection and read errors. Credentials and the endpoint come from botocore's
        # own chain (AWS_* variables, profiles, AWS_ENDPOINT_URL[_S3]); fsspec's config adds
        # FSSPEC_S3_ENDPOINT_URL and the like.
        options: dict[str, Any] = {
            "use_listings_cache": False,  # a worker opens what may have changed since any listing
            "config_kwargs": {
                "retries": {"max_attempts": 3, "mode": "standard"},
                "connect_timeout": CONNECT_TIMEOUT, "read_timeout": READ_TIMEOUT,
            },
        }
    elif protocol == "http":
        import aiohttp

        options = {"client_kwargs": {"timeout": aiohttp.ClientTimeout(
            total=None, sock_connect=CONNECT_TIMEOUT, sock_read=READ_TIMEOUT)}}
    else:
        options = {}
    from fsspec.config import apply_config

    cls = fsspec.get_filesystem_class(protocol)
    fs = cls(**apply_config(cls, options), skip_instance_cache=True)
    if protocol == "s3":
        fs.retries = 2  # s3fs's own loop around botocore's (5 by default), for errors botocore passes up
    return fs


def _root_cause(e: BaseException) -> list[BaseException]:
    chain = []
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__  # type: ignore[assignment]
    return chain


def _status(e: BaseException) -> int | None:
    """The HTTP status somewhere in the exception's chain, if any."""
    return next((getattr(x, "status", None) for x in _root_cause(e) if isinstance(getattr(x, "status", None), int)), None)


def _missing(e: BaseException) -> bool:
    """The object is not there (404)."""
    return isinstance(e, FileNotFoundError) or _status(e) == 404


def reason_of(e: BaseException, url: str, scanned: bool = True) -> RemoteError:
    """An exception from s3fs/botocore/aiohttp as the words a user reads, and whether it is the endpoint's.
    `scanned`: the object was listed before (a 404 then means deleted since the scan)."""
    if isinstance(e, RemoteError):
        return e
    where = endpoint_of(url)
    names = [type(x).__name__ for x in _root_cause(e)]
    text = " ".join(str(x) for x in _root_cause(e))
    status = _status(e)
    if any(n in ("InvalidAccessKeyId", "SignatureDoesNotMatch") for n in names) or (
        "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text
    ):
        return RemoteError("credentials refused (invalid access key or signature)", where)
    if any(n in ("NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError") for n in names):
        return RemoteError("no credentials found (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE)", where)
    if _missing(e):
        return RemoteError("404 not found (deleted since the scan?)" if scanned else "404 not found")
    if isinstance(e, PermissionError) or status == 403:
        return RemoteError("403 forbidden")
    if any(n in ("ClientPayloadError", "IncompleteRead", "IncompleteReadError", "ResponseStreamingError",
                 "ContentLengthError") for n in names):
        return RemoteError("truncated object: the connection ended before the object did")
    if any(isinstance(x, ConnectionRefusedError) for x in _root_cause(e)) or "Connection refused" in text or (
        "EndpointConnectionError" in names
    ):
        return RemoteError("connection refused", where)
    if any(isinstance(x, (TimeoutError, asyncio.TimeoutError, socket.timeout)) for x in _root_cause(e)) or any(
        n in ("ConnectTimeoutError", "ReadTimeoutError", "ServerTimeoutError", "FSTimeoutError") for n in names
    ):
        return RemoteError("timeout", where)
    if any(isinstance(x, ConnectionResetError) for x in _root_cause(e)) or any(
        n in ("ConnectionClosedError", "ServerDisconnectedError", "ClientOSError") for n in names
    ):
        return RemoteError("connection reset", where)
    if any(isinstance(x, socket.gaierror) for x in _root_cause(e)) or "Name or service not known" in text:
        return RemoteError("host not found", where)
    if isinstance(status, int) and status >= 500:
        return RemoteError(f"server error {status}", where)
    if isinstance(status, int):
        return RemoteError(f"HTTP {status}")
    return RemoteError(f"{type(e).__name__}: {e}")


def _stamp(info: dict[str, Any]) -> int:
    """The change stamp stored as mtime_ns: a hash of the ETag where the store gives one (a
    rewrite changes it, a copy of the same bytes does not), else LastModified in ns."""
    etag = info.get("ETag") or info.get("etag") or info.get("Etag")
    if etag:
        return int.from_bytes(hashlib.blake2b(str(etag).strip('"').encode(), digest_size=8).digest(), "big") >> 2
    modified = info.get("LastModified") or info.get("Last-Modified") or info.get("last_modified") or info.get("mtime")
    if isinstance(modified, dt.datetime):
        return int(modified.timestamp() * 1e9)
    if isinstance(modified, (int, float)):
        return int(modified * 1e9)
    if isinstance(modified, str):
        from email.utils import parsedate_to_datetime

        try:
            return int(parsedate_to_datetime(modified).timestamp() * 1e9)
        except (TypeError, ValueError):
            pass
    return 0


def _full(url: str, path: str) -> str:
    """fsspec's path back to a URL (s3fs lists 'bucket/key'; http lists full URLs)."""
    return path if "://" in path else f"{scheme_of(url)}://{path}"


def _archive_kind() -> Any:
    """The source that reads an archive URL as a location (ArchiveSource), through the
    registry: a prefix of archives is listed as a folder of them is, member by member,
    while the archive module keeps its own use of this one (it opens remote archives
    through RemoteStore) without an import cycle."""
    from pipeline.sources import SOURCES

    return SOURCES.load("archive")


def _is_video(name: str, extensions: tuple[str, ...]) -> bool:
    exts = {"." + e.lower().lstrip(".") for e in extensions}
    base = name.rsplit("/", 1)[-1]
    return "." in base and "." + base.rsplit(".", 1)[1].lower() in exts


class RemoteStore(Source):
    """Every video under a URL prefix; names are full URLs, e.g. s3://bucket/prefix/a.mp4.
    An archive under the prefix is listed by its members, `s3://bucket/prefix/part_0.zip::a.mp4`,
    as in a local folder of archives."""

    def __init__(self, location: str) -> None:
        super().__init__(location)
        check_url(location)
        self.prefix = location

    @classmethod
    def accepts(cls, location: str) -> bool:
        return scheme_of(location) in SCHEMES

    def entries(self, extensions: tuple[str, ...], errors: list[str]) -> Iterator[Entry]:
        fs = _filesystem(self.prefix)
        try:
            if scheme_of(self.prefix) in ("http", "https"):
                found = {p: None for p in fs.find(self.prefix)}  # links of the index pages
            else:
                # s3fs lists with ListObjectsV2, 1,000 keys a page, with size and ETag each.
                found = fs.find(self.prefix, detail=True)
        except Exception as e:
            raise PipelineError(f"{redact(self.prefix)}: cannot list: {reason_of(e, self.prefix)}") from None
        archives = _archive_kind()
        for path in sorted(found):
            name = _full(self.prefix, path)
            info = found[path]
            if not self.contains(name) or (info is not None and info.get("type", "file") != "file"):
                continue
            if archives.accepts(name):  # DFDC's zip parts, webdataset tar shards: their members
                yield from archives(name).entries(extensions, errors)  # named URL::MEMBER
                continue
            if not _is_video(name, extensions):
                continue
            if info is None:
                try:
                    yield self.stat(name)
                except OSError as e:
                    errors.append(f"{redact(name)}: {e}")
                continue
            yield Entry(name, int(info.get("size") or 0), _stamp(info))

    def contains(self, name: str) -> bool:
        prefix = self.prefix if self.prefix.endswith("/") else self.prefix + "/"
        return name.startswith(prefix) or name == self.prefix

    @classmethod
    def owns(cls, name: str) -> bool:
        return scheme_of(name) in SCHEMES

    @classmethod
    def stat(cls, name: str) -> Entry:
        """One named video's size and change stamp (for lists of paths or URLs); raises OSError with the reason."""
        try:
            check_url(name)
        except PipelineError as e:  # credentials in it, or its package missing: the words as they are
            raise OSError(str(e)) from None
        try:
            info = _filesystem(name).info(name)
        except Exception as e:
            # A list row at scan time, or an archive's identity; FileNotFoundError for a 404, so
            # an archive's open then says it vanished since the scan.
            raise (FileNotFoundError if _missing(e) else OSError)(str(reason_of(e, name, scanned=False))) from None
        return Entry(name, int(info.get("size") or 0), _stamp(info))

    @classmethod
    def open(cls, name: str) -> str | IO[bytes]:
        """A seekable file reading whole blocks through a bounded LRU (or, with --cache-dir, a local copy)."""
        fs = _filesystem(name)
        try:
            if _cache_dir is not None:
                return _local_copy(fs, name, _cache_dir)
            f = fs.open(name, "rb", block_size=BLOCK_SIZE, cache_type="blockcache",
                        cache_options={"maxblocks": MAX_BLOCKS})
        except Exception as e:
            raise reason_of(e, name) from None
        if not getattr(f, "seekable", lambda: False)() or not hasattr(f, "cache"):
            f.close()
            raise RemoteError("the server does not honour Range requests (cannot seek)")
        f.cache.fetcher = _checked_fetcher(f.cache.fetcher, name, f.size)
        return f


def _checked_fetcher(fetch: Callable[[int, int], bytes], url: str, size: int) -> Callable[[int, int], bytes]:
    """The block fetcher with the failure in words, a short answer caught as a truncated
    object, and (http: aiohttp has no retry) transient failures retried with backoff."""
    retries = HTTP_RETRIES if scheme_of(url) in ("http", "https") else 1

    def fetched(start: int, end: int) -> bytes:
        for attempt in range(retries):
            try:
                data = fetch(start, end)
                break
            except Exception as e:
                err = reason_of(e, url)
                if err.endpoint is None or attempt == retries - 1:
                    raise err from None
                time.sleep(0.25 * 2**attempt)
        want = min(end, size) - start
        if len(data) < want:
            raise RemoteError(f"truncated object: {start + len(data)} of {size} bytes")
        return data

    return fetched


def _local_copy(fs: Any, url: str, folder: Path) -> str:
    """The object copied whole into `folder` once (atomically: a part file renamed), then reused.
    Keyed by URL and change stamp, so a rewritten object is copied again."""
    info = fs.info(url)
    key = hashlib.sha256(f"{url}\n{_stamp(info)}\n{info.get('size')}".encode()).hexdigest()[:32]
    suffix = "." + url.rsplit(".", 1)[1][:8] if "." in url.rsplit("/", 1)[-1] else ""
    target = folder / f"{key}{suffix}"
    if target.is_file() and target.stat().st_size == int(info.get("size") or 0):
        return str(target)
    folder.mkdir(parents=True, exist_ok=True)
    part = folder / f".{key}.{os.getpid()}.part"
    try:
        fs.get_file(url, str(part))
        if part.stat().st_size != int(info.get("size") or 0):
            raise RemoteError(f"truncated object: {part.stat().st_size} of {info.get('size')} bytes copied")
        os.replace(part, target)
    finally:
        part.unlink(missing_ok=True)
    return str(target)
