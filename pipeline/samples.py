"""Synthetic inputs for `make demo`, the tests and the benchmarks: videos and a tiny CLIP.

Every frame differs (a moving block over a drifting gradient, and the frame number
drawn as bars), so picking the wrong frame shows up pixel for pixel. The tiny CLIP is a
real open_clip architecture with random weights, saved as a config JSON plus a
checkpoint, so it loads through the same path as a user's offline checkpoint.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


@dataclass(frozen=True)
class Spec:
    name: str
    frames: int = 30
    width: int = 160
    height: int = 120
    codec: str = "libx264"
    pix_fmt: str = "yuv420p"
    fps: int = 25
    rotation: int = 0  # display-matrix rotation, degrees counter-clockwise
    options: tuple[tuple[str, str], ...] = ()
    gop: int | None = None
    bframes: int | None = None


def frame_image(i: int, width: int, height: int) -> np.ndarray:
    """Frame i's picture: distinct for every i, smooth enough for any codec."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = (x / max(width - 1, 1) * 200 + i * 7) % 256
    g = (y / max(height - 1, 1) * 200 + i * 3) % 256
    b = np.full_like(x, (i * 11) % 256)
    img = np.stack([r, g, b], axis=-1).astype(np.uint8)
    size = max(4, min(width, height) // 4)
    cx = int((i * 5) % max(width - size, 1))
    cy = int((i * 3) % max(height - size, 1))
    img[cy : cy + size, cx : cx + size] = (255, 255, 255) if i % 2 else (0, 0, 0)
    bar_w = max(1, width // 16)
    for bit in range(8):  # the frame number, as black/white bars along the top
        on = (i >> bit) & 1
        img[: max(2, height // 10), bit * bar_w : (bit + 1) * bar_w] = 255 if on else 0
    return img


def make_video(path: Path, spec: Spec, picture: Callable[[int, int, int], np.ndarray] = frame_image) -> Path:
    """Encode spec.frames pictures (frame i is picture(i, width, height)) with PyAV."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        stream = out.add_stream(spec.codec, rate=spec.fps)
        stream.width, stream.height, stream.pix_fmt = spec.width, spec.height, spec.pix_fmt
        stream.time_base = Fraction(1, spec.fps)
        opts = dict(spec.options)
        if spec.codec == "libx264":
            opts.setdefault("preset", "ultrafast" if spec.bframes is None else "veryfast")
        if spec.gop is not None:
            stream.codec_context.gop_size = spec.gop
        if spec.bframes is not None:
            stream.codec_context.max_b_frames = spec.bframes
        stream.options = opts
        if spec.rotation:
            stream.set_display_rotation(spec.rotation)
        for i in range(spec.frames):
            frame = av.VideoFrame.from_ndarray(picture(i, spec.width, spec.height), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def make_clips(folder: Path, n: int, width: int = 64, height: int = 48, frames: int = 10, vary: int = 5) -> Path:
    """n small H.264 clips v00000.mp4... whose lengths differ (frames + i % vary)."""
    for i in range(n):
        make_video(folder / f"v{i:05d}.mp4", Spec("clip.mp4", frames=frames + i % vary, width=width, height=height))
    return folder


# A small corpus that exercises the containers and codecs a collection really holds.
DEMO_SPECS = (
    Spec("clip_h264.mp4", frames=48, width=320, height=240, bframes=2, gop=12),
    Spec("clip_vp9.webm", frames=30, width=256, height=144, codec="libvpx-vp9", options=(("deadline", "realtime"), ("cpu-used", "8"))),
    Spec("clip_mpeg4.avi", frames=25, width=176, height=144, codec="mpeg4"),
    Spec("phone_rotated.mov", frames=20, width=240, height=160, rotation=90),
    Spec("short_3_frames.mkv", frames=3, width=128, height=96),
    Spec("nested/deeper/clip_hevc.mp4", frames=24, width=192, height=108, codec="libx265", options=(("preset", "ultrafast"), ("x265-params", "log-level=error"))),
)


def make_corpus(folder: Path, specs: tuple[Spec, ...] = DEMO_SPECS, broken: bool = True) -> list[Path]:
    """Write the sample videos (and, if asked, files that must fail) under folder."""
    paths = [make_video(folder / s.name, s) for s in specs]
    if broken:
        (folder / "broken").mkdir(parents=True, exist_ok=True)
        empty = folder / "broken" / "empty.mp4"
        empty.write_bytes(b"")
        text = folder / "broken" / "not_a_video.mp4"
        text.write_text("this is a text file, not a video\n")
        good = paths[0].read_bytes()
        truncated = folder / "broken" / "truncated.mp4"
        truncated.write_bytes(good[: len(good) // 3])
        paths += [empty, text, truncated]
    return paths


TINY_CLIP = {
    "embed_dim": 512,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "patch_size": 32, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 1},
}


def make_tiny_clip(folder: Path, seed: int = 1234) -> dict[str, str]:
    """Save a tiny random-weight CLIP; returns the --model and --pretrained values for it."""
    import open_clip
    import torch

    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model("tiny-clip")
    checkpoint = folder / "tiny-clip.pt"
    torch.save(model.state_dict(), checkpoint)
    return {"model": str(config), "pretrained": str(checkpoint)}
