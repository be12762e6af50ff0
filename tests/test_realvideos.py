"""The pipeline over ../shared/realvideos: 40 real files from public repositories.

Every readable video must be done with its own feature: the model on the crops of the
frames the definition chooses (rotation included), at float tolerance; every broken file
must be failed with its reason.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from pipeline.decoders import sample_frames
from pipeline.preprocess import from_open_clip
from pipeline.reader import load_features
from tests.conftest import REALVIDEOS, cli, model_args, status_json
from tests.reference import assert_same_videos, definition_feature, load_open_clip, reference_feature, reference_video

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


@pytest.fixture(scope="module")
def definition(job: Path, tiny_model) -> dict[str, dict]:
    """Every done video by the definition, decoded once for the tests below: its frame
    count, a digest of each full-size target frame, the feature the job's resize setting
    defines (the model on the job's crops of the frames a full decode chose) and the
    PIL-path feature. Digests, not frames, so a 1080p clip's frames are not all held."""
    model, preprocess = load_open_clip(tiny_model["model"], tiny_model["pretrained"])
    swscale = from_open_clip(preprocess).geometry.swscale
    resize = status_json(job)["settings"]["resize"]
    out = {}
    for path in load_features(job).paths:
        ref = reference_video(path, 8, swscale)
        out[path] = {
            "n": ref.n,
            "digests": [_digest(f) for f in ref.frames],
            "feature": definition_feature(ref, resize, model, preprocess),
            "pil": reference_feature(ref.frames, model, preprocess)[0],
        }
    return out


def _digest(rgb: np.ndarray) -> tuple[tuple[int, ...], str]:
    return rgb.shape, hashlib.sha1(np.ascontiguousarray(rgb).tobytes()).hexdigest()


def test_every_readable_video_matches_the_definition(job: Path, definition: dict[str, dict]) -> None:
    """Each feature is the model on its own video's definition crops (float tolerance, and the
    nearest of all the job's references), and within 0.999 of open_clip's PIL path."""
    feats = load_features(job)
    assert sorted(feats.paths) == sorted(definition)
    want = np.stack([definition[p]["feature"] for p in feats.paths])
    agreement = assert_same_videos(feats.features, want, [Path(p).name for p in feats.paths])
    pil = min(float(np.dot(f, definition[p]["pil"])) for f, p in zip(feats.features, feats.paths))
    print(f"{len(feats.paths)} real videos against the definition's crops: {agreement}; worst to the PIL path {pil:.6f}")
    for feat, path in zip(feats.features, feats.paths):
        cos = float(np.dot(feat, definition[path]["pil"]))
        assert cos >= 0.999, f"{Path(path).name}: cosine to the PIL path {cos:.5f}"


def test_sampled_frames_pixel_exact_on_real_videos(job: Path, definition: dict[str, dict]) -> None:
    """The decode plan (seeks, skipped non-reference frames) against a full sequential decode."""
    saved = 0
    for path, ref in definition.items():
        got = sample_frames(path, 8)
        assert got.n == ref["n"], path
        for i, (frame, want) in enumerate(zip(got.frames, ref["digests"], strict=True)):
            assert _digest(frame) == want, f"{Path(path).name}: frame {i} differs from the full decode"
        saved += ref["n"] - got.decoded
    assert saved > 3000, "the plan decoded about as much as a full decode"
