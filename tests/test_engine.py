"""The engine's device side: batches launched while the previous one finishes, same features."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.encoder import Encoder
from pipeline.model import load_model
from pipeline.settings import JobSettings


def test_overlapped_batches_equal_one_at_a_time(tiny_model: dict[str, str]) -> None:
    job = JobSettings(model=tiny_model["model"], pretrained=tiny_model["pretrained"], num_frames=4)
    loaded = load_model(job, torch.device("cpu"))
    enc = Encoder(loaded, torch.device("cpu"), cpu_threads=1)
    h, w = loaded.preprocess.geometry.crop
    rng = np.random.default_rng(0)
    batches = [[rng.integers(0, 256, (4, h, w, 3), dtype=np.uint8) for _ in range(k)] for k in (3, 2, 3)]
    alone = [enc.encode(np.concatenate(b), 4) for b in batches]
    # Two batches in flight on the two staging buffers, then a third reusing the first buffer.
    first = enc.submit(batches[0], 4)
    second = enc.submit(batches[1], 4)
    third = enc.submit(batches[2], 4)
    for pending, want in zip((first, second, third), alone):
        assert pending.ready()
        got = pending.result()
        assert np.allclose(got.videos, want.videos, atol=1e-6) and np.allclose(got.frames, want.frames, atol=1e-6)
    assert alone[0].videos.shape == (3, loaded.dim) and alone[0].frames.shape == (3, 4, loaded.dim)
