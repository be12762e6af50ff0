"""Every executor, in every shape it runs, finishes a job exactly once after a SIGKILL.

The promise an executor inherits from the manifest and must not break: killed at any
moment and rerun, every video ends done once, committed by one run, with the features
an uninterrupted run gives.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.executors import EXECUTORS
from pipeline.reader import load_features
from pipeline.samples import make_clips
from tests.conftest import cli, kill_group, model_args

N = 24
COMMON = ["--batch-size", "2", "--shard-size", "2", "--num-workers", "2"]
# Each executor with the device lists it must handle on this CPU-only machine.
SHAPES = {"local": [["--gpu", "cpu"], ["--gpu", "cpu,cpu"]], "ray": [["--ray-address", "local", "--gpu", "cpu"]]}
CASES = [(name, shape) for name, shapes in SHAPES.items() for shape in shapes]


def test_every_executor_is_held_to_the_contract() -> None:
    assert set(SHAPES) == set(EXECUTORS), "a registered executor has no contract case"


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clips(tmp_path_factory.mktemp("v"), N, frames=12, vary=5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, videos: Path, tiny_model):
    out = tmp_path_factory.mktemp("ref")
    cli("scan", "--video-dir", str(videos), "--output-dir", str(out), *model_args(tiny_model))
    cli("run", "--output-dir", str(out), "--gpu", "cpu", *COMMON)
    return load_features(out)


@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
@pytest.mark.parametrize("name, shape", CASES, ids=[f"{n}-{','.join(s)}" for n, s in CASES])
def test_executor_finishes_exactly_once_after_sigkill(new_job, videos: Path, reference, tmp_path: Path,
                                                       name: str, shape: list[str]) -> None:
    job = new_job(videos)
    args = ["--executor", name, *shape, *COMMON]
    proc = job.start("run", *args, log=tmp_path / "killed.log")
    deadline = time.monotonic() + 120
    while job.done() < 4 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert 0 < job.done() < N, f"the kill did not land mid-run ({job.done()} done)"
    kill_group(proc)
    job.cli("run", *args)
    st = job.status()
    assert (st["done"], st["pending"], st["running"], st["failed"]) == (N, 0, 0, 0)
    assert sum(r["videos_done"] for r in st["runs"]) == N, "a video was committed twice"
    got = load_features(job.out, job.db)
    assert got.paths == reference.paths
    assert np.allclose(got.features, reference.features, atol=1e-5)
    job.check_consistent()
