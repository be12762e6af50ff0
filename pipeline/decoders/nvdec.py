"""The nvdec decoder (`--decoder nvdec`): the same decode plan with PyAV's CUDA hwaccel.

H.264/HEVC decoding is bit-exact by specification, so this changes speed, not frames:
frames are downloaded from the GPU and converted as on the CPU. It never costs a
video: a worker whose GPU cannot be opened decodes on the CPU, and a file the GPU
decoder cannot handle (or any error on it) is decoded again on the CPU.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any, ClassVar

import av
from av.codec.hwaccel import HWAccel, hwdevices_available

from pipeline.decoders import Convert, Sampled, to_rgb
from pipeline.decoders.pyav import PyAVDecoder, decode
from pipeline.errors import PipelineError
from pipeline.samplers import Sampler

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)


def open_cuda(gpu_index: int) -> tuple[HWAccel | None, Any]:
    """PyAV's CUDA hwaccel for this worker, plus a device context held for its lifetime.

    Every open makes its own device context; with primary_ctx they all share the
    GPU's primary CUDA context, which the held one keeps alive, so an open costs
    microseconds instead of a context creation. Where the primary context cannot be
    shared (a process where torch used the GPU first), each open makes its own context,
    slower but still on the GPU, and says so. (None, None) where the GPU cannot be opened
    here at all: the worker then decodes on the CPU rather than failing every video.
    """
    error: Exception | None = None
    for options in ({"primary_ctx": "1"}, {}):
        try:
            hw = HWAccel("cuda", device=str(gpu_index), allow_software_fallback=True, options=options)
            held = hw.create(av.Codec("h264", "r"))
        except Exception as e:  # noqa: BLE001 - any failure means: not this way
            error = error or e
            continue
        if not options:  # e.g. torch made the primary context first, with flags FFmpeg cannot share (PyAV #2339)
            log.warning("nvdec: the GPU's primary CUDA context is not usable in this process (%s): "
                        "each video opens a CUDA context of its own, which is slower", error)
        return hw, held
    log.warning("nvdec unavailable in this decode worker (%s): decoding on the CPU", error)
    return None, None


class NvdecDecoder(PyAVDecoder):
    """PyAV with CUDA hwaccel on the run's GPU, falling back to the CPU per worker and per video."""

    needs_gpu: ClassVar[bool] = True

    def __init__(self, threads: int = 1, gpu_index: int = 0) -> None:
        super().__init__(threads, gpu_index)
        self.hwaccel, self._held = open_cuda(gpu_index)  # hwaccel None: this worker decodes on the CPU
        self.fallbacks = 0  # videos the GPU failed on and the CPU decoded

    @classmethod
    def check(cls, device: "torch.device") -> None:
        """nvdec decodes on the run's own GPU; without one it is a clear error, not a silent CPU run."""
        if device.type != "cuda":
            raise PipelineError(f"--decoder nvdec needs a CUDA GPU, but this run is on {device}; use --decoder cpu")
        if "cuda" not in hwdevices_available():
            raise PipelineError("--decoder nvdec: this PyAV's FFmpeg has no CUDA hwdevice; use --decoder cpu")

    def sample(self, path: str, sampler: Sampler, convert: Convert = to_rgb) -> Sampled:
        """On the GPU when it opened; any failure there is retried on the CPU, which decides
        whether the file is bad. The result carries the frames' pixel format as decoded, so
        a silent software fallback inside hwaccel (allow_software_fallback) is seen too."""
        formats: list[str] = []

        def noted(frame: "av.VideoFrame") -> Any:
            if not formats:
                formats.append(frame.format.name)
            return convert(frame)

        if self.hwaccel is not None:
            try:
                return dataclasses.replace(super().sample(path, sampler, noted), pixel_format=formats[0] if formats else None)
            except Exception as e:  # noqa: BLE001 - the CPU decides whether the file is bad
                log.info("nvdec could not decode %s (%s): decoding it on the CPU", path, e)
                self.fallbacks += 1
                formats.clear()
        sampled = decode(path, sampler, noted, self.threads, self.plan)
        return dataclasses.replace(sampled, pixel_format=formats[0] if formats else None)
