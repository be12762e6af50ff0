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


def test_cuda_libraries_running_out_of_memory_count_as_out_of_memory() -> None:
    """cuBLAS failing to allocate its workspace is the same wall as torch's OOM: halve, don't die."""
    from pipeline.encoder import is_out_of_memory

    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    assert not is_out_of_memory(RuntimeError("CUDA error: an illegal memory access was encountered"))


def test_a_non_finite_feature_fails_its_video_with_a_reason(tmp_path, tiny_model) -> None:
    """Weights that give NaN (as an fp16 overflow would): every video fails with the reason,
    and no NaN is ever committed to a shard."""
    import json

    from pipeline.samples import make_clips
    from tests.conftest import cli

    state = torch.load(tiny_model["pretrained"], weights_only=True)
    state["visual.proj"] = torch.full_like(state["visual.proj"], float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(state, bad)
    videos = make_clips(tmp_path / "v", 3, width=32, height=32, frames=4)
    out = tmp_path / "out"
    cli("extract", "--video-dir", str(videos), "--output-dir", str(out), "--model", tiny_model["model"],
        "--pretrained", str(bad), "--gpu", "cpu", "--num-workers", "1")
    st = json.loads(cli("status", "--output-dir", str(out), "--json").stdout)
    assert (st["done"], st["failed"], st["pending"], st["running"]) == (0, 3, 0, 0)
    assert all(f["error"].startswith("non-finite feature") for f in st["failures"]), st["failures"]
    assert not list((out / "shards").glob("*.npy"))
