"""The scanner: what it registers, how a rescan diffs, and how fast it is."""

from __future__ import annotations

import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np

from pipeline.reader import load_features
from pipeline.samples import Spec, make_video
from tests.conftest import cli, model_args, status_json


def rows(out: Path) -> dict[str, str]:
    with sqlite3.connect(out / "manifest.sqlite") as c:
        return {p: s for p, s in c.execute("SELECT path, status FROM videos")}


def test_registers_recursively_case_insensitive_with_symlinks(tmp_path: Path, tiny_model) -> None:
    src = tmp_path / "videos"
    make_video(src / "a" / "b" / "deep.mp4", Spec("deep.mp4", frames=3, width=32, height=32))
    make_video(src / "UPPER.MKV", Spec("UPPER.MKV", frames=3, width=32, height=32))
    (src / "notes.txt").write_text("not a video")
    (src / "clip.MOV").write_bytes(b"")  # registered by name; fails at run time with its reason
    outside = tmp_path / "elsewhere"
    make_video(outside / "linked_target.webm", Spec("t.webm", frames=3, width=32, height=32, codec="libvpx-vp9"))
    os.symlink(outside / "linked_target.webm", src / "linked.webm")
    os.symlink(outside, src / "linked_dir")
    os.symlink(src, src / "a" / "loop")  # a symlink loop must not hang the scan
    os.symlink(tmp_path / "gone.mp4", src / "dangling.mp4")
    out = tmp_path / "out"
    proc = cli("scan", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny_model), timeout=60)
    names = sorted(Path(p).name for p in rows(out))
    assert names == ["UPPER.MKV", "clip.MOV", "deep.mp4", "linked.webm", "linked_target.webm"]
    assert "unreadable" in proc.stderr  # the dangling link is reported, not fatal


def test_a_file_name_that_is_not_utf8_is_an_unreadable_entry_not_a_crash(tmp_path: Path, tiny_model) -> None:
    """One Latin-1 name among many (a camera's, an old archive's) once made scan stop with a
    traceback and register nothing; it is now one of the scan's unreadable entries, named
    by its bytes in the log, and the job goes on with every other video."""
    src = tmp_path / "videos"
    make_video(src / "ok.mp4", Spec("ok.mp4", frames=3, width=32, height=32))
    latin1 = os.fsencode(src) + b"/caf\xe9.mp4"
    os.rename(make_video(src / "tmp.mp4", Spec("t.mp4", frames=3, width=32, height=32)), latin1)
    out = tmp_path / "out"
    proc = cli("scan", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny_model), timeout=60)
    assert "Traceback" not in proc.stderr and "1 unreadable entries" in proc.stderr, proc.stderr
    assert [Path(p).name for p in rows(out)] == ["ok.mp4"]
    log = max((out / "logs").glob("scan-*.log")).read_text()
    assert "caf\\xe9.mp4'" in log and "not valid UTF-8" in log, log
    cli("run", "--output-dir", str(out), "--gpu", "cpu", "--num-workers", "1")
    assert status_json(out)["done"] == 1


def test_custom_extensions(tmp_path: Path, tiny_model) -> None:
    src = tmp_path / "v"
    src.mkdir()
    for name in ("a.mp4", "b.xyz", "c.XYZ"):
        (src / name).write_bytes(b"x")
    out = tmp_path / "out"
    cli("scan", "--video-dir", str(src), "--output-dir", str(out), "--extensions", "xyz,.foo", *model_args(tiny_model))
    assert sorted(Path(p).name for p in rows(out)) == ["b.xyz", "c.XYZ"]


def shards(out: Path) -> dict[str, str | None]:
    """path -> the shard holding its feature: a re-done video moves to a new shard."""
    with sqlite3.connect(out / "manifest.sqlite") as c:
        return {p: s for p, s in c.execute("SELECT path, shard FROM videos")}


