"""The feature definition computed the slow, obvious way, independently of pipeline/.

Full sequential decode with PyAV, every frame counted; targets round(linspace(0, n-1, N));
frames turned upright by their display matrix; open_clip's own preprocess on PIL
images; encode, L2-normalise, mean, L2-normalise.

A job's features are checked against the model applied to these frames at float
tolerance (`assert_same_videos`): the tiny random model scores two different videos
0.999+ against each other, so a loose cosine cannot tell a wrong frame from a right one.
With `--resize swscale` the reference crops are the job's converter applied to the
frames this full decode chose (the caller passes it in), so the frame choice still
never comes from the code under test.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import av
import numpy as np
import torch
from PIL import Image


def _stream(c):
    return next(s for s in c.streams.video if not (s.disposition & av.stream.Disposition.attached_pic))


def count_frames(path: str) -> int:
    with av.open(path) as c:
        return sum(1 for _ in c.decode(_stream(c)))


def frame_times(path: str) -> list[float | None]:
    """Every decoded frame's presentation time in seconds (pts x time_base), in output order:
    index i is the time of display frame i as count_frames counts them."""
    with av.open(path) as c:
        stream = _stream(c)
        return [None if f.pts is None else float(f.pts * (f.time_base or stream.time_base)) for f in c.decode(stream)]


def targets(n: int, k: int) -> list[int]:
    return [int(x) for x in np.round(np.linspace(0, n - 1, k))]


def _upright(rgb: np.ndarray, rotation: float) -> np.ndarray:
    # FFmpeg reports the angle counter-clockwise; the CLI turns -90 into "transpose=clock".
    turns = {0: 0, 90: 1, 180: 2, -180: 2, -90: 3, 270: 3}[int(round(rotation))]
    return np.rot90(rgb, turns).copy()


@dataclass
class Reference:
    """One video by the definition: its decoded frame count and its N target frames."""

    n: int
    frames: list[np.ndarray]  # upright RGB, full size, in target order
    crops: np.ndarray | None  # [N, H, W, 3] uint8: the caller's converter on the same decoded frames


def reference_video(path: str, k: int, convert: Callable[[av.VideoFrame], np.ndarray] | None = None) -> Reference:
    """Decode every frame; keep the targets as RGB and, if given, convert() of the same frames.

    convert sees each target av.VideoFrame as the full decode produced it (rotation side
    data included), so a job's own resize can be applied to frames it did not choose.
    """
    n = count_frames(path)
    wanted = set(targets(n, k))
    kept: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
    with av.open(path) as c:
        for i, frame in enumerate(c.decode(_stream(c))):
            if i in wanted:
                rgb = _upright(frame.to_ndarray(format="rgb24"), frame.rotation)
                kept[i] = (rgb, convert(frame) if convert else None)
    order = [kept[i] for i in targets(n, k)]
    crops = np.stack([c for _, c in order]) if convert else None
    return Reference(n, [rgb for rgb, _ in order], crops)


def reference_frames(path: str, k: int) -> tuple[list[np.ndarray], int]:
    ref = reference_video(path, k)
    return ref.frames, ref.n


def load_open_clip(model_json: str, checkpoint: str):
    import open_clip
    from pathlib import Path

    open_clip.add_model_config(model_json)
    model, _, preprocess = open_clip.create_model_and_transforms(Path(model_json).stem, pretrained=checkpoint)
    return model.eval(), preprocess


def _encode(pixels: torch.Tensor, model) -> np.ndarray:
    f = torch.nn.functional.normalize(model.encode_image(pixels), dim=-1)
    return torch.nn.functional.normalize(f.mean(0), dim=-1).numpy()


@torch.no_grad()
def reference_feature(frames: list[np.ndarray], model, preprocess) -> tuple[np.ndarray, torch.Tensor]:
    """open_clip's own preprocess on each RGB frame (PIL), then the model: the definition."""
    x = torch.stack([preprocess(Image.fromarray(f)) for f in frames])
    return _encode(x, model), x


@torch.no_grad()
def encode_crops(crops: np.ndarray, model, preprocess) -> np.ndarray:
    """The model on ready-made uint8 crops [N, H, W, 3], scaled and normalised as open_clip's
    ToTensor + Normalize do (the Normalize read off the preprocess transform)."""
    norm = preprocess.transforms[-1]
    mean = torch.tensor(norm.mean).view(1, 3, 1, 1)
    std = torch.tensor(norm.std).view(1, 3, 1, 1)
    x = (torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    return _encode(x, model)


def definition_feature(ref: Reference, resize: str, model, preprocess) -> np.ndarray:
    """The feature a job with this resize setting must produce for these frames:
    `pil` is open_clip's preprocess on the RGB frames; `swscale` the model on ref.crops."""
    if resize == "pil":
        return reference_feature(ref.frames, model, preprocess)[0]
    assert resize == "swscale" and ref.crops is not None, resize
    return encode_crops(ref.crops, model, preprocess)


ATOL = 1e-5  # float rounding of a different batch layout; a wrong frame is 1e-3 or more
COS_MIN = 0.99999


class Agreement(NamedTuple):
    worst_cosine: float  # of a row to its own reference
    worst_diff: float  # largest element difference of a row from its own reference
    margin: float  # smallest largest-difference between two different videos' references


def assert_same_videos(got: np.ndarray, want: np.ndarray, names: list[str]) -> Agreement:
    """Row i of got is the feature of the video whose reference is row i of want.

    Each row must equal its reference at float tolerance, and its nearest reference over
    all rows must be its own, so a feature that belongs to another video (or to shifted
    frames) fails. No two references may be equal at that tolerance, or the check could
    not see a swap (the same test pattern in two codecs still differs by 8e-4). Returns the
    figures, for the test to print.
    """
    assert got.shape == want.shape and len(names) == len(want), (got.shape, want.shape, len(names))
    sims = got.astype(np.float64) @ want.astype(np.float64).T
    own = np.diag(sims)
    bad = []
    for i, name in enumerate(names):
        nearest = int(np.argmax(sims[i]))
        close = np.allclose(got[i], want[i], atol=ATOL)
        if not close or own[i] < COS_MIN or nearest != i:
            diff = float(np.abs(got[i] - want[i]).max())
            bad.append(f"{name}: cosine {own[i]:.6f} to its reference (max diff {diff:.2e}), "
                       f"nearest {names[nearest]} ({sims[i, nearest]:.6f})")
    assert not bad, f"{len(bad)} of {len(names)} features are not their video's:\n" + "\n".join(bad)
    margin = float("inf")
    for i in range(len(want)):
        for j in range(i + 1, len(want)):
            diff = float(np.abs(want[i] - want[j]).max())
            assert diff > ATOL, f"{names[i]} and {names[j]} cannot be told apart (max diff {diff:.2e})"
            margin = min(margin, diff)
    return Agreement(float(own.min()), float(np.abs(got - want).max(initial=0.0)), margin)
