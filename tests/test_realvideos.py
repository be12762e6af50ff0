"""The pipeline over ../shared/realvideos: 40 real files from public repositories.

Every readable video must be done with a feature matching the definition (rotation
included); every broken file must be failed with its reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.decoder import sample_frames
from pipeline.reader import load_features
from tests.conftest import REALVIDEOS, cli, model_args, status_json
from tests.reference import load_open_clip, reference_feature, reference_frames

pytestmark = pytest.mark.skipif(not REALVIDEOS.is_dir(), reason=f"{REALVIDEOS} is absent")

# file -> words its failure reason must contain
BROKEN = {
    "fs_invalid__empty.mp4": "cannot open",
    "fs_invalid__h264_aac_missing_data.mp4": "cannot open",
    "decord_corrupted.mp4": "decode failed after 28 frames",
    "fs_invalid__h265_aac_invalid_data.mp4": "only 6 of 30",
    "fs_valid__aac.m4a": "no video stream",
    "moviepy_with-attached-pic.mp3": "attached picture",
}
EXTENSIONS = "mp4,mov,mkv,webm,avi,flv,wmv,mpg,ts,dv,gif,m4a,mp3"


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> Path:
    out = tmp_path_factory.mktemp("real")
    cli("extract", "--video-dir", str(REALVIDEOS), "--output-dir", str(out), *model_args(tiny_model),
        "--extensions", EXTENSIONS, "--gpu", "cpu", "--batch-size", "4", timeout=600)
    return out


def test_broken_files_failed_with_reason(job: Path) -> None:
    st = status_json(job)
    files = {p.name for p in REALVIDEOS.iterdir() if p.suffix.lstrip(".") in EXTENSIONS.split(",")}
    assert st["total"] == len(files) and st["pending"] == st["running"] == 0
    reasons = {Path(f["path"]).name: f["error"] for f in st["failures"]}
    assert set(reasons) == set(BROKEN)
    for name, words in BROKEN.items():
        assert words in reasons[name], (name, reasons[name])
    assert st["done"] == len(files) - len(BROKEN)


def test_every_readable_video_matches_the_definition(job: Path, tiny_model) -> None:
    feats = load_features(job)
    model, preprocess = load_open_clip(tiny_model["model"], tiny_model["pretrained"])
    worst = 1.0
    for feat, path in zip(feats.features, feats.paths):
        frames, n = reference_frames(path, 8)
        want, _ = reference_feature(frames, model, preprocess)
        cos = float(np.dot(feat, want))
        worst = min(worst, cos)
        assert cos >= 0.999, f"{Path(path).name}: cosine {cos:.5f}"
    print(f"{len(feats.paths)} real videos, worst cosine to the definition {worst:.6f}")


def test_sampled_frames_pixel_exact_on_real_videos(job: Path) -> None:
    """The decode plan (seeks, skipped non-reference frames) against a full sequential decode."""
    saved = 0
    for path in load_features(job).paths:
        got = sample_frames(path, 8)
        want, n = reference_frames(path, 8)
        assert got.n == n, path
        for i, (a, b) in enumerate(zip(got.frames, want)):
            assert np.array_equal(a, b), f"{Path(path).name}: frame {i} differs from the full decode"
        saved += n - got.decoded
    assert saved > 3000, "the plan decoded about as much as a full decode"
