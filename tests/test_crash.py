"""Crash safety with real processes, on SQLite and on PostgreSQL.

SIGKILL at random moments, runs side by side, a stalled run, a clean Ctrl-C: whatever
happens, rerunning finishes the job with every video exactly once and the same
features as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pipeline.reader import load_features
from pipeline.workers import orphan_segments
from pipeline.samples import make_clips
from tests.conftest import Job, cli, kill_group, model_args, wait_until

pytestmark = pytest.mark.slow  # crash loops: `make test` runs them, `make test-fast` does not

N_VIDEOS = 48
RUN_ARGS = ["--gpu", "cpu", "--batch-size", "2", "--shard-size", "2", "--num-workers", "2"]


@pytest.fixture(scope="module")
def many(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clips(tmp_path_factory.mktemp("many"), N_VIDEOS, frames=20, vary=7)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, many: Path, tiny_model: dict[str, str]):
    out = tmp_path_factory.mktemp("clean")
    cli("scan", "--video-dir", str(many), "--output-dir", str(out), *model_args(tiny_model))
    cli("run", "--output-dir", str(out), *RUN_ARGS)
    return load_features(out)


def sidecar_ids(job: Job) -> Counter:
    ids: Counter = Counter()
    for side in (job.out / "shards").glob("*.json"):
        ids.update(v["id"] for v in json.loads(side.read_text())["videos"])
    return ids


def assert_complete(job: Job, reference) -> None:
    st = job.status()
    assert (st["done"], st["pending"], st["running"], st["failed"]) == (N_VIDEOS, 0, 0, 0)
    got = load_features(job.out, job.db)
    assert len(got.paths) == len(set(got.paths)) == N_VIDEOS
    assert got.paths == reference.paths
    assert np.allclose(got.features, reference.features, atol=1e-5)
    job.check_consistent()


def test_sigkill_at_random_moments_then_rerun(tmp_path: Path, many: Path, new_job, uninterrupted) -> None:
    job = new_job(many)
    rng = random.Random(7)
    progress = []
    orphans = 0  # shared-memory segments of killed runs, seen after the kills
    for attempt in range(4):
        before = job.done()
        proc = job.start("run", *RUN_ARGS, log=tmp_path / f"run{attempt}.log")
        if attempt == 0:
            time.sleep(0.3)  # during start-up, before any claim
        else:
            # Mid-run: once it has committed something, after a random extra delay.
            wait_until(lambda b=before, p=proc: job.done() > b or p.poll() is not None, timeout=120, interval=0.05)
            time.sleep(rng.uniform(0.0, 0.15))
        kill_group(proc)
        progress.append(job.done())
        orphans += len(orphan_segments())
    mid_run = [d for d in progress if 0 < d < N_VIDEOS]
    assert len(mid_run) >= 2, f"kills did not land mid-run: {progress}"
    # The rerun must not wait for the dead runs' leases (300 s): their pids are gone.
    started = time.monotonic()
    job.cli("run", *RUN_ARGS)
    assert time.monotonic() - started < 120
    assert_complete(job, uninterrupted)
    assert orphans > 0 and orphan_segments() == [], "the rerun did not remove the killed runs' shared memory"
    states = {r["state"] for r in job.status()["runs"]}
    assert "crashed" in states and "finished" in states


def test_concurrent_runs_never_process_a_video_twice(tmp_path: Path, many: Path, new_job, uninterrupted) -> None:
    job = new_job(many)
    procs = [job.start("run", *RUN_ARGS, "--num-workers", "1", log=tmp_path / f"r{i}.log") for i in range(3)]
    for p in procs:
        assert p.wait(timeout=300) == 0
    assert_complete(job, uninterrupted)
    ids = sidecar_ids(job)
    assert len(ids) == N_VIDEOS and max(ids.values()) == 1, "a video was encoded by two runs"
    writers = {r["id"]: r["videos_done"] for r in job.status()["runs"]}
    print("videos per run:", writers)
    assert sum(writers.values()) == N_VIDEOS


def run_row(job: Job, pid: int, column: str):
    return job.query(f"SELECT {column} FROM runs WHERE pid = {pid} ORDER BY started_at DESC LIMIT 1")


def test_stalled_run_loses_its_claims_and_commits_nothing_stale(tmp_path: Path, many: Path, new_job, uninterrupted) -> None:
    """A run that is alive but silent (a frozen host) loses its claims when its lease runs
    out; another run does every video meanwhile; the stalled one, woken, commits nothing
    it no longer owns."""
    job = new_job(many)
    lease = 3.0
    slow = job.start("run", *RUN_ARGS, "--lease-seconds", str(lease), log=tmp_path / "slow.log")
    try:
        assert wait_until(lambda: job.done() > 0, timeout=120, interval=0.05)
        # Alive but silent: only its lease can free its rows. Frozen between transactions:
        # frozen inside one it would hold SQLite's single writer lock, and every writer
        # would wait for it (see docs/design/claim-protocol.md).
        for _ in range(100):
            slow.send_signal(signal.SIGSTOP)
            if job.writable():
                break
            slow.send_signal(signal.SIGCONT)
            time.sleep(0.05)
        else:
            raise AssertionError("could not freeze the run between transactions")
        slow_id = run_row(job, slow.pid, "id")
        slow_done = run_row(job, slow.pid, "videos_done")
        held = job.query(f"SELECT count(*) FROM videos WHERE owner = '{slow_id}' AND status = 'running'")
        # Wait until the manifest itself says the lease is over (heartbeat and row leases).
        expiry = max(run_row(job, slow.pid, "heartbeat_at") + lease,
                     job.query(f"SELECT max(lease_until) FROM videos WHERE owner = '{slow_id}'") or 0.0)
        assert wait_until(lambda: time.time() > expiry + 0.2, timeout=60)
        job.cli("run", *RUN_ARGS, "--lease-seconds", str(lease))
        # Still frozen: the second run must have done every video, its rows included.
        st = job.status()
        assert held > 0, "the stalled run held no claims: nothing was tested"
        assert (st["done"], st["running"], st["pending"]) == (N_VIDEOS, 0, 0), st
        others = {r["id"]: r["videos_done"] for r in st["runs"] if r["id"] != slow_id}
        assert sum(others.values()) == N_VIDEOS - slow_done, (others, slow_done)
        slow.send_signal(signal.SIGCONT)
        assert slow.wait(timeout=120) == 0
    finally:
        if slow.poll() is None:
            kill_group(slow)
    assert_complete(job, uninterrupted)
    done_by_run = {r["id"]: r["videos_done"] for r in job.status()["runs"]}
    assert sum(done_by_run.values()) == N_VIDEOS, done_by_run
    assert done_by_run[slow_id] == slow_done, "the woken run committed rows it no longer owned"
    assert job.query(f"SELECT count(*) FROM videos WHERE shard LIKE '{slow_id}-%'") == slow_done


def test_slurm_like_preemptions_fail_no_video(tmp_path: Path, many: Path, new_job, uninterrupted) -> None:
    """Three group SIGTERMs (scancel, preemption, requeue: Slurm signals every process of the
    step, decode workers included) and reruns with --max-attempts 1: a clean stop charges no
    video, so the job ends with every video done and none failed."""
    job = new_job(many)
    one_attempt = ["--max-attempts", "1"]
    variants = [RUN_ARGS, [*RUN_ARGS[2:], "--gpu", "cpu,cpu"], RUN_ARGS]  # --gpu all on a GPU node
    for i, args in enumerate(variants):
        before = job.done()
        proc = job.start("run", *args, *one_attempt, log=tmp_path / f"preempted{i}.log")
        assert wait_until(lambda b=before, p=proc: job.done() > b or p.poll() is not None, timeout=120, interval=0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 130, (tmp_path / f"preempted{i}.log").read_text()
        charged = job.query("SELECT count(*) FROM videos WHERE attempts > 0 OR error IS NOT NULL OR status = 'failed'")
        assert charged == 0, f"preemption {i} charged {charged} videos"
        assert job.query("SELECT count(*) FROM videos WHERE status = 'running'") == 0
    assert job.done() < N_VIDEOS, "the preemptions came too late to test anything"
    job.cli("run", *RUN_ARGS, *one_attempt)
    assert_complete(job, uninterrupted)


def test_surviving_run_takes_over_a_killed_siblings_rows(tmp_path: Path, many: Path, new_job, uninterrupted) -> None:
    job = new_job(many)
    a = job.start("run", *RUN_ARGS, "--num-workers", "1", log=tmp_path / "a.log")
    b = job.start("run", *RUN_ARGS, "--num-workers", "1", log=tmp_path / "b.log")
    assert wait_until(lambda: job.done() >= 4, timeout=120, interval=0.05)
    kill_group(b)
    assert a.wait(timeout=300) == 0, (tmp_path / "a.log").read_text()
    assert_complete(job, uninterrupted)  # nothing left 'running' under the dead sibling


def test_ctrl_c_stops_cleanly_and_gives_back_claims(tmp_path: Path, many: Path, new_job, uninterrupted) -> None:
    job = new_job(many)
    proc = job.start("run", *RUN_ARGS, log=tmp_path / "run.log")
    assert wait_until(lambda: job.done() >= 2, timeout=120, interval=0.05)
    os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C reaches the whole group
    started = time.monotonic()
    assert proc.wait(timeout=30) == 130
    assert time.monotonic() - started < 10
    st = job.status()
    assert st["running"] == 0 and st["done"] < N_VIDEOS and st["done"] + st["pending"] == N_VIDEOS
    assert "run the same command again to resume" in (tmp_path / "run.log").read_text()
    assert not list((job.out / "shards").glob("*.tmp"))
    job.cli("run", *RUN_ARGS)
    assert_complete(job, uninterrupted)
