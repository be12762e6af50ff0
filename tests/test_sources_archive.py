"""Archives and video lists as sources, end to end on real zip, tar, CSV and parquet files.

One job is scanned from a folder, a stored zip, a deflated zip, a tar, a folder holding a
DFDC-like part, and three lists (txt, csv, parquet) at once, and run once: each member and
each listed copy (a local path or an http URL) must have the feature of the same bytes in the folder, the corrupt
members fail with their reasons while the others are done, and the names are
`ARCHIVE::MEMBER` in the manifest, status, the export and load_features. Rescans of a
changed archive and of a shortened list are diffed in process; a SIGKILL mid-run and a
rerun leave each video done exactly once, for a zip, a tar and a list of URLs.
"""

from __future__ import annotations

import csv
import json
import tarfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from pipeline.manifest import open_manifest
from pipeline.reader import load_features
from pipeline.samples import Spec, frame_image, make_clips, make_video
from pipeline.scanner import scan_all
from pipeline.sources import source_for, stat_video
from tests.conftest import cli, cosine_rows, kill_group, model_args
from tests.remote_servers import SECRET, http_server
from tests.test_cli import main_in_process  # noqa: F401 - the fixture: cli.main in this process

CLIPS = ["a.mp4", "nested/deep/b.mp4", "ünïcødé/çlip.mkv"]
EXTS = ("mp4", "mkv")
RUN = ["--gpu", "cpu", "--batch-size", "4", "--shard-size", "4", "--num-workers", "2"]


def make_clip(path: Path, k: int) -> Path:
    """Clip k: its own pictures and length, so a member matched to the wrong file shows."""
    return make_video(path, Spec(path.name, frames=6 + k, width=48, height=32),
                      picture=lambda i, w, h: frame_image(i + 40 * k, w, h))


def zip_folder(folder: Path, archive: Path, compression: int, prefix: str = "") -> Path:
    with zipfile.ZipFile(archive, "w", compression) as zf:
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                zf.write(p, prefix + p.relative_to(folder).as_posix())
    return archive


