"""A full disk: the run stops with one line, nothing half-written is read, a rerun finishes.

The output directory sits on a real tmpfs of a few MB (mounted as root by the test);
a ballast file leaves room for only part of the shards, so a real write fails with ENOSPC.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import numpy as np
import pytest

from pipeline.reader import load_features
from pipeline.samples import Spec, make_video
from tests.conftest import cli, model_args, status_json

N = 30
RUN = ["--gpu", "cpu", "--num-workers", "2", "--batch-size", "2", "--shard-size", "2"]


@pytest.fixture
def small_fs(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a size-limited tmpfs")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(fs: Path, leave: int) -> Path:
    """Write a ballast file leaving about `leave` bytes free on fs."""
    st = os.statvfs(fs)
    ballast = fs / "ballast"
    with open(ballast, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return ballast


@pytest.mark.parametrize("manifest_on_full_disk", [False, True], ids=["manifest-elsewhere", "manifest-on-full-disk"])
def test_disk_full_stops_cleanly_and_rerun_finishes(tmp_path: Path, small_fs: Path, tiny_model, manifest_on_full_disk) -> None:
    src = tmp_path / "v"
    for i in range(N):
        make_video(src / f"v{i:02d}.mp4", Spec("x.mp4", frames=10, width=48, height=32))
    out = small_fs / "out"
    db = [] if manifest_on_full_disk else ["--db", f"sqlite:///{tmp_path / 'manifest.sqlite'}"]
    cli("scan", "--video-dir", str(src), "--output-dir", str(out), *db, *model_args(tiny_model))
    ballast = fill(small_fs, 64 * 1024)

    proc = cli("run", "--output-dir", str(out), *db, *RUN, check=False)
    assert proc.returncode == 1
    err = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr
    assert err[-1].startswith("error: ") and str(out) in err[-1] and "full" in err[-1], proc.stderr
    assert not list((out / "shards").glob("*.tmp")), "half-written files were left"
    st = status_json(out, *db)
    assert st["done"] < N
    if not manifest_on_full_disk:
        assert st["running"] == 0, "claims were not given back"
    committed = load_features(out, db[1] if db else None)  # whatever was committed reads back whole
    assert len(committed.paths) == st["done"]

    ballast.unlink()
    cli("run", "--output-dir", str(out), *db, *RUN)
    st = status_json(out, *db)
    assert (st["done"], st["pending"], st["running"], st["failed"]) == (N, 0, 0, 0)
    final = load_features(out, db[1] if db else None)
    assert len(set(final.paths)) == N and np.allclose(np.linalg.norm(final.features, axis=1), 1, atol=1e-5)
    manifest = out / "manifest.sqlite" if manifest_on_full_disk else tmp_path / "manifest.sqlite"
    with sqlite3.connect(manifest) as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
