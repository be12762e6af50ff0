"""The decoder contract: every registered decoder, with every registered sampler, gives
the frames of the definition, pixel for pixel.

The definition is computed here without pipeline/ (tests/reference.py's full sequential
decode; for keyframes, the packet flags read with PyAV directly), on videos of several
codecs made with PyAV. A decoder that needs a GPU runs its real case only where CUDA is
(`@pytest.mark.gpu`: the one skip CI allows); its CPU fallback is tested on the CPU in
tests/test_frames.py. A new decoder or sampler is held to this by registering it.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.decoders import DECODERS, get_decoder
from pipeline.samplers import SAMPLERS, get_sampler
from pipeline.samples import make_video
from tests.conftest import ROOT
from tests.reference import frame_times, reference_frames, targets
from tests.test_frames import KEYFRAME_SPECS, SPECS, frame_number

N = 8
CLIPS = SPECS + [s for s in KEYFRAME_SPECS if s.name not in {t.name for t in SPECS}]


def _display_packets(path: str) -> tuple[list[bool], str]:
    """Each packet's keyframe flag in display (pts) order, and the container's name."""
    with av.open(path) as c:
        packets = [(p.pts, bool(p.is_keyframe)) for p in c.demux(video=0) if p.size]
        return [key for _, key in sorted(packets)], c.format.name


def exact_definition(path: str) -> tuple[list[int], list[np.ndarray]]:
    """round(linspace(0, n-1, N)) over the n frames a full decode gives."""
    frames, n = reference_frames(path, N)
    return targets(n, N), frames


def keyframes_definition(path: str) -> tuple[list[int], list[np.ndarray]]:
    """For each exact target, the keyframe nearest it in display order (ties to the earlier);
    in AVI, whose pts are decode-order counters that cannot name frames, the exact frames."""
    keys, container = _display_packets(path)
    if container == "avi":
        return exact_definition(path)
    key_at = [i for i, k in enumerate(keys) if k]
    chosen = [min(key_at, key=lambda d: (abs(d - t), d)) for t in targets(len(keys), N)]
    with av.open(path) as c:  # the synthetic clips carry no rotation
        full = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    return chosen, [full[i] for i in chosen]


DEFINITIONS: dict[str, Callable[[str], tuple[list[int], list[np.ndarray]]]] = {
    "exact": exact_definition,
    "keyframes": keyframes_definition,
}


def _decoder_params() -> list:
    return [pytest.param(name, marks=pytest.mark.gpu) if get_decoder(name).needs_gpu else name for name in DECODERS]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("contract")
    return {s.name: make_video(folder / s.name, s) for s in CLIPS}


def test_every_sampler_has_a_definition() -> None:
    assert set(DEFINITIONS) == set(SAMPLERS), "a registered sampler needs its definition in DEFINITIONS"


@pytest.mark.parametrize("sampling", list(SAMPLERS))
@pytest.mark.parametrize("decoder_name", _decoder_params())
def test_frames_are_the_definitions(clips: dict[str, Path], decoder_name: str, sampling: str) -> None:
    decoder = get_decoder(decoder_name)()
    if decoder.needs_gpu:  # its real case: decoding on the GPU, not the CPU fallback
        assert getattr(decoder, "hwaccel", None) is not None, f"{decoder_name} could not open the GPU"
    sampler = get_sampler(sampling)(N)
    for spec in CLIPS:
        path = str(clips[spec.name])
        want_indices, want = DEFINITIONS[sampling](path)
        got = decoder.sample(path, sampler)
        assert got.n == spec.frames, spec.name
        assert got.indices == want_indices, spec.name
        assert len(got.frames) == N, spec.name
        times = frame_times(path)  # each frame's own pts x time_base, from a full decode
        assert got.times == [times[i] for i in got.indices], spec.name
        for i, (a, b) in enumerate(zip(got.frames, want)):
            assert a.shape == b.shape == (spec.height, spec.width, 3), spec.name
            assert np.array_equal(a, b), f"{spec.name}: frame {i} (index {got.indices[i]}) is not the definition's"
        if spec.width >= 96:  # the pictures carry their own frame numbers
            assert [frame_number(f) for f in got.frames] == got.indices, spec.name
    if decoder.needs_gpu:
        assert getattr(decoder, "fallbacks", 0) == 0, f"{decoder_name} fell back to the CPU on some clips"


@pytest.mark.gpu
def test_nvdec_decodes_on_the_gpu_where_torch_used_it_first(clips: dict[str, Path]) -> None:
    """torch makes the GPU's primary CUDA context with flags FFmpeg cannot share, after which
    nvdec's primary_ctx open fails (PyAV #2339): it must then open a context of its own,
    not fall back to the CPU in silence (tune and gpu-check decode beside a loaded model)."""
    import torch

    torch.zeros(1, device="cuda:0")  # the primary context, made active by torch first
    decoder = get_decoder("nvdec")()
    assert getattr(decoder, "hwaccel", None) is not None, "nvdec could not open the GPU after torch"
    got = decoder.sample(str(clips[CLIPS[0].name]), get_sampler("exact")(N))
    assert got.decoded_on == "gpu", got.pixel_format


def test_keyframes_differ_from_exact_on_these_clips(clips: dict[str, Path]) -> None:
    """The clips can tell the two samplers apart, so each definition is really checked."""
    differ = [s.name for s in CLIPS if exact_definition(str(clips[s.name]))[0] != keyframes_definition(str(clips[s.name]))[0]]
    assert len(differ) >= 3, differ


def test_registries_import_neither_torch_nor_pyav() -> None:
    """Decode workers stay small and quick to start; the settings list the names without PyAV."""
    code = (
        "import sys; import pipeline.settings, pipeline.decoders, pipeline.samplers; "
        "print(sorted(m for m in ('torch', 'av') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
