"""Stage 2b: the model's image preprocessing, split between decode worker and device.

The geometry (resize, crop) is read off open_clip's own transform for the model and
done in the decode worker, which hands small uint8 crops to the engine; the float
conversion and mean/std normalisation happen on the device in one batched op.

Two ways to resize, a job setting because they give slightly different pixels:
`swscale` (default) resizes the decoded YUV frame straight to the model's size in one
C call, converting to RGB on the way, so the 1080p RGB frame is never made; `pil` is
open_clip's own arithmetic (full-size RGB, then PIL), exact but ~8x slower per frame.
swscale runs with full chroma interpolation and accurate rounding, which brings it to
about one level of PIL on average; the benchmark reports the feature cosine between
the two (docs/performance.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import av
import numpy as np
from av.video.reformatter import Interpolation
from PIL import Image

from pipeline.decoders import quarter_turns, to_rgb, upright
from pipeline.errors import PipelineError
from pipeline.settings import RESIZE_MODES

_PIL_MODES = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}
_SWS_MODES = {
    "bicubic": Interpolation.BICUBIC, "bilinear": Interpolation.BILINEAR,
    "nearest": Interpolation.POINT, "lanczos": Interpolation.LANCZOS,
}
# Without these, swscale subsamples chroma coarsely on the way to RGB: mean 1.0 and up
# to 34 levels from PIL on real clips, against 0.1-0.9 mean with them (+0.5 ms a frame).
_SWS_FLAGS = Interpolation.FULL_CHR_H_INT | Interpolation.ACCURATE_RND


@dataclass(frozen=True)
class Geometry:
    """Resize then centre-crop, as torchvision's Resize(int) + CenterCrop do on PIL images."""

    size: int  # shortest side after resize ("shortest") or both sides ("squash")
    crop: tuple[int, int]  # (height, width)
    mode: str  # "shortest" | "squash"
    interpolation: str

    def to_text(self) -> str:
        """As the job records it (the `geometry` setting), so a later run can start its
        decode workers before it has loaded the model."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_text(cls, text: str) -> "Geometry | None":
        """A recorded geometry, or None when the record cannot be read (then the run
        loads the model first and records it again)."""
        try:
            d = json.loads(text)
            return cls(int(d["size"]), (int(d["crop"][0]), int(d["crop"][1])), str(d["mode"]), str(d["interpolation"]))
        except (ValueError, KeyError, TypeError, IndexError):
            return None

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, torchvision's arithmetic exactly."""
        if self.mode == "squash":
            return self.crop[1], self.crop[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def center_crop(self, img: np.ndarray) -> np.ndarray:
        """torchvision's CenterCrop on the resized image: zero padding where it is smaller."""
        h, w = img.shape[:2]
        ch, cw = self.crop
        if w < cw or h < ch:
            canvas = np.zeros((max(h, ch), max(w, cw), 3), dtype=np.uint8)
            top, left = (max(h, ch) - h) // 2, (max(w, cw) - w) // 2
            canvas[top : top + h, left : left + w] = img
            img, h, w = canvas, canvas.shape[0], canvas.shape[1]
        top = int(round((h - ch) / 2.0))
        left = int(round((w - cw) / 2.0))
        return np.ascontiguousarray(img[top : top + ch, left : left + cw])

    def pil(self, rgb: np.ndarray) -> np.ndarray:
        """open_clip's arithmetic exactly: the upright full-size RGB frame through PIL."""
        img = Image.fromarray(rgb)
        w, h = self.resized_size(img.width, img.height)
        if (w, h) != img.size:
            img = img.resize((w, h), _PIL_MODES[self.interpolation])
        return self.center_crop(np.asarray(img, dtype=np.uint8))

    def swscale(self, frame: av.VideoFrame) -> np.ndarray:
        """One swscale call from the decoded frame (any pixel format) to the resized RGB.

        The resize is worked out on the upright picture and done before turning it, so
        a rotated phone clip is resized along the right axes and turned when small.
        """
        turns = quarter_turns(frame.rotation)
        uw, uh = (frame.height, frame.width) if turns % 2 else (frame.width, frame.height)
        w, h = self.resized_size(uw, uh)
        if turns % 2:
            w, h = h, w
        flags = _SWS_MODES[self.interpolation] | _SWS_FLAGS
        # threads=1: the decode workers already use every core (PyAV's automatic
        # swscale threads made a 1080p conversion slower, not faster).
        rgb = frame.reformat(w, h, "rgb24", interpolation=flags, threads=1).to_ndarray()
        return self.center_crop(upright(rgb, frame.rotation))

    def converter(self, resize: str) -> Callable[[av.VideoFrame], np.ndarray]:
        """The decoded frame -> uint8 crop function for a job's `resize` setting."""
        if resize == "swscale":
            return self.swscale
        if resize == "pil":
            return lambda frame: self.pil(to_rgb(frame))
        raise PipelineError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {resize!r}")


@dataclass(frozen=True)
class Preprocess:
    geometry: Geometry
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


def from_open_clip(transform: Any) -> Preprocess:
    """Read geometry and normalisation off open_clip's eval transform (a Compose).

    Refuses transforms it cannot reproduce exactly, rather than guessing.
    """
    from torchvision import transforms as T

    steps = list(getattr(transform, "transforms", []))
    resize = next((s for s in steps if isinstance(s, T.Resize)), None)
    crop = next((s for s in steps if isinstance(s, T.CenterCrop)), None)
    norm = next((s for s in steps if isinstance(s, T.Normalize)), None)
    if resize is None or norm is None:
        raise PipelineError(f"unsupported preprocessing for this model: {transform}")
    interp = resize.interpolation.value
    if interp not in _PIL_MODES or getattr(resize, "max_size", None):
        raise PipelineError(f"unsupported resize in this model's preprocessing: {resize}")
    if isinstance(resize.size, int) or len(resize.size) == 1:
        size = resize.size if isinstance(resize.size, int) else resize.size[0]
        if crop is None:
            raise PipelineError(f"unsupported preprocessing (resize without crop): {transform}")
        geometry = Geometry(size, tuple(crop.size), "shortest", interp)
    else:
        geometry = Geometry(0, tuple(resize.size), "squash", interp)
        if crop is not None and tuple(crop.size) != tuple(resize.size):
            raise PipelineError(f"unsupported preprocessing (squash then crop): {transform}")
    return Preprocess(geometry, tuple(float(x) for x in norm.mean), tuple(float(x) for x in norm.std))
