"""The original guide's command lines, word for word, and its loading and validation snippets on what they write.

A guide user works in a project folder with `data/videos/`, runs `python extract_features.py
...` or `--config configs/clip_baseline.yaml`, and loads `features/features.npy`. Only the
tiny model is added (`--model/--pretrained`), and on a machine without a GPU `--gpu_id 0`
must be the same one-line error as `--gpu 0`, so the real run says `--gpu cpu` instead.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.samples import make_clips
from tests.conftest import ROOT, cli, model_args, status_json
from tests.test_cli import one_line_error

GUIDE_LINE = ("--video_dir ./data/videos --output_dir ./features --batch_size 64 --num_frames 8 "
              "--num_workers 4 --save_format npy --gpu_id 0").split()
GPU = torch.cuda.is_available()


def extract_features(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python extract_features.py ARGS` in the guide user's project folder."""
    proc = subprocess.run([sys.executable, str(ROOT / "extract_features.py"), *args], cwd=project, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    if check and proc.returncode != 0:
        raise AssertionError(f"extract_features.py {args} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("guide_project")
    make_clips(folder / "data" / "videos", 3)
    return folder


def _without_a_gpu(line: list[str]) -> list[str]:
    assert line[-2:] == ["--gpu_id", "0"]
    return line if GPU else [*line[:-2], "--gpu", "cpu"]


def guide_snippets(features_dir: str) -> tuple[np.ndarray, list[str]]:
    """The guide's loading and validation code, as it is written (paths relative to the project)."""
    features = np.load(f"{features_dir}/features.npy")
    with open(f"{features_dir}/video_paths.txt") as f:
        video_paths = [line.strip() for line in f]
    assert features.shape == (len(video_paths), 512), features.shape
    assert features.dtype == np.float32
    assert np.isfinite(features).all(), "NaN or Inf in the features"
    assert features.min() >= -1.0 and features.max() <= 1.0, (features.min(), features.max())
    return features, video_paths


@pytest.fixture(scope="module")
def guide_run(project: Path, tiny_model: dict[str, str]) -> subprocess.CompletedProcess:
    return extract_features(project, *_without_a_gpu(GUIDE_LINE), *model_args(tiny_model))


def test_gpu_id_that_is_not_there_is_the_gpu_error(project: Path, tiny_model: dict[str, str]) -> None:
    """Without a GPU, the guide's own line (--gpu_id 0) is the one-line error of --gpu 0, before
    anything is scanned; with GPUs, the same holds for the first index past the last one."""
    missing = torch.cuda.device_count() if GPU else 0
    have = f"only {missing} CUDA device(s)" if GPU else "no CUDA GPU is available"
    out = project / "nogpu"
    line = one_line_error(extract_features(project, *GUIDE_LINE[:-1], str(missing), *model_args(tiny_model),
                                           "--output_dir", str(out), check=False))
    assert line == f"error: --gpu {missing} asked for, but {have}"
    same = cli("extract", "--video-dir", str(project / "data" / "videos"), "--output-dir", str(out),
               "--gpu", str(missing), *model_args(tiny_model), check=False)
    assert one_line_error(same) == line
    assert not out.exists(), "refused before scanning: no job, no logs"


def test_guide_command_line(project: Path, guide_run: subprocess.CompletedProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project)
    features, video_paths = guide_snippets("features")
    assert len(video_paths) == 3
    assert sorted(Path(p).name for p in video_paths) == ["v00000.mp4", "v00001.mp4", "v00002.mp4"]
    assert all(Path(p).is_file() for p in video_paths)
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    st = status_json(project / "features")
    assert (st["done"], st["failed"], st["settings"]["num_frames"]) == (3, 0, "8")
    logs = sorted(p.name for p in (project / "features" / "logs").iterdir())
    assert any(n.startswith("scan-") for n in logs) and any(n.startswith("run-") for n in logs), logs
    run_log = next((project / "features" / "logs").glob("run-*.log")).read_text()
    assert re.search(r"run \S+ finished: 3 done, 0 failed", run_log), run_log[-2000:]


def test_guide_config_file(project: Path, guide_run: subprocess.CompletedProcess, tiny_model: dict[str, str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    """configs/clip_baseline.yaml as shipped (the guide's sections, device.gpu_id 0): read as the
    command line, which still wins. Without a GPU its gpu_id 0 is the one-line GPU error."""
    config = str(ROOT / "configs" / "clip_baseline.yaml")
    if not GPU:
        line = one_line_error(extract_features(project, "--config", config, *model_args(tiny_model),
                                               "--output_dir", "./refused", check=False))
        assert line == "error: --gpu 0 asked for, but no CUDA GPU is available"
        assert not (project / "refused").exists()
    # --gpu auto beats the file's gpu_id; on this machine it is the CPU (with one warning) or CUDA 0.
    proc = extract_features(project, "--config", config, *model_args(tiny_model), "--gpu", "auto",
                            "--output_dir", "./features_cfg")
    assert proc.stderr.count("no CUDA GPU found") == (0 if GPU else 1), proc.stderr
    monkeypatch.chdir(project)
    features, video_paths = guide_snippets("features_cfg")
    st = status_json(project / "features_cfg")
    assert (st["done"], st["settings"]["num_frames"], st["settings"]["model"]) == (3, "8", tiny_model["model"])
    # The same job definition as the guide's command line: the same features, video by video.
    ours = dict(zip(video_paths, features))
    first, first_paths = guide_snippets("features")
    for path, feat in zip(first_paths, first):
        assert np.allclose(ours[path], feat, atol=1e-6), path
