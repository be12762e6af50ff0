"""Out of memory in the encoder: the batch is halved, the new size kept, the run goes on.

On CPU the limit is real: RLIMIT_DATA caps the run's heap a little above what a run
with tiny batches needs, so the default-sized batch's tensors cannot be allocated and
PyTorch's allocator refuses, as CUDA's does on a GPU.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.reader import load_features
from pipeline.samples import make_clips
from tests.conftest import ROOT, cli, model_args, status_json

N = 300


def vm_data_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1])
    return 0


def run_measuring(args: list[str], limit: int | None = None, log: Path | None = None) -> tuple[int, int]:
    """Run the CLI, optionally under a data-size limit; return (exit code, peak VmData in bytes)."""

    def cap() -> None:
        if limit:
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))

    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), *args], stdout=out, stderr=subprocess.STDOUT,
                            preexec_fn=cap)
    peak = 0
    while proc.poll() is None:
        try:
            peak = max(peak, vm_data_kb(proc.pid) * 1024)
        except OSError:
            pass
        time.sleep(0.05)
    return proc.returncode, peak


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clips(tmp_path_factory.mktemp("v"), N, width=32, height=32, frames=4, vary=3)


def test_oom_halves_the_batch_and_finishes(tmp_path: Path, videos: Path, tiny_model) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    for out in (small, big):
        cli("scan", "--video-dir", str(videos), "--output-dir", str(out), *model_args(tiny_model))
    common = ["--gpu", "cpu", "--num-workers", "1", "--shard-size", "1024"]
    code, base = run_measuring(["run", "--output-dir", str(small), *common, "--batch-size", "8"])
    assert code == 0 and base > 0
    # 256 videos x 8 frames at 224x224 need ~1.2 GB of float input alone; 64 need ~0.3 GB.
    limit = base + 600 * 2**20
    log = tmp_path / "big.log"
    code, _ = run_measuring(["run", "--output-dir", str(big), *common, "--batch-size", "256"], limit, log)
    text = log.read_text()
    assert code == 0, text
    assert "out of memory on cpu: batch size now 128" in text
    assert "batch size now 64" in text or "batch size now 32" in text
    st = status_json(big)
    assert (st["done"], st["failed"], st["pending"]) == (N, 0, 0)
    a, b = load_features(small), load_features(big)
    assert a.paths == b.paths and np.allclose(a.features, b.features, atol=1e-5)
