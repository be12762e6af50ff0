"""Crash safety with real processes: SIGKILL at random moments, runs side by side, a stalled run.

The claim: whatever happens, rerunning finishes the job with every video exactly
once and the same features as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.reader import load_features
from pipeline.samples import Spec, make_video
from tests.conftest import cli, kill_group, model_args, start_cli, status_json, wait_until

N_VIDEOS = 48
RUN_ARGS = ["--gpu", "cpu", "--batch-size", "2", "--shard-size", "2", "--num-workers", "2"]


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("many")
    for i in range(N_VIDEOS):
        make_video(folder / f"v{i:03d}.mp4", Spec(f"v{i:03d}.mp4", frames=20 + i % 7, width=64 + 16 * (i % 3), height=48))
    return folder


def new_job(root: Path, name: str, videos: Path, tiny: dict[str, str]) -> Path:
    out = root / name
    cli("scan", "--video-dir", str(videos), "--output-dir", str(out), *model_args(tiny))
    return out


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, many: Path, tiny_model: dict[str, str]):
    out = new_job(tmp_path_factory.mktemp("clean"), "job", many, tiny_model)
    cli("run", "--output-dir", str(out), *RUN_ARGS)
    return load_features(out)


def done_count(db: Path) -> int:
    try:
        with sqlite3.connect(db, timeout=30) as c:
            return c.execute("SELECT count(*) FROM videos WHERE status='done'").fetchone()[0]
    except sqlite3.Error:
        return -1


def sidecar_ids(out: Path) -> Counter:
    ids: Counter = Counter()
    for side in (out / "shards").glob("*.json"):
        ids.update(v["id"] for v in json.loads(side.read_text())["videos"])
    return ids


def assert_complete(out: Path, reference) -> None:
    st = status_json(out)
    assert (st["done"], st["pending"], st["running"], st["failed"]) == (N_VIDEOS, 0, 0, 0)
    got = load_features(out)
    assert len(got.paths) == len(set(got.paths)) == N_VIDEOS
    assert got.paths == reference.paths
    assert np.allclose(got.features, reference.features, atol=1e-5)
    with sqlite3.connect(out / "manifest.sqlite") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_sigkill_at_random_moments_then_rerun(tmp_path: Path, many: Path, tiny_model, uninterrupted) -> None:
    out = new_job(tmp_path, "job", many, tiny_model)
    db = out / "manifest.sqlite"
    rng = random.Random(7)
    progress = []
    for attempt in range(4):
        before = done_count(db)
        proc = start_cli("run", "--output-dir", str(out), *RUN_ARGS, log=tmp_path / f"run{attempt}.log")
        if attempt == 0:
            time.sleep(0.3)  # during start-up, before any claim
        else:
            # Mid-run: once it has committed something, after a random extra delay.
            wait_until(lambda b=before, p=proc: done_count(db) > b or p.poll() is not None, timeout=120, interval=0.05)
            time.sleep(rng.uniform(0.0, 0.15))
        kill_group(proc)
        progress.append(done_count(db))
    mid_run = [d for d in progress if 0 < d < N_VIDEOS]
    assert len(mid_run) >= 2, f"kills did not land mid-run: {progress}"
    # The rerun must not wait for the dead runs' leases (300 s): their pids are gone.
    started = time.monotonic()
    cli("run", "--output-dir", str(out), *RUN_ARGS)
    assert time.monotonic() - started < 120
    assert_complete(out, uninterrupted)
    runs = {r["state"] for r in status_json(out)["runs"]}
    assert "crashed" in runs and "finished" in runs


def test_concurrent_runs_never_process_a_video_twice(tmp_path: Path, many: Path, tiny_model, uninterrupted) -> None:
    out = new_job(tmp_path, "job", many, tiny_model)
    procs = [start_cli("run", "--output-dir", str(out), *RUN_ARGS, "--num-workers", "1",
                       log=tmp_path / f"r{i}.log") for i in range(3)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    assert_complete(out, uninterrupted)
    ids = sidecar_ids(out)
    assert len(ids) == N_VIDEOS and max(ids.values()) == 1, "a video was encoded by two runs"
    writers = {r["id"]: r["videos_done"] for r in status_json(out)["runs"]}
    print("videos per run:", writers)
    assert sum(writers.values()) == N_VIDEOS


def test_stalled_run_loses_its_claims_and_commits_nothing_stale(tmp_path: Path, many: Path, tiny_model, uninterrupted) -> None:
    out = new_job(tmp_path, "job", many, tiny_model)
    db = out / "manifest.sqlite"
    slow = start_cli("run", "--output-dir", str(out), *RUN_ARGS, "--lease-seconds", "3", log=tmp_path / "slow.log")
    try:
        assert wait_until(lambda: done_count(db) > 0, timeout=120, interval=0.05)
        slow.send_signal(signal.SIGSTOP)  # alive but silent: only its lease can free its rows
        time.sleep(3.5)
        cli("run", "--output-dir", str(out), *RUN_ARGS, "--lease-seconds", "3")
        slow.send_signal(signal.SIGCONT)
        assert slow.wait(timeout=120) == 0
    finally:
        if slow.poll() is None:
            kill_group(slow)
    assert_complete(out, uninterrupted)


def test_surviving_run_takes_over_a_killed_siblings_rows(tmp_path: Path, many: Path, tiny_model, uninterrupted) -> None:
    out = new_job(tmp_path, "job", many, tiny_model)
    db = out / "manifest.sqlite"
    a = start_cli("run", "--output-dir", str(out), *RUN_ARGS, "--num-workers", "1", log=tmp_path / "a.log")
    b = start_cli("run", "--output-dir", str(out), *RUN_ARGS, "--num-workers", "1", log=tmp_path / "b.log")
    assert wait_until(lambda: done_count(db) >= 4, timeout=120, interval=0.05)
    kill_group(b)
    assert a.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()
    assert_complete(out, uninterrupted)  # nothing left 'running' under the dead sibling


def test_ctrl_c_stops_cleanly_and_gives_back_claims(tmp_path: Path, many: Path, tiny_model, uninterrupted) -> None:
    out = new_job(tmp_path, "job", many, tiny_model)
    db = out / "manifest.sqlite"
    proc = start_cli("run", "--output-dir", str(out), *RUN_ARGS, log=tmp_path / "run.log")
    assert wait_until(lambda: done_count(db) >= 2, timeout=120, interval=0.05)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches the whole group
    started = time.monotonic()
    assert proc.wait(timeout=30) == 130
    assert time.monotonic() - started < 10
    st = status_json(out)
    assert st["running"] == 0 and st["done"] < N_VIDEOS and st["done"] + st["pending"] == N_VIDEOS
    log = (tmp_path / "run.log").read_text()
    assert "run the same command again to resume" in log
    assert not list((out / "shards").glob("*.tmp"))
    cli("run", "--output-dir", str(out), *RUN_ARGS)
    assert_complete(out, uninterrupted)
