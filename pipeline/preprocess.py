"""Stage 2b: the model's image preprocessing, split between decode worker and device.

The geometry (resize, crop) is read off open_clip's own transform for the model and
done in the decode worker, which hands small uint8 crops to the engine; the float
conversion and mean/std normalisation happen on the device in one batched op. The
split changes no arithmetic: it is the same PIL resize and crop open_clip applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from pipeline.errors import PipelineError

_PIL_MODES = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST, "lanczos": Image.LANCZOS}


@dataclass(frozen=True)
class Geometry:
    """Resize then centre-crop, as torchvision's Resize(int) + CenterCrop do on PIL images."""

    size: int  # shortest side after resize ("shortest") or both sides ("squash")
    crop: tuple[int, int]  # (height, width)
    mode: str  # "shortest" | "squash"
    interpolation: str

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the resize step, torchvision's arithmetic exactly."""
        if self.mode == "squash":
            return self.crop[1], self.crop[0]
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = self.size, int(self.size * long / short)
        return (new_short, new_long) if width <= height else (new_long, new_short)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        img = Image.fromarray(rgb)
        w, h = self.resized_size(img.width, img.height)
        if (w, h) != img.size:
            img = img.resize((w, h), _PIL_MODES[self.interpolation])
        ch, cw = self.crop
        if w < cw or h < ch:  # torchvision pads with zeros, then crops
            canvas = Image.new("RGB", (max(w, cw), max(h, ch)))
            canvas.paste(img, ((max(w, cw) - w) // 2, (max(h, ch) - h) // 2))
            img, w, h = canvas, canvas.width, canvas.height
        top = int(round((h - ch) / 2.0))
        left = int(round((w - cw) / 2.0))
        return np.asarray(img.crop((left, top, left + cw, top + ch)), dtype=np.uint8)


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
