"""The sampled frames themselves, pixel for pixel, against a full sequential decode.

A tiny random model barely tells pictures apart, so the frames are checked directly:
right indices, right pixels, right orientation.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.decoders import DecodeError, sample_frames
from pipeline.decoders.pyav import index_packets
from pipeline.samplers import PacketIndex, sample_indices
from pipeline.samplers.keyframes import nearest_keyframes
from pipeline.samples import Spec, frame_image, make_video
from tests.conftest import REALVIDEOS
from tests.reference import reference_frames

SPECS = [
    Spec("h264_bframes.mp4", frames=61, width=320, height=180, bframes=3, gop=25),
    Spec("h264_long_gop.mkv", frames=90, width=160, height=120, gop=250),
    Spec("vp9.webm", frames=33, width=192, height=108, codec="libvpx-vp9", options=(("deadline", "realtime"), ("cpu-used", "8"))),
    Spec("mpeg4.avi", frames=40, width=176, height=144, codec="mpeg4"),
    Spec("hevc.mp4", frames=26, width=128, height=96, codec="libx265", options=(("x265-params", "log-level=error"),)),
    Spec("mjpeg.avi", frames=12, width=96, height=64, codec="mjpeg", pix_fmt="yuvj420p"),
    Spec("odd_size.mp4", frames=17, width=97, height=61, pix_fmt="yuv444p"),
    Spec("two_frames.mp4", frames=2, width=64, height=48),
    Spec("one_frame.mp4", frames=1, width=64, height=48),
]


def frame_number(rgb: np.ndarray) -> int:
    """Read back the frame number samples.frame_image drew as bars along the top."""
    h, w = rgb.shape[:2]
    bar_w = max(1, w // 16)
    band = rgb[1 : max(2, h // 10) - 1]
    return sum(1 << bit for bit in range(8) if band[:, bit * bar_w + bar_w // 2].mean() > 127)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("frames")
    return {s.name: make_video(folder / s.name, s) for s in SPECS}


def test_indices_definition() -> None:
    assert sample_indices(100, 8) == [0, 14, 28, 42, 57, 71, 85, 99]
    assert sample_indices(3, 8) == [0, 0, 1, 1, 1, 1, 2, 2]  # short videos repeat frames
    assert sample_indices(1, 4) == [0, 0, 0, 0]
    assert len(sample_indices(8, 8)) == 8 and sample_indices(8, 8) == list(range(8))


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.name)
def test_frames_match_full_decode(videos: dict[str, Path], spec: Spec) -> None:
    path = str(videos[spec.name])
    got = sample_frames(path, 8)
    want, n = reference_frames(path, 8)
    assert got.n == n == spec.frames
    assert got.indices == sample_indices(spec.frames, 8)
    for i, (a, b) in enumerate(zip(got.frames, want)):
        assert a.shape == b.shape == (spec.height, spec.width, 3)
        assert np.array_equal(a, b), f"frame {i} differs from the full decode"
    if spec.bframes:  # non-reference B-frames that are not targets are never decoded
        assert got.decoded < spec.frames
    # Independent of any decoder: the pictures carry their own frame numbers.
    if spec.width >= 96:
        assert [frame_number(f) for f in got.frames] == got.indices


def test_rotation_matches_ffmpeg_cli(tmp_path: Path) -> None:
    """FFmpeg's own CLI autorotation is the reference for which way is up."""
    if not shutil.which("ffmpeg"):
        pytest.skip("ffmpeg CLI not installed (.ci/run installs it)")
    files = sorted(REALVIDEOS.glob("decord_video_*.mov")) if REALVIDEOS.is_dir() else []
    synthetic = make_video(tmp_path / "rot90.mov", Spec("rot90.mov", frames=5, width=160, height=96, rotation=90))
    files.append(synthetic)
    for path in files:
        ours = sample_frames(str(path), 1).frames[0]
        raw = subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-i", str(path), "-frames:v", "1", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
            capture_output=True, check=True,
        ).stdout
        assert len(raw) == ours.size, f"{path.name}: upright size differs from ffmpeg's"
        ref = np.frombuffer(raw, np.uint8).reshape(ours.shape)
        assert np.abs(ref.astype(int) - ours.astype(int)).mean() < 1.0, path.name
    # The synthetic one is portrait after rotation, and not merely transposed.
    up = sample_frames(str(synthetic), 1).frames[0]
    assert up.shape == (160, 96, 3)
    assert not np.array_equal(up, np.ascontiguousarray(np.transpose(frame_image(0, 160, 96), (1, 0, 2))))


def test_broken_files_raise_with_reason(corpus: Path) -> None:
    for name, words in (("empty.mp4", "cannot open"), ("not_a_video.mp4", "cannot open"), ("truncated.mp4", "cannot open")):
        with pytest.raises(DecodeError, match=words):
            sample_frames(str(corpus / "broken" / name), 8)
    with pytest.raises(DecodeError, match="not found"):
        sample_frames(str(corpus / "no_such_file.mp4"), 8)


