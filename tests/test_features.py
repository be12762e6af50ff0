"""End to end: `extract` on the sample corpus, features against the independent definition."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.decoders import sample_frames
from pipeline.preprocess import from_open_clip
from pipeline.reader import load_features
from pipeline.samples import DEMO_SPECS
from tests.conftest import cli, model_args, status_json
from tests.reference import Agreement, assert_same_videos, definition_feature, load_open_clip, reference_feature, reference_video


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


@pytest.fixture(scope="module")
def definition(extracted: Path, tiny_model: dict[str, str], corpus: Path) -> dict:
    """Each readable corpus video by the definition, decoded once for every test here:
    its reference frames and crops, and the feature the job's resize setting defines."""
    model, preprocess = load_open_clip(tiny_model["model"], tiny_model["pretrained"])
    geometry = from_open_clip(preprocess).geometry
    resize = status_json(extracted)["settings"]["resize"]
    refs, want = {}, {}
    for spec in DEMO_SPECS:
        path = str(corpus / spec.name)
        refs[path] = reference_video(path, 8, geometry.swscale)
        want[path] = definition_feature(refs[path], resize, model, preprocess)
    return {"model": model, "preprocess": preprocess, "geometry": geometry, "refs": refs, "want": want}


def against_definition(features: np.ndarray, paths: list[str], definition: dict) -> Agreement:
    """Row i is the feature of the video at paths[i], and the job's readable videos are all there."""
    assert sorted(paths) == sorted(definition["want"]), paths
    want = np.stack([definition["want"][p] for p in paths])
    return assert_same_videos(features, want, [Path(p).name for p in paths])


def test_features_match_definition(extracted: Path, definition: dict) -> None:
    """features.npy row i against the model on the definition's crops of the video on line i
    (default swscale job: the job's swscale on the frames a full decode chose); and the crops
    the workers' decoder makes: PIL mode identical to open_clip's, swscale the same crops as
    the definition's and within a level or two of PIL."""
    feats = np.load(extracted / "features.npy")
    paths = (extracted / "video_paths.txt").read_text().splitlines()
    assert feats.dtype == np.float32 and feats.shape == (6, 512) and len(paths) == 6
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    agreement = against_definition(feats, paths, definition)
    model, preprocess, geometry = definition["model"], definition["preprocess"], definition["geometry"]
    std = torch.tensor(preprocess.transforms[-1].std).view(1, 3, 1, 1)
    mean = torch.tensor(preprocess.transforms[-1].mean).view(1, 3, 1, 1)
    for feat, path in zip(feats, paths):
        ref = definition["refs"][path]
        pil_feature, ref_pixels = reference_feature(ref.frames, model, preprocess)
        ref_u8 = ((ref_pixels * std + mean) * 255).numpy()
        ours = {resize: np.stack(sample_frames(path, 8, geometry.converter(resize)).frames) for resize in ("pil", "swscale")}
        diffs = {resize: np.abs(c.transpose(0, 3, 1, 2).astype(np.float64) - ref_u8) for resize, c in ours.items()}
        cos = float(feat @ pil_feature)
        print(f"{Path(path).name}: cosine to the PIL definition {cos:.6f}; crop diff pil mean {diffs['pil'].mean():.4f} "
              f"max {diffs['pil'].max():.4f}, swscale mean {diffs['swscale'].mean():.3f} max {diffs['swscale'].max():.1f}")
        assert diffs["pil"].max() < 0.01, path  # identical up to float rounding of the round trip
        assert np.array_equal(ours["swscale"], ref.crops), path  # the definition's frames, resized by the job
        assert diffs["swscale"].mean() < 2.0, path
        assert cos >= 0.999, path  # swscale against PIL: close, not equal
    print(f"against the definition's crops: {agreement}")


def test_per_frame_features_saved(extracted: Path) -> None:
    f = load_features(extracted, frames=True)
    assert f.frames is not None and f.frames.shape == (6, 8, 512)
    mean = f.frames.mean(axis=1)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    assert np.allclose(mean, f.features, atol=1e-5)
    assert list(extracted.glob("shards/*.frames.npy"))


def test_python_api_matches_definition(extracted: Path, definition: dict) -> None:
    f = load_features(extracted)
    assert len(f.ids) == len(set(f.ids)) == len(f.paths)
    against_definition(f.features, f.paths, definition)


def test_pickle_export(extracted: Path, definition: dict) -> None:
    """features.pkl row i is the feature of video_paths[i] (checked against the definition,
    not against load_features, which the export is built on), and agrees row by row with
    the npy export."""
    cli("export", "--output-dir", str(extracted), "--format", "pkl")
    with open(extracted / "features.pkl", "rb") as fh:
        data = pickle.load(fh)
    assert set(data) == {"features", "video_paths"}
    assert data["features"].dtype == np.float32
    against_definition(data["features"], data["video_paths"], definition)
    npy = np.load(extracted / "features.npy")
    lines = (extracted / "video_paths.txt").read_text().splitlines()
    for i, (path, line) in enumerate(zip(data["video_paths"], lines, strict=True)):
        assert path == line and np.array_equal(data["features"][i], npy[i]), (i, path, line)


def test_logs_and_settings_recorded(extracted: Path, tiny_model: dict[str, str]) -> None:
    logs = list((extracted / "logs").glob("run-*.log"))
    text = logs[0].read_text()
    assert "finished" in text and "batch 1: " in text and "videos/s" in text
    st = status_json(extracted)
    assert st["settings"]["model"] == tiny_model["model"]
    assert st["settings"]["num_frames"] == "8" and st["settings"]["save_frames"] == "true"
    assert st["settings"]["dim"] == "512"
