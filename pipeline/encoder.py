"""Stage 3: uint8 frame crops in, L2-normalised video (and frame) features out.

The device does the float conversion and normalisation, so the host only moves
bytes; on CUDA the batch is copied from pinned memory and run under autocast.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.model import LoadedModel

log = logging.getLogger(__name__)


def resolve_device(gpu: str) -> torch.device:
    """`auto`: CUDA device 0 if there is one, else the CPU with a warning."""
    spec = str(gpu).strip().lower()
    if spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", 0)
        log.warning("no CUDA GPU found: running on the CPU, which is much slower")
        return torch.device("cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not spec.isdigit():
        raise PipelineError(f"--gpu must be auto, cpu, all, or GPU indices like 0,1; got {gpu!r}")
    index = int(spec)
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if index >= count:
        have = f"only {count} CUDA device(s)" if count else "no CUDA GPU is available"
        raise PipelineError(f"--gpu {index} asked for, but {have}")
    return torch.device("cuda", index)


@dataclass
class Encoded:
    videos: np.ndarray  # [B, D] float32, unit norm
    frames: np.ndarray  # [B, N, D] float32, unit norm


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA OOM, or the CPU allocator refusing (a real memory limit on CPU runs)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


class Encoder:
    def __init__(self, loaded: LoadedModel, device: torch.device, cpu_threads: int | None = None) -> None:
        self.model = loaded.model
        self.device = device
        pre = loaded.preprocess
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)
        self.cuda = device.type == "cuda"
        self.max_videos: int | None = None  # set when memory ran out: the batch that fits
        if not self.cuda:
            torch.set_num_threads(max(1, cpu_threads or (os.cpu_count() or 1)))

    def encode(self, crops: np.ndarray, per_video: int) -> Encoded:
        """Encode B videos' crops; on out-of-memory, halve the batch and go on at that size.

        The halved size is kept (max_videos) so the rest of the run does not hit the
        same wall batch after batch; the runner reads it and claims smaller batches.
        """
        total = crops.shape[0] // per_video
        size = min(total, self.max_videos or total)
        videos, frames = [], []
        start = 0
        while start < total:
            chunk = crops[start * per_video : (start + size) * per_video]
            try:
                out = self._forward(chunk, per_video)
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled
                if not is_out_of_memory(e):
                    raise
                if self.cuda:
                    torch.cuda.empty_cache()
                if size == 1:
                    raise PipelineError(f"out of memory encoding one video ({per_video} frames) on {self.device}") from None
                size //= 2
                self.max_videos = size
                log.warning("out of memory on %s: batch size now %d videos for the rest of the run", self.device, size)
                continue
            videos.append(out.videos)
            frames.append(out.frames)
            start += size
        return Encoded(np.concatenate(videos), np.concatenate(frames))

    @torch.inference_mode()
    def _forward(self, crops: np.ndarray, per_video: int) -> Encoded:
        """crops: uint8 [B*N, H, W, 3], N frames of each of B videos in order."""
        host = torch.from_numpy(crops)
        if self.cuda:
            host = host.pin_memory()
        x = host.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        x.div_(255.0).sub_(self.mean).div_(self.std)  # in place: one float copy of the batch, not three
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.cuda):
            f = self.model.encode_image(x)
        del x
        f = torch.nn.functional.normalize(f.float(), dim=-1)
        f = f.view(-1, per_video, f.shape[-1])
        v = torch.nn.functional.normalize(f.mean(dim=1), dim=-1)
        return Encoded(v.cpu().numpy().astype(np.float32), f.cpu().numpy().astype(np.float32))