def test_rescan_adds_changes_vanishes_and_restores(tmp_path: Path, tiny_model) -> None:
    src = tmp_path / "v"
    for i in range(4):
        make_video(src / f"v{i}.mp4", Spec(f"v{i}.mp4", frames=10 + i, width=64, height=48))
    out = tmp_path / "out"
    scan = ["scan", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny_model)]
    run = ["run", "--output-dir", str(out), "--gpu", "cpu", "--num-workers", "1"]
    cli(*scan)
    cli(*run)
    before = load_features(out)
    assert len(before.paths) == 4
    feature = dict(zip(before.paths, before.features))
    first_shards = shards(out)

    assert "0 new, 0 changed, 0 vanished" in cli(*scan).stderr  # idempotent
    make_video(src / "v4.mp4", Spec("v4.mp4", frames=9, width=64, height=48))
    make_video(src / "v1.mp4", Spec("v1.mp4", frames=25, width=80, height=48))  # new content, same name
    moved = tmp_path / "v2.mp4"
    shutil.move(src / "v2.mp4", moved)
    # Same size, same bytes, a new mtime (a copy over it, a restore from backup): a
    # changed file as far as the scan can tell, so its feature must be made again.
    touched = src / "v3.mp4"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    assert touched.stat().st_size == st.st_size
    assert "1 new, 2 changed, 1 vanished" in cli(*scan).stderr
    st = rows(out)
    assert st[str(src / "v4.mp4")] == "pending" and st[str(src / "v1.mp4")] == "pending"
    assert st[str(touched)] == "pending", "an mtime-only change was not seen"
    assert st[str(src / "v2.mp4")] == "missing" and st[str(src / "v0.mp4")] == "done"

    cli(*run)
    after = load_features(out)
    assert sorted(Path(p).name for p in after.paths) == ["v0.mp4", "v1.mp4", "v3.mp4", "v4.mp4"]
    old_v1 = before.features[before.paths.index(str(src / "v1.mp4"))]
    new_v1 = after.features[after.paths.index(str(src / "v1.mp4"))]
    assert not np.allclose(old_v1, new_v1), "the stale feature of a changed file was kept"
    second_shards = shards(out)
    assert second_shards[str(touched)] not in (None, first_shards[str(touched)]), "the touched file was not re-done"
    # Same bytes, so the same feature (recomputed in another batch: equal to float precision).
    assert np.allclose(after.features[after.paths.index(str(touched))], feature[str(touched)], atol=1e-6)
    unchanged = str(src / "v0.mp4")
    assert second_shards[unchanged] == first_shards[unchanged]
    assert np.array_equal(after.features[after.paths.index(unchanged)], feature[unchanged])

    shutil.move(moved, src / "v2.mp4")  # back, unchanged: its feature is back without a run
    assert "0 new, 0 changed, 0 vanished, 1 back" in cli(*scan).stderr
    assert status_json(out)["done"] == 5 and status_json(out)["pending"] == 0
    restored = load_features(out)
    again = dict(zip(restored.paths, restored.features))
    assert np.array_equal(again[str(src / "v2.mp4")], feature[str(src / "v2.mp4")]), "not its own feature back"
    assert shards(out)[str(src / "v2.mp4")] == first_shards[str(src / "v2.mp4")]
    for path, feat in zip(after.paths, after.features):  # the restore touched no other feature
        assert np.array_equal(again[path], feat), path


def test_scan_of_100k_files_is_fast(tmp_path: Path, tiny_model) -> None:
    """Every file registered, and each scan done within a generous bound on a shared machine;
    the figure itself is measured by `make bench` (bench/scan.py)."""
    from bench.scan import measure, report

    r = measure(100_000, tmp_path, tiny_model, timeout=180)
    print(report(r))
    assert status_json(Path(r["output_dir"]))["total"] == 100_000
    assert r["first_scan_s"] < 120 and r["rescan_s"] < 120, report(r)
