"""`make gpu-check` (bench/gpu_check.py) where no GPU is: its one line, and its device-agnostic
checks run for real on the CPU, so the script a GPU box runs is not dead code."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench import gpu_check
from bench.gpu_check import Context, JobRun, compare_features, guarded, parse_utilisation, same_job
from pipeline.samples import make_clips
from tests.conftest import ROOT


def test_without_a_gpu_it_says_so_in_one_line_and_fails() -> None:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "bench.gpu_check"], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [gpu_check.NO_GPU]


@pytest.fixture()
def ctx(tmp_path: Path, tiny_model: dict[str, str]) -> Context:
    return Context("cpu", tmp_path, tiny_model, 2)


def test_uneven_batches_each_equal_their_own_encode(ctx: Context) -> None:
    row = gpu_check.check_uneven_batches(ctx, sizes=(3, 9, 1, 5))
    assert row.passed, row
    assert row.figures["max_abs_diff"] <= 1e-3
    # ...and an overwritten buffer (another batch's features) would have been seen.
    assert row.figures["other_batch_min_diff"] > 1e-3


def test_device_against_cpu_on_real_crops(ctx: Context, tmp_path: Path) -> None:
    videos = sorted(make_clips(tmp_path / "v", 2, width=64, height=48, frames=9).glob("*.mp4"))
    row = gpu_check.check_cuda_vs_cpu(ctx, videos)
    assert row.passed, row
    assert row.figures["crops"] == 2 * gpu_check.N and row.figures["frames"]["cos_min"] > 0.9999


def test_feature_comparison_sees_a_wrong_row_and_a_nan() -> None:
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 32)).astype(np.float32)
    assert compare_features(a, a.copy())["cos_min"] == pytest.approx(1.0)
    b = a.copy()
    b[4] = rng.normal(size=32)
    assert compare_features(a, b)["cos_min"] < 0.9
    b = a.copy()
    b[1, 3] = np.nan
    assert compare_features(a, b)["finite"] is False
    assert compare_features(a, a[:5])["same_shape"] is False


def _run(done: int, failed: int, feats: dict[str, np.ndarray], code: int = 0) -> JobRun:
    return JobRun([], code, 1.0, 1.0, done, done, failed, feats, {}, "", "")


def test_end_to_end_comparison_needs_the_same_counts_videos_and_features() -> None:
    rng = np.random.default_rng(1)
    feats = {f"v{i}.mp4": rng.normal(size=16) for i in range(4)}
    ref = _run(4, 1, feats)
    assert same_job(ref, _run(4, 1, dict(feats)))["ok"]
    assert not same_job(ref, _run(3, 2, dict(list(feats.items())[:3])))["ok"]
    assert not same_job(ref, _run(4, 1, {**feats, "v0.mp4": rng.normal(size=16)}))["ok"]
    assert not same_job(ref, _run(4, 1, dict(feats), code=1))["ok"]


def test_end_to_end_row_needs_exactly_the_engines_devices() -> None:
    """`--gpu all` on two GPUs runs engines on cuda:0 and cuda:1: its row needs both, where
    every other row needs cuda:0 alone (the row once wanted every engine on cuda:0)."""
    feats = {"v0.mp4": np.ones(16)}
    ref = _run(1, 0, feats)

    def logged(*devices: str) -> JobRun:
        run = _run(1, 0, dict(feats))
        run.log = "\n".join(f"INFO pipeline.engine: run r{i} on {d}: job ..." for i, d in enumerate(devices))
        return run

    both = ["cuda:0", "cuda:1"]
    assert gpu_check.e2e_row("all", ref, [logged("cuda:1", "cuda:0")], both).passed
    assert not gpu_check.e2e_row("all", ref, [logged("cuda:0", "cuda:0")], both).passed
    assert not gpu_check.e2e_row("all", ref, [logged("cuda:0", "cuda:0", "cuda:1")], both).passed  # one engine each
    assert gpu_check.e2e_row("0,0", ref, [logged("cuda:0", "cuda:0")], ["cuda:0", "cuda:0"]).passed
    assert not gpu_check.e2e_row("0", ref, [logged("cuda:1")], ["cuda:0"]).passed


def test_nvdec_is_compared_in_a_process_of_its_own(tmp_path: Path, ctx: Context) -> None:
    """check_nvdec decodes through `as_a_worker` (a spawned process that has not touched
    CUDA), because NVDEC cannot share a primary context torch made: the function and its
    results must cross that process boundary. Without a GPU nvdec falls back to the CPU,
    so the frames are equal and none came from the GPU."""
    from pipeline.decoders import as_a_worker

    video = sorted(make_clips(tmp_path / "v", 1, width=64, height=48, frames=9).glob("*.mp4"))[0]
    cpu, gpu, formats, opened, fallbacks = as_a_worker(gpu_check.nvdec_against_cpu, str(video), ctx.geometry("ViT-B-32"))
    assert cpu.indices == gpu.indices and len(cpu.frames) == gpu_check.N
    assert np.array_equal(np.stack(cpu.frames), np.stack(gpu.frames))
    assert (opened, fallbacks) == (False, 0) and formats and all(f.startswith("yuv") for f in formats)


def test_nvidia_smi_output_is_read_in_both_forms() -> None:
    csv = "35, 12\n40, 20\n[N/A], 3\n"
    samples, error = parse_utilisation(csv, dmon=False)
    assert samples == [(35.0, 12.0), (40.0, 20.0)] and error == "[N/A], 3"
    dmon = "# gpu    sm   mem   enc   dec   jpg   ofa\n# Idx     %     %     %     %     %     %\n" \
           "    0    71    20     0    45     0     0\n    0    80    22     0    50     0     0\n"
    assert parse_utilisation(dmon, dmon=True) == ([(71.0, 45.0), (80.0, 50.0)], None)


@pytest.mark.slow  # makes the script's videos and models: ~15 s idle, more on a busy box
def test_one_failing_check_does_not_stop_the_others(tmp_path: Path) -> None:
    rows = guarded("boom", lambda: 1 / 0)
    assert [(r.name, r.passed, r.error) for r in rows] == [("boom", False, "ZeroDivisionError: division by zero")]
    out = tmp_path / "gpu-check.json"
    code = gpu_check.main(["--cpu", "--only", "uneven_batches,oom_halving,nvdec_h264", "--json", str(out)])
    report = json.loads(out.read_text())
    assert code == 0
    assert [r["name"] for r in report["rows"]] == ["uneven_batches", "oom_halving", "nvdec_h264"]
    assert [r["passed"] for r in report["rows"]] == [True, None, None]