def damage_member(archive: Path, member: str) -> None:
    """Overwrite the middle of a deflated member's compressed bytes in place."""
    with zipfile.ZipFile(archive) as zf:
        info = zf.getinfo(member)
    with open(archive, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
        start = info.header_offset + 30 + int(name_len) + int(extra_len)
        f.seek(start + info.compress_size // 3)
        f.write(b"\xff" * max(8, info.compress_size // 3))


@pytest.fixture(scope="module")
def layout(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Every kind of location over the same three clips, plus what must be skipped or fail.

    The folder is also served over HTTP (Range, tests/remote_servers.py) for the text
    list's URL rows, for as long as the module's job needs it."""
    tmp = tmp_path_factory.mktemp("sources")
    with http_server(tmp) as server:
        yield _layout(tmp, server.url)


def _layout(tmp: Path, url: str) -> dict:
    src = tmp / "src"
    for k, name in enumerate(CLIPS):
        make_clip(src / name, k)
    good = (src / CLIPS[0]).read_bytes()

    stored = zip_folder(src, tmp / "stored.zip", zipfile.ZIP_STORED)
    with zipfile.ZipFile(stored, "a", zipfile.ZIP_STORED) as zf:
        zf.writestr("broken/truncated.mp4", good[: len(good) // 3])
    deflated = zip_folder(src, tmp / "deflated.zip", zipfile.ZIP_DEFLATED)
    with zipfile.ZipFile(deflated, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("broken/damaged.mp4", (src / CLIPS[2]).read_bytes() * 4)  # compressible: a real deflate stream
    damage_member(deflated, "broken/damaged.mp4")
    tar = tmp / "clips.tar"
    with tarfile.open(tar, "w") as tf:
        tf.add(src, arcname="clips")

    parts = tmp / "parts"  # DFDC's layout: a folder of zip parts, each a folder of mp4s and metadata.json
    parts.mkdir()
    with zipfile.ZipFile(parts / "dfdc_train_part_0.zip", "w", zipfile.ZIP_STORED) as zf:
        for k, name in enumerate(CLIPS[:2]):
            zf.write(src / name, f"dfdc_train_part_0/{Path(name).name}")
        zf.writestr("dfdc_train_part_0/metadata.json", json.dumps({"a.mp4": {"label": "FAKE"}}))
    (parts / "loose.mp4").write_bytes((src / CLIPS[2]).read_bytes())

    copies = {kind: tmp / "copies" / kind for kind in ("txt", "csv", "parquet")}
    for folder in copies.values():
        for name in CLIPS:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).write_bytes((src / name).read_bytes())
    lists = tmp / "lists"
    lists.mkdir()
    rows = {kind: [str(copies[kind] / n) for n in CLIPS] for kind in copies}
    host = url.split("://", 1)[1]
    urls = {"ok": f"{url}/src/{CLIPS[1]}", "gone": f"{url}/src/gone.mp4", "member": f"{url}/stored.zip::{CLIPS[0]}",
            "archive": f"{url}/stored.zip",
            "secret": f"http://lister:{SECRET}@{host}/src/{CLIPS[0]}", "masked": f"http://***@{host}/src/{CLIPS[0]}"}
    (lists / "videos.txt").write_text("# copies\n\n" + "\n".join(rows["txt"][:2]) + "\n"
                                      + f"../copies/txt/{CLIPS[2]}\n"  # relative to the list's folder
                                      + "\n".join([urls["ok"], urls["gone"], urls["secret"], urls["member"]]) + "\n")
    with open(lists / "videos.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "path"])
        w.writerows([["x", r] for r in rows["csv"]] + [["y", str(tmp / "missing.mp4")]])
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"url": rows["parquet"], "n": [1, 2, 3]}), lists / "videos.parquet")
    # Which loose file each registered name holds the bytes of.
    same = {str(src / n): str(src / n) for n in CLIPS}
    for archive, prefix in ((stored, ""), (deflated, ""), (tar, "clips/")):
        same.update({f"{archive}::{prefix}{n}": str(src / n) for n in CLIPS})
    same.update({f"{parts / 'dfdc_train_part_0.zip'}::dfdc_train_part_0/{Path(n).name}": str(src / n) for n in CLIPS[:2]})
    same[str(parts / "loose.mp4")] = str(src / CLIPS[2])
    same[urls["ok"]] = str(src / CLIPS[1])
    same[urls["member"]] = str(src / CLIPS[0])  # a member of an archive reached over HTTP
    for kind in copies:
        same.update({str(copies[kind] / n): str(src / n) for n in CLIPS})
    return {"tmp": tmp, "src": src, "stored": stored, "deflated": deflated, "tar": tar, "parts": parts,
            "lists": [lists / "videos.txt", lists / "videos.csv", lists / "videos.parquet"], "same": same,
            "missing": str(tmp / "missing.mp4"), "urls": urls}


@pytest.fixture(scope="module")
def job(layout: dict, tiny_model: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One scan through the real CLI (the repeated flags), one run."""
    out = tmp_path_factory.mktemp("job")
    dirs = [layout["src"], layout["stored"], layout["deflated"], layout["tar"], layout["parts"]]
    args = [a for d in dirs for a in ("--video-dir", str(d))] + [a for p in layout["lists"] for a in ("--video-list", str(p))]
    scan = cli("scan", *args, "--output-dir", str(out), *model_args(tiny_model))
    cli("run", "--output-dir", str(out), *RUN)
    return {"out": out, "scan": scan}


def test_scan_reports_each_location(layout: dict, job: dict) -> None:
    lines = [line for line in job["scan"].stderr.splitlines() if line.startswith("scanned ")]
    assert lines == [
        f"scanned {layout['src']}: 3 videos found, 3 new, 0 changed, 0 vanished, 0 back",
        f"scanned {layout['stored']}: 4 videos found, 4 new, 0 changed, 0 vanished, 0 back",
        f"scanned {layout['deflated']}: 4 videos found, 4 new, 0 changed, 0 vanished, 0 back",
        f"scanned {layout['tar']}: 3 videos found, 3 new, 0 changed, 0 vanished, 0 back",
        f"scanned {layout['parts']}: 3 videos found, 3 new, 0 changed, 0 vanished, 0 back",
        f"scanned {layout['lists'][0]}: 5 videos found, 5 new, 0 changed, 0 vanished, 0 back, 2 unreadable entries (see log)",
        f"scanned {layout['lists'][1]}: 3 videos found, 3 new, 0 changed, 0 vanished, 0 back, 1 unreadable entries (see log)",
        f"scanned {layout['lists'][2]}: 3 videos found, 3 new, 0 changed, 0 vanished, 0 back",
    ]
    log = "".join(p.read_text() for p in (job["out"] / "logs").glob("scan-*.log"))
    assert f"cannot read {layout['missing']}: No such file or directory" in log
    # URL rows: a 404 is an unreadable entry with its reason; one with credentials is refused
    # masked, as RemoteStore refuses `--video-dir URL`, and no file of the job holds the secret.
    urls = layout["urls"]
    assert f"cannot read {urls['gone']}: 404 not found\n" in log  # found missing by the scan: no "since the scan"
    assert f"cannot read {urls['masked']}: credentials in a URL (user:password) are not accepted" in log
    files = [p for p in job["out"].rglob("*") if p.is_file()]
    assert any(p.parent.name == "lists" for p in files)
    assert not [p for p in files if SECRET.encode() in p.read_bytes()] and SECRET not in job["scan"].stderr


def test_members_have_the_features_of_the_same_files(layout: dict, job: dict) -> None:
    got = load_features(job["out"])
    names = set(got.paths)
    assert names == set(layout["same"]), "every member and listed row once; metadata.json and the broken ones not"
    row = {p: i for i, p in enumerate(got.paths)}
    members = [n for n in got.paths if "::" in n or layout["same"][n] != n]
    cos = cosine_rows(got.features[[row[n] for n in members]], got.features[[row[layout["same"][n]] for n in members]])
    assert cos.min() >= 0.99999, dict(zip(members, cos))
    # The clips differ, so a member read from the wrong bytes would not pass: check that it can fail.
    a, b = (row[str(layout["src"] / n)] for n in CLIPS[:2])
    assert cosine_rows(got.features[[a]], got.features[[b]])[0] < 0.99999


def status(call, out: Path) -> dict:
    """`status --json`, parsed, through cli.main in this process."""
    got = call("status", "--output-dir", str(out), "--json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def test_corrupt_members_fail_with_their_reason(layout: dict, job: dict, main_in_process) -> None:  # noqa: F811
    st = status(main_in_process, job["out"])
    assert (st["done"], st["failed"], st["pending"]) == (len(layout["same"]), 2, 0)
    failed = {f["path"]: f["error"] for f in st["failures"]}
    assert set(failed) == {f"{layout['stored']}::broken/truncated.mp4", f"{layout['deflated']}::broken/damaged.mp4"}
    assert failed[f"{layout['stored']}::broken/truncated.mp4"].startswith("cannot open")
    assert failed[f"{layout['deflated']}::broken/damaged.mp4"].startswith("damaged archive member: Error -3")


def test_export_shows_member_names(layout: dict, job: dict, main_in_process) -> None:  # noqa: F811
    assert main_in_process("export", "--output-dir", str(job["out"]), "--format", "npy").returncode == 0
    lines = (job["out"] / "video_paths.txt").read_text().splitlines()
    assert sorted(lines) == sorted(layout["same"])
    assert f"{layout['tar']}::clips/{CLIPS[2]}" in lines  # the unicode name, as stored


def test_corrupt_archive_is_an_unreadable_entry(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    errors: list[str] = []
    assert list(source_for(str(bad)).entries(EXTS, errors)) == []
    assert errors == [f"{bad}: BadZipFile: File is not a zip file"]
    with pytest.raises(OSError, match="cannot read archive: BadZipFile"):
        stat_video(f"{bad}::x.mp4")  # a list row naming a member of it


def test_a_remote_archive_lists_its_members_by_url(layout: dict) -> None:
    """`--video-dir https://host/part.zip`: the same members as the local file, named URL::MEMBER."""
    url = layout["urls"]["archive"]
    errors: list[str] = []
    got = {e.name: (e.size, e.mtime_ns) for e in source_for(url).entries(EXTS, errors)}
    local = {e.name.replace(str(layout["stored"]), url, 1): (e.size, e.mtime_ns)
             for e in source_for(str(layout["stored"])).entries(EXTS, [])}
    assert errors == [] and got == local and len(got) == len(CLIPS) + 1
    assert stat_video(f"{url}::{CLIPS[0]}").size == (layout["src"] / CLIPS[0]).stat().st_size


def rows_by_status(out: Path) -> dict[str, str]:
    m = open_manifest(out, None, create=True)
    try:
        return {p: r[3] for p, r in m.known_files().items()}
    finally:
        m.close()


def rescan(out: Path, *locations: str) -> list[tuple[int, ...]]:
    m = open_manifest(out, None, create=True)
    try:
        sources = [source_for(loc) for loc in locations]
        return [(r.found, r.new, r.changed, r.vanished, r.restored) for r in scan_all(m, sources, EXTS, str(out))]
    finally:
        m.close()


def test_rescan_of_a_changed_archive_and_a_shorter_list(tmp_path: Path) -> None:
    src = tmp_path / "v"
    for k, name in enumerate(["a.mp4", "b.mp4", "c.mp4"]):
        make_clip(src / name, k)
    archive = tmp_path / "part.zip"
    zip_folder(src, archive, zipfile.ZIP_STORED)
    listed = tmp_path / "l" / "list.txt"
    make_clip(tmp_path / "l" / "x.mp4", 5)
    make_clip(tmp_path / "l" / "y.mp4", 6)
    listed.write_text("x.mp4\ny.mp4\n")
    out = tmp_path / "out"
    assert rescan(out, str(archive), str(listed)) == [(3, 3, 0, 0, 0), (2, 2, 0, 0, 0)]

    time.sleep(0.01)
    make_clip(src / "b.mp4", 9)  # replaced by other bytes (the same name)
    (src / "c.mp4").unlink()  # removed
    make_clip(src / "d.mp4", 3)  # added
    zip_folder(src, archive, zipfile.ZIP_STORED)
    listed.write_text("x.mp4\n")  # y is no longer listed
    assert rescan(out, str(archive), str(listed)) == [(3, 1, 1, 1, 0), (1, 0, 0, 1, 0)]
    rows = rows_by_status(out)
    name = partial("{}::{}".format, archive)
    assert (rows[name("a.mp4")], rows[name("b.mp4")], rows[name("c.mp4")], rows[name("d.mp4")]) == (
        "pending", "pending", "missing", "pending")
    assert rows[str(tmp_path / "l" / "y.mp4")] == "missing"

    # A list scanned alone leaves the archive's rows alone, and a row listed again is back.
    listed.write_text("x.mp4\ny.mp4\n")
    assert rescan(out, str(listed)) == [(2, 0, 0, 0, 1)]
    assert rows_by_status(out)[name("a.mp4")] == "pending"


def _killable_location(kind: str, clips: Path, tmp: Path, stack: ExitStack) -> tuple[str, str, dict[str, str]]:
    """(scan flag, location, video name -> its file's name): the same clips as a stored zip,
    a tar, or a list of their URLs on the Range HTTP server."""
    files = sorted(clips.glob("*.mp4"))
    if kind == "zip":
        archive = zip_folder(clips, tmp / "part.zip", zipfile.ZIP_STORED)
        return "--video-dir", str(archive), {f"{archive}::{p.name}": p.name for p in files}
    if kind == "tar":
        with tarfile.open(tmp / "part.tar", "w") as tf:
            for p in files:
                tf.add(p, p.name)
        return "--video-dir", str(tmp / "part.tar"), {f"{tmp / 'part.tar'}::{p.name}": p.name for p in files}
    server = stack.enter_context(http_server(clips))
    (tmp / "urls.txt").write_text("".join(f"{server.url}/{p.name}\n" for p in files))
    return "--video-list", str(tmp / "urls.txt"), {f"{server.url}/{p.name}": p.name for p in files}


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["zip", "tar", "http-list"])
def test_every_source_kind_is_done_exactly_once_after_sigkill(
    kind: str, tmp_path: Path, tiny_model: dict[str, str], main_in_process  # noqa: F811
) -> None:
    with ExitStack() as stack:
        _sigkill_then_rerun(kind, tmp_path, tiny_model, main_in_process, stack)


def _sigkill_then_rerun(kind: str, tmp_path: Path, tiny_model: dict[str, str], main_in_process, stack: ExitStack) -> None:  # noqa: F811
    n = 16
    clips = make_clips(tmp_path / "v", n, width=48, height=32, frames=10, vary=5)
    flag, location, names = _killable_location(kind, clips, tmp_path, stack)
    out = tmp_path / "out"
    args = ["--output-dir", str(out), "--gpu", "cpu", "--batch-size", "2", "--shard-size", "2", "--num-workers", "2"]
    from tests.conftest import start_cli

    scanned = main_in_process("scan", flag, location, "--output-dir", str(out), *model_args(tiny_model))
    assert scanned.returncode == 0, scanned.stderr
    proc = start_cli("run", *args, log=tmp_path / "killed.log")

    def done() -> int:
        return sum(1 for s in rows_by_status(out).values() if s == "done")

    deadline = time.monotonic() + 120
    while done() < 3 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0 < done() < n, f"the kill did not land mid-run ({done()} done)"
    kill_group(proc)
    cli("run", *args)
    st = status(main_in_process, out)
    assert (st["done"], st["pending"], st["running"], st["failed"]) == (n, 0, 0, 0)
    assert sum(r["videos_done"] for r in st["runs"]) == n, "a member was committed twice"
    got = load_features(out)
    assert sorted(got.paths) == sorted(names)
