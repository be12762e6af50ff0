"""Several engines under one `run` (--gpu cpu,cpu exercises the same code as --gpu 0,1)."""

from __future__ import annotations

import json
import os
import signal
from collections import Counter
from pathlib import Path

import pytest

from pipeline.manifest import process_alive
from pipeline.samples import make_clips
from tests.conftest import Job, wait_until

N = 60
RUN = ["--gpu", "cpu,cpu", "--num-workers", "2", "--batch-size", "2", "--shard-size", "2"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clips(tmp_path_factory.mktemp("v"), N, frames=12)


def engine_pids(job: Job) -> list[int]:
    from sqlalchemy import create_engine, text

    engine = create_engine(job.url)
    with engine.connect() as c:
        pids = [r[0] for r in c.execute(text("SELECT pid FROM runs WHERE state='running'"))]
    engine.dispose()
    return pids


def start_engines(job: Job, tmp_path: Path):
    """`run --gpu cpu,cpu`, returned once both engines are up and committing."""
    parent = job.start("run", *RUN, log=tmp_path / "run.log")
    assert wait_until(lambda: len(engine_pids(job)) == 2 and job.done() >= 2, timeout=120, interval=0.05)
    return parent


def assert_all_once(job: Job) -> None:
    st = job.status()
    assert (st["done"], st["pending"], st["running"], st["failed"]) == (N, 0, 0, 0)
    ids: Counter = Counter()
    for side in (job.out / "shards").glob("*.json"):
        ids.update(v["id"] for v in json.loads(side.read_text())["videos"])
    assert len(ids) == N
    job.check_consistent()


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_two_engines_share_the_job_one_log(new_job, videos: Path) -> None:
    job = new_job(videos)
    job.cli("run", *RUN)
    assert_all_once(job)
    runs = job.status()["runs"]
    assert len(runs) == 2 and all(r["videos_done"] > 0 for r in runs), runs
    logs = list((job.out / "logs").glob("run-*.log"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert all(r["id"] in text for r in runs)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_killing_the_parent_stops_every_engine(new_job, videos: Path, tmp_path: Path) -> None:
    job = new_job(videos)
    parent = start_engines(job, tmp_path)
    pids = engine_pids(job)
    os.kill(parent.pid, signal.SIGKILL)  # the parent only: the engines must notice on their own
    parent.wait(timeout=10)
    assert wait_until(lambda: not any(process_alive(p, None) for p in pids), timeout=30), "engines outlived their parent"
    st = job.status()
    assert st["running"] == 0, "engines that stopped did not give back their claims"
    job.cli("run", *RUN)
    assert_all_once(job)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_killing_one_engine_leaves_the_other_to_finish(new_job, videos: Path, tmp_path: Path) -> None:
    job = new_job(videos)
    parent = start_engines(job, tmp_path)
    victim = engine_pids(job)[0]
    os.kill(victim, signal.SIGKILL)
    assert parent.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()
    assert "died" in (tmp_path / "run.log").read_text()
    assert_all_once(job)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_ctrl_c_stops_all_engines_cleanly(new_job, videos: Path, tmp_path: Path) -> None:
    job = new_job(videos)
    parent = start_engines(job, tmp_path)
    os.killpg(parent.pid, signal.SIGINT)
    assert parent.wait(timeout=30) == 130
    assert job.status()["running"] == 0
    job.cli("run", *RUN)
    assert_all_once(job)
