"""Decoders: turn one video file and a sampler's choice into its frames (stage 2a).

A decoder reads the packet index, asks the sampler (`pipeline/samplers/`) which frames
it wants, and decodes only what those need; it hands each target frame, as the decoder
produced it, to `convert` (RGB by default; the workers pass the model's crop), turned
upright by its display matrix. What frames a feature has is the sampler's; a decoder
changes speed, never frames (the contract test holds every one to the definition,
pixel for pixel). docs/design/decode-plan.md explains the plan and its fallbacks.

Registered by name (the run setting `--decoder`); each implementation is a module here
and one line in DECODERS, imported only when used, so this package imports neither
PyAV nor torch and the settings can list the names.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipeline.registry import Registry
from pipeline.samplers import Sampler, get_sampler

if TYPE_CHECKING:
    import av
    import torch

DECODERS = Registry("decoder", {
    "cpu": "pipeline.decoders.pyav:PyAVDecoder",
    "nvdec": "pipeline.decoders.nvdec:NvdecDecoder",
})

Convert = Callable[["av.VideoFrame"], Any]


class DecodeError(Exception):
    """The file cannot give its frames; the message is the reason users will read."""


@dataclass(frozen=True)
class Sampled:
    frames: list[Any]  # one per target, in target order (repeats share an object)
    n: int  # frames in the stream
    indices: list[int]
    decoded: int = 0  # frames the decoder produced to get them (the cost)
    pixel_format: str | None = None  # the frames' format as decoded, before conversion (nvdec sets it; None: CPU)
    times: list[float | None] = field(default_factory=list)  # each target's presentation time, s (None: no pts)

    @property
    def decoded_on(self) -> str:
        """'gpu' or 'cpu': which decoder really made the frames (see decoded_on())."""
        return decoded_on(self.pixel_format)


# Pixel formats only a hardware decoder hands back: NVDEC's surfaces downloaded by PyAV
# (nv12 for 8-bit, p010le/p016le for 10/12-bit) or left on the device (cuda). FFmpeg's
# software H.264/HEVC/VP9/AV1 decoders give planar yuv* instead, so the format tells a
# GPU decode from hwaccel's silent software fallback (allow_software_fallback) without
# asking the decoder.
GPU_PIXEL_FORMATS = frozenset({"cuda", "nv12", "p010le", "p016le"})


def decoded_on(pixel_format: str | None) -> str:
    """'gpu' when frames of this pixel format came from the hardware decoder, else 'cpu'."""
    return "gpu" if pixel_format in GPU_PIXEL_FORMATS else "cpu"


def gpu_share_line(decoder: str, on_gpu: int, videos: int) -> tuple[int, str] | None:
    """The run's one line on where nvdec decoded: (logging level, message), or None for
    a CPU decoder or a run that decoded nothing. A run asked for the GPU that got none
    of it is a warning: everything still worked, but at CPU speed and on the CPU's cores."""
    import logging

    if decoder == "cpu" or videos == 0:
        return None
    if on_gpu == 0:
        return logging.WARNING, (
            f"--decoder {decoder}: none of the {videos} videos decoded on the GPU (all fell back to the CPU; "
            f"is the driver's video capability, libnvcuvid, in this container?)"
        )
    return logging.INFO, f"{decoder}: {on_gpu} of {videos} videos decoded on the GPU"


def quarter_turns(rotation: float | int | None) -> int:
    """A display-matrix rotation (degrees counter-clockwise, as FFmpeg reports it) in quarter turns."""
    return int(round((rotation or 0) / 90.0)) % 4


def upright(rgb: np.ndarray, rotation: float | int | None) -> np.ndarray:
    """Apply a display-matrix rotation."""
    quarter = quarter_turns(rotation)
    return np.ascontiguousarray(np.rot90(rgb, k=quarter)) if quarter else rgb


def seconds(pts: int | None, time_base: Any) -> float | None:
    """A presentation timestamp in seconds (pts x time_base); None where either is missing,
    so a stream without timestamps says so rather than inventing a time."""
    if pts is None or time_base is None:
        return None
    return float(pts * time_base)


# NVDEC hands its frames over semi-planar (nv12: the two chroma planes interleaved), the
# software decoder planar (yuv420p). swscale converts the two to RGB by different unscaled
# paths that round differently (up to 21 levels apart on the same picture), so a semi-planar
# frame is first repacked, losslessly, to the planar layout: the same frame gives the same
# RGB whichever decoder made it. (The resize-at-once `swscale` path agrees already; p010le
# agrees with yuv420p10le.)
PLANAR_OF = {"nv12": "yuv420p", "nv21": "yuv420p"}


def to_rgb(frame: "av.VideoFrame") -> np.ndarray:
    """The frame as upright full-size RGB (the default `convert`), equal for a frame from
    the GPU decoder and the same frame from the CPU one."""
    rotation = frame.rotation
    if planar := PLANAR_OF.get(frame.format.name):
        frame = frame.reformat(format=planar)
    return upright(frame.to_ndarray(format="rgb24"), rotation)


def as_a_worker(fn: Callable[..., Any], *args: Any) -> Any:
    """fn(*args) in a fresh spawned process that has not touched CUDA, as a decode worker
    is, for code that measures or checks decoding from a process where torch may have used
    the GPU (tune, gpu-check). FFmpeg shares the GPU's primary CUDA context with NVDEC
    only if it can set its flags, which it cannot once torch has made that context active
    ("Primary context already active with incompatible flags", PyAV #2339): decoded there,
    nvdec falls back to the CPU or to a context per file, which is not what a run gets."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


class Decoder(ABC):
    """Decodes the frames a sampler chooses. One per decode worker, built from the registry
    with the run's FFmpeg threads per worker and its GPU."""

    needs_gpu: ClassVar[bool] = False  # its real case runs only where CUDA is (@pytest.mark.gpu)

    def __init__(self, threads: int = 1, gpu_index: int = 0) -> None:
        self.threads = threads
        self.gpu_index = gpu_index

    @classmethod
    def check(cls, device: "torch.device") -> None:
        """Refuse, with one PipelineError line, a run on `device` this decoder cannot serve;
        called once by the run before any worker starts."""

    @abstractmethod
    def sample(self, path: str, sampler: Sampler, convert: Convert = to_rgb) -> Sampled:
        """The sampler's frames of one file, each through `convert`; DecodeError with the
        reason when the file cannot give them."""


def get_decoder(name: str) -> type[Decoder]:
    return DECODERS.load(name)


def sample_frames(
    path: str, num_frames: int, convert: Convert = to_rgb, sampling: str = "exact", decoder: str = "cpu", threads: int = 1
) -> Sampled:
    """One video's frames as a run gets them: sampler and decoder by their registry names."""
    return get_decoder(decoder)(threads).sample(path, get_sampler(sampling)(num_frames), convert)
