"""End to end: `extract` on the sample corpus, features against the independent definition."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.decoder import sample_frames
from pipeline.preprocess import from_open_clip
from pipeline.reader import load_features
from tests.conftest import cli, model_args, status_json
from tests.reference import load_open_clip, reference_feature, reference_frames


@pytest.fixture(scope="module")
def extracted(tmp_path_factory: pytest.TempPathFactory, corpus: Path, tiny_model: dict[str, str]) -> Path:
    out = tmp_path_factory.mktemp("job")
    config = out / "run.yaml"
    config.write_text("log_every: 1\n")  # the guide's progress line, here after every batch
    cli("extract", "--video_dir", str(corpus), "--output_dir", str(out), *model_args(tiny_model),
        "--batch_size", "3", "--num_workers", "2", "--gpu", "cpu", "--save-frames", "--config", str(config))
    return out


def test_every_video_done_or_failed_with_reason(extracted: Path) -> None:
    st = status_json(extracted)
    assert st["total"] == 9 and st["done"] == 6 and st["failed"] == 3
    assert st["pending"] == st["running"] == 0
    reasons = {Path(f["path"]).name: f["error"] for f in st["failures"]}
    assert set(reasons) == {"empty.mp4", "not_a_video.mp4", "truncated.mp4"}
    assert all("cannot open" in r for r in reasons.values())


def test_features_match_definition(extracted: Path, tiny_model: dict[str, str]) -> None:
    """Default run (swscale resize) against open_clip's PIL path: cosine >= 0.999 per video,
    and the crops the model is fed: PIL-mode crops identical, swscale within a level or two."""
    feats = np.load(extracted / "features.npy")
    paths = (extracted / "video_paths.txt").read_text().splitlines()
    assert feats.dtype == np.float32 and feats.shape == (6, 512) and len(paths) == 6
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    model, preprocess = load_open_clip(tiny_model["model"], tiny_model["pretrained"])
    geometry = from_open_clip(preprocess).geometry
    std = torch.tensor(preprocess.transforms[-1].std).view(1, 3, 1, 1)
    mean = torch.tensor(preprocess.transforms[-1].mean).view(1, 3, 1, 1)
    for feat, path in zip(feats, paths):
        frames, _n = reference_frames(path, 8)
        want, ref_pixels = reference_feature(frames, model, preprocess)
        ref_u8 = ((ref_pixels * std + mean) * 255).numpy()
        cos = float(feat @ want)
        diffs = {}
        for resize in ("pil", "swscale"):
            ours = np.stack(sample_frames(path, 8, geometry.converter(resize)).frames)
            diffs[resize] = np.abs(ours.transpose(0, 3, 1, 2).astype(np.float64) - ref_u8)
        print(f"{Path(path).name}: cosine {cos:.6f}; crop diff pil mean {diffs['pil'].mean():.4f} max "
              f"{diffs['pil'].max():.4f}, swscale mean {diffs['swscale'].mean():.3f} max {diffs['swscale'].max():.1f}")
        assert cos >= 0.999, path
        assert diffs["pil"].max() < 0.01, path  # identical up to float rounding of the round trip
        assert diffs["swscale"].mean() < 2.0, path


def test_per_frame_features_saved(extracted: Path) -> None:
    f = load_features(extracted, frames=True)
    assert f.frames is not None and f.frames.shape == (6, 8, 512)
    mean = f.frames.mean(axis=1)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    assert np.allclose(mean, f.features, atol=1e-5)
    assert list(extracted.glob("shards/*.frames.npy"))


def test_python_api_equals_export(extracted: Path) -> None:
    f = load_features(extracted)
    assert np.array_equal(f.features, np.load(extracted / "features.npy"))
    assert f.paths == (extracted / "video_paths.txt").read_text().splitlines()


def test_pickle_export(extracted: Path) -> None:
    cli("export", "--output-dir", str(extracted), "--format", "pkl")
    with open(extracted / "features.pkl", "rb") as fh:
        data = pickle.load(fh)
    assert set(data) == {"features", "video_paths"}
    assert np.array_equal(data["features"], np.load(extracted / "features.npy"))
    assert data["video_paths"] == (extracted / "video_paths.txt").read_text().splitlines()


def test_logs_and_settings_recorded(extracted: Path, tiny_model: dict[str, str]) -> None:
    logs = list((extracted / "logs").glob("run-*.log"))
    text = logs[0].read_text()
    assert "finished" in text and "batch 1: " in text and "videos/s" in text
    st = status_json(extracted)
    assert st["settings"]["model"] == tiny_model["model"]
    assert st["settings"]["num_frames"] == "8" and st["settings"]["save_frames"] == "true"
    assert st["settings"]["dim"] == "512"