def test_nearest_keyframes_definition() -> None:
    # Keyframes at display 0, 10, 20 (pts 0, 10, 20); decode order puts B-frames after refs.
    index = PacketIndex(pts=[0, 2, 1] + list(range(3, 30)), key=[i in (0, 10, 20) for i in [0, 2, 1] + list(range(3, 30))],
                        container="matroska,webm")
    assert nearest_keyframes(index, [0, 4, 5, 6, 14, 16, 29]) == [0, 0, 0, 10, 10, 20, 20]  # ties go earlier
    assert nearest_keyframes(PacketIndex([0, 1], [True, False], "avi"), [0, 1]) is None  # pts are not display order


KEYFRAME_SPECS = [
    Spec("h264_bframes.mp4", frames=61, width=320, height=180, bframes=3, gop=25),
    Spec("hevc_gop8.mp4", frames=40, width=128, height=96, codec="libx265", gop=8,
         options=(("x265-params", "log-level=error"),)),
    Spec("vp9_gop10.webm", frames=33, width=192, height=108, codec="libvpx-vp9", gop=10,
         options=(("deadline", "realtime"), ("cpu-used", "8"))),
]


@pytest.mark.parametrize("spec", KEYFRAME_SPECS, ids=lambda s: s.name)
def test_keyframe_sampling(tmp_path: Path, spec: Spec) -> None:
    """The approximate mode: the keyframe nearest each target, pixel-exact, and only those decoded."""
    path = str(make_video(tmp_path / spec.name, spec))
    got = sample_frames(path, 8, sampling="keyframes")
    index = index_packets(path)
    assert got.indices == nearest_keyframes(index, sample_indices(index.n, 8))
    rank = {p: i for i, p in enumerate(sorted(index.pts))}
    keys = {rank[p] for p, k in zip(index.pts, index.key) if k}
    assert set(got.indices) <= keys and len(set(got.indices)) > 1
    assert got.decoded == len(set(got.indices)), "decoded frames other than the chosen keyframes"
    with av.open(path) as c:
        full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    for i, frame in zip(got.indices, got.frames):
        assert np.array_equal(frame, full[i])
        assert frame_number(frame) == i


def test_keyframe_sampling_falls_back_to_exact_without_pts(videos: dict[str, Path]) -> None:
    path = str(videos["mpeg4.avi"])
    assert sample_frames(path, 8, sampling="keyframes").indices == sample_indices(40, 8)


@pytest.mark.parametrize("name", ["h264_bframes.mp4", "h264_long_gop.mkv", "hevc.mp4"])
def test_frames_decoded_equal_the_floor(videos: dict[str, Path], name: str) -> None:
    """The plan decodes exactly the reference pictures from each target's keyframe up to it,
    plus the targets: the floor, counted here from the NAL headers, not by the decoder."""
    from bench.throughput import floor_frames

    path = str(videos[name])
    floor = floor_frames(path)
    assert floor is not None and sample_frames(path, 8).decoded == floor


@pytest.mark.parametrize("name", ["h264_bframes.mp4", "mjpeg.avi", "rotated"])
@pytest.mark.parametrize("resize", ["pil", "swscale"])
def test_a_frame_in_nvdecs_layout_converts_as_the_cpu_decoders(videos: dict[str, Path], tmp_path: Path, name: str,
                                                               resize: str) -> None:
    """NVDEC hands frames over as nv12 (chroma interleaved), the CPU decoder as yuv420p or
    yuvj420p: the same picture must give the same crops whichever made it. swscale's
    direct nv12 -> RGB path rounds differently (up to 21 levels), which the `pil` resize
    (the setting of every job from before it existed) met through `to_rgb`. Made here
    without a GPU by PyAV's own lossless repack of the software frame, which keeps its
    properties (range, rotation) as NVDEC's transfer does."""
    from pipeline.preprocess import Geometry

    path = make_video(tmp_path / "rotated.mp4", Spec("rotated.mp4", frames=4, width=96, height=64, rotation=90)) \
        if name == "rotated" else videos[name]
    convert = Geometry(64, (64, 64), "shortest", "bicubic").converter(resize)
    with av.open(str(path)) as container:
        for frame in list(container.decode(video=0))[:4]:
            nv12 = frame.reformat(format="nv12")
            assert (nv12.color_range, nv12.rotation) == (frame.color_range, frame.rotation)
            assert np.array_equal(convert(nv12), convert(frame)), (frame.format.name, resize)


def test_gpu_decoder_failure_falls_back_to_the_cpu_per_video(videos: dict[str, Path]) -> None:
    """--decoder nvdec where the GPU cannot decode (here: no GPU at all): the worker's
    per-video fallback gives the CPU's frames, not a failed video."""
    import torch
    from av.codec.hwaccel import HWAccel

    from pipeline.decoders import get_decoder
    from pipeline.preprocess import Geometry
    from pipeline.samplers import get_sampler

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: nvdec would really decode")
    decoder = get_decoder("nvdec")()  # as a worker builds it
    assert decoder.hwaccel is None  # the worker-wide fallback
    path = str(videos["h264_bframes.mp4"])
    convert = Geometry(64, (64, 64), "shortest", "bicubic").converter("swscale")
    decoder.hwaccel = HWAccel("cuda", allow_software_fallback=True)  # a GPU that fails on every video
    got = decoder.sample(path, get_sampler("exact")(8), convert)
    want = sample_frames(path, 8, convert)
    assert decoder.fallbacks == 1
    assert got.indices == want.indices
    assert all(np.array_equal(a, b) for a, b in zip(got.frames, want.frames))
