"""The feature definition computed the slow, obvious way, independently of pipeline/.

Full sequential decode with PyAV, every frame counted; targets round(linspace(0, n-1, N));
frames turned upright by their display matrix; open_clip's own preprocess on PIL
images; encode, L2-normalise, mean, L2-normalise.
"""

from __future__ import annotations

import av
import numpy as np
import torch
from PIL import Image


def _stream(c):
    return next(s for s in c.streams.video if not (s.disposition & av.stream.Disposition.attached_pic))


def count_frames(path: str) -> int:
    with av.open(path) as c:
        return sum(1 for _ in c.decode(_stream(c)))


def targets(n: int, k: int) -> list[int]:
    return [int(x) for x in np.round(np.linspace(0, n - 1, k))]


def _upright(rgb: np.ndarray, rotation: float) -> np.ndarray:
    # FFmpeg reports the angle counter-clockwise; the CLI turns -90 into "transpose=clock".
    turns = {0: 0, 90: 1, 180: 2, -180: 2, -90: 3, 270: 3}[int(round(rotation))]
    return np.rot90(rgb, turns).copy()


def reference_frames(path: str, k: int) -> tuple[list[np.ndarray], int]:
    n = count_frames(path)
    wanted = set(targets(n, k))
    kept: dict[int, np.ndarray] = {}
    with av.open(path) as c:
        for i, frame in enumerate(c.decode(_stream(c))):
            if i in wanted:
                kept[i] = _upright(frame.to_ndarray(format="rgb24"), frame.rotation)
    return [kept[i] for i in targets(n, k)], n


def load_open_clip(model_json: str, checkpoint: str):
    import open_clip
    from pathlib import Path

    open_clip.add_model_config(model_json)
    model, _, preprocess = open_clip.create_model_and_transforms(Path(model_json).stem, pretrained=checkpoint)
    return model.eval(), preprocess


@torch.no_grad()
def reference_feature(frames: list[np.ndarray], model, preprocess) -> tuple[np.ndarray, torch.Tensor]:
    x = torch.stack([preprocess(Image.fromarray(f)) for f in frames])
    f = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
    v = torch.nn.functional.normalize(f.mean(0), dim=-1)
    return v.numpy(), x
