"""The engine's device side: batches launched while the previous one finishes, same features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.encoder import Encoder
from pipeline.models import Model, load_model
from pipeline.settings import JobSettings


@pytest.fixture
def engine(tiny_model: dict[str, str]) -> tuple[Model, Encoder]:
    job = JobSettings(model=tiny_model["model"], pretrained=tiny_model["pretrained"], num_frames=4)
    loaded = load_model(job, torch.device("cpu"))
    return loaded, Encoder(loaded, torch.device("cpu"), cpu_threads=1)


def random_crops(loaded: Model, seed: int, sizes: tuple[int, ...]) -> list[list[np.ndarray]]:
    """Batches of videos' uint8 crops, 4 frames each; sizes: videos per array in a batch."""
    h, w = loaded.preprocess.geometry.crop
    rng = np.random.default_rng(seed)
    return [[rng.integers(0, 256, (4 * k, h, w, 3), dtype=np.uint8) for k in batch] for batch in sizes]


def test_overlapped_batches_equal_one_at_a_time(engine) -> None:
    loaded, enc = engine
    batches = random_crops(loaded, 0, ((1, 1, 1), (1, 1), (1, 1, 1)))
    alone = [enc.encode(np.concatenate(b), 4) for b in batches]
    # As the engine does: batch i+1 launched before batch i's features are taken.
    first = enc.submit(batches[0], 4)
    second = enc.submit(batches[1], 4)
    got = [first.result()]
    third = enc.submit(batches[2], 4)
    got += [second.result(), third.result()]
    for pending in (first, second, third):
        assert pending.ready()
    for g, want in zip(got, alone):
        assert np.allclose(g.videos, want.videos, atol=1e-6) and np.allclose(g.frames, want.frames, atol=1e-6)
    assert alone[0].videos.shape == (3, loaded.dim) and alone[0].frames.shape == (3, 4, loaded.dim)


def test_a_staged_batch_is_not_overwritten_while_encoded(engine) -> None:
    """Even a caller that launches three batches at once gets each batch's own features."""
    loaded, enc = engine
    batches = random_crops(loaded, 1, ((16,), (16,), (16,)))
    alone = [enc.encode(b[0], 4).videos for b in batches]
    pending = [enc.submit(b, 4) for b in batches]
    for p, want in zip(pending, alone):
        assert np.allclose(p.result().videos, want, atol=1e-6)
