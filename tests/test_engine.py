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
    # As the runner does: batch i+1 launched before batch i's features are taken.
    first = enc.submit(batches[0], 4)
    second = enc.submit(batches[1], 4)
    got = [first.result()]
    third = enc.submit(batches[2], 4)  # reuses the first batch's staging buffer
    got += [second.result(), third.result()]
    for pending in (first, second, third):
        assert pending.ready()
    for g, want in zip(got, alone):
        assert np.allclose(g.videos, want.videos, atol=1e-6) and np.allclose(g.frames, want.frames, atol=1e-6)
    assert alone[0].videos.shape == (3, loaded.dim) and alone[0].frames.shape == (3, 4, loaded.dim)


def test_a_staging_buffer_is_not_overwritten_while_encoded(tiny_model: dict[str, str]) -> None:
    """Even a caller that launches three batches at once gets each batch's own features."""
    job = JobSettings(model=tiny_model["model"], pretrained=tiny_model["pretrained"], num_frames=4)
    loaded = load_model(job, torch.device("cpu"))
    enc = Encoder(loaded, torch.device("cpu"), cpu_threads=1)
    h, w = loaded.preprocess.geometry.crop
    rng = np.random.default_rng(1)
    batches = [[rng.integers(0, 256, (4 * 16, h, w, 3), dtype=np.uint8)] for _ in range(3)]
    alone = [enc.encode(b[0], 4).videos for b in batches]
    pending = [enc.submit(b, 4) for b in batches]
    for p, want in zip(pending, alone):
        assert np.allclose(p.result().videos, want, atol=1e-6)
