"""Every source lists what its location holds, claims only its own rows, and opens each video."""

from __future__ import annotations

import atexit
import zipfile
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest

from pipeline.decoders import sample_frames
from pipeline.samples import Spec, make_video
from pipeline.sources import SOURCES, open_video, source_for

NAMES = ["a.mp4", "sub/b.mkv", "sub/deeper/c.MOV"]


def local_folder(tmp: Path) -> str:
    for i, name in enumerate(NAMES):
        make_video(tmp / "videos" / name, Spec(name, frames=5 + i, width=32, height=32))
    (tmp / "videos" / "notes.txt").write_text("not a video")
    return str(tmp / "videos")


def archive(tmp: Path) -> str:
    """The same videos as members of a stored zip, beside a member that is no video."""
    folder = Path(local_folder(tmp))
    with zipfile.ZipFile(tmp / "videos.zip", "w", zipfile.ZIP_STORED) as zf:
        for name in [*NAMES, "notes.txt"]:
            zf.write(folder / name, name)
    return str(tmp / "videos.zip")


def video_list(tmp: Path) -> str:
    """A text list of the same videos: one row relative to the list's folder, a comment, a blank line."""
    folder = Path(local_folder(tmp))
    rows = ["# the three videos", "videos/" + NAMES[0], "", *(str(folder / n) for n in NAMES[1:])]
    (tmp / "list.txt").write_text("\n".join(rows) + "\n")
    return str(tmp / "list.txt")


LOCATIONS: dict[str, Callable[[Path], str]] = {
    "LocalFolder": local_folder, "ArchiveSource": archive, "VideoList": video_list,
}


_servers = ExitStack()  # servers the cases start, stopped when the test session ends
atexit.register(_servers.close)


def remote_http(tmp: Path) -> str:
    """The same folder served over HTTP (index pages, Range): read through fsspec."""
    from tests.remote_servers import http_server

    server = _servers.enter_context(http_server(Path(local_folder(tmp)).parent))
    return f"{server.url}/videos/"


LOCATIONS["RemoteStore"] = remote_http


def test_every_source_has_a_contract_case() -> None:
    assert {k.__name__ for k in SOURCES.classes().values()} == set(LOCATIONS)


@pytest.mark.parametrize("kind", sorted(LOCATIONS))
def test_source_lists_claims_and_opens(tmp_path: Path, kind: str) -> None:
    location = LOCATIONS[kind](tmp_path)
    source = source_for(location)
    assert type(source).__name__ == kind
    errors: list[str] = []
    entries = list(source.entries(("mp4", "mkv", "mov"), errors))
    assert errors == [] and len(entries) == len(NAMES)
    assert all(source.contains(e.name) for e in entries)
    assert not source.contains(str(tmp_path / "elsewhere" / "x.mp4"))
    for entry in entries:
        assert entry.size > 0 and entry.mtime_ns > 0
        assert sample_frames(open_video(entry.name), 4).n >= 5


def test_a_location_no_source_takes_is_one_line(tmp_path: Path) -> None:
    from pipeline.errors import PipelineError

    with pytest.raises(PipelineError, match="video directory not found"):
        source_for(str(tmp_path / "nowhere"))
    (tmp_path / "clip.mp4").write_bytes(b"")  # a file where a folder was meant: not "not found"
    with pytest.raises(PipelineError, match="clip.mp4 is a file, not a directory"):
        source_for(str(tmp_path / "clip.mp4"))
