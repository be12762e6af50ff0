"""Stage 3: uint8 frame crops in, L2-normalised video (and frame) features out.

The device does the float conversion and normalisation, so the host only moves
bytes; on CUDA the batch is copied from pinned memory and run under autocast.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass

import numpy as np
import torch

from pipeline.errors import PipelineError
from pipeline.models import Model

log = logging.getLogger(__name__)


@dataclass
class Encoded:
    videos: np.ndarray  # [B, D] float32, unit norm
    frames: np.ndarray  # [B, N, D] float32, unit norm


OUT_OF_MEMORY_WORDS = (
    "out of memory", "can't allocate memory",
    "cublas_status_alloc_failed", "cudnn_status_alloc_failed", "cufft_alloc_failed",  # CUDA libraries' own words
)


def is_out_of_memory(e: BaseException) -> bool:
    """CUDA OOM (torch's, or a CUDA library failing to allocate its workspace), or the CPU
    allocator refusing (a real memory limit on CPU runs)."""
    if isinstance(e, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(e).lower()
    return isinstance(e, RuntimeError) and any(words in text for words in OUT_OF_MEMORY_WORDS)


class InFlight:
    """A batch whose forward pass has been launched; `result()` waits for its features.

    On CUDA the work is queued on the device (`done` is its event); on the CPU it runs
    in the encoder's thread (a future), so the run loop keeps feeding decoders meanwhile.
    """

    def __init__(self, parts: "Future[list[tuple[torch.Tensor, torch.Tensor]]] | list[tuple[torch.Tensor, torch.Tensor]]",
                 done: "torch.cuda.Event | None" = None) -> None:
        self._parts = parts
        self._done = done

    def ready(self) -> bool:
        """True when result() will not wait."""
        if isinstance(self._parts, Future):
            return self._parts.done()
        return self._done is None or self._done.query()

    def result(self) -> Encoded:
        if self._done is not None:
            self._done.synchronize()  # a blocking event: the host sleeps, it does not spin a core
        parts = self._parts.result() if isinstance(self._parts, Future) else self._parts
        videos = np.concatenate([v.cpu().numpy() for v, _ in parts]).astype(np.float32, copy=False)
        frames = np.concatenate([f.cpu().numpy() for _, f in parts]).astype(np.float32, copy=False)
        return Encoded(videos, frames)


class Encoder:
    """Runs the model on uint8 crops, one batch in flight while the host prepares the next.

    On CUDA a batch is staged in one of two pinned host buffers and copied to the
    device on a side stream, so the copy of batch i+1 overlaps the compute of batch i;
    the compute waits only for its own copy. On the CPU the forward pass runs in one
    background thread (torch releases the GIL), so the run loop keeps decoders fed
    while it runs. Either way `submit` returns once the batch is launched and `result`
    blocks.
    """

    def __init__(self, model: Model, device: torch.device, cpu_threads: int | None = None) -> None:
        self.model = model
        self.device = device
        self.cuda = device.type == "cuda"
        if self.cuda:
            # The engine's device is the current one: otherwise leaving a stream context
            # switches to GPU 0 and gives it a stray CUDA context per engine.
            torch.cuda.set_device(device)
        self.max_videos: int | None = None  # set when memory ran out: the batch that fits
        self._buffers: list[torch.Tensor | None] = [None, None]
        self._copied: list[torch.cuda.Event | None] = [None, None]  # CUDA: when each buffer may be refilled
        self._last: Future | None = None  # CPU: the forward pass in the encoder thread
        self._turn = 0
        self._copy_stream = torch.cuda.Stream(device) if self.cuda else None
        self._thread = None if self.cuda else ThreadPoolExecutor(1, thread_name_prefix="encoder")
        if not self.cuda:
            torch.set_num_threads(max(1, cpu_threads or (os.cpu_count() or 1)))

    def encode(self, crops: np.ndarray, per_video: int) -> Encoded:
        """Encode B videos' crops [B*N, H, W, 3] and wait for the features."""
        return self.submit([crops], per_video).result()

    def submit(self, crops: list[np.ndarray], per_video: int) -> InFlight:
        """Launch the forward pass of B videos' crops (N frames each, in order).

        The crops are copied before this returns, so the caller may reuse them at once.
        """
        if self._thread is not None:
            # One forward pass at a time on the CPU, and the next batch is gathered only
            # after the last one is done: memory stays that of one batch, so a halving
            # after out-of-memory holds for the next one too.
            if self._last is not None:
                wait([self._last])
            host = torch.from_numpy(np.concatenate(crops))
            self._last = self._thread.submit(self._run, host, per_video)
            return InFlight(self._last)
        host = self._stage(crops)
        turn = self._turn
        self._turn ^= 1
        parts = self._run(host, per_video)
        self._copied[turn] = self._event(self._copy_stream)
        return InFlight(parts, self._event(torch.cuda.current_stream(self.device)))

    def _run(self, host: torch.Tensor, per_video: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The forward passes of a staged batch; on out-of-memory, halve it and go on.

        The halved size is kept (max_videos) so the rest of the run does not hit the
        same wall batch after batch; the engine reads it and claims smaller batches.
        """
        total = host.shape[0] // per_video
        size = min(total, self.max_videos or total)
        parts = []
        start = 0
        while start < total:
            chunk = host[start * per_video : (start + size) * per_video]
            try:
                parts.append(self._forward(chunk, per_video))
                start += size
                continue
            except Exception as e:  # noqa: BLE001 - only out-of-memory is handled
                if not is_out_of_memory(e):
                    raise
            # Out of the except block, so the traceback no longer holds the failed pass's
            # tensors and the cache can really be given back (PyTorch's FAQ).
            if self.cuda:
                torch.cuda.empty_cache()
            if size == 1:
                raise PipelineError(f"out of memory encoding one video ({per_video} frames) on {self.device}") from None
            size //= 2
            self.max_videos = size
            log.warning("out of memory on %s: batch size now %d videos for the rest of the run", self.device, size)
        return parts

    def _event(self, stream: "torch.cuda.Stream | None") -> "torch.cuda.Event | None":
        if stream is None:
            return None
        event = torch.cuda.Event(blocking=True)  # waited on by sleeping, not by spinning a core
        event.record(stream)
        return event

    def _stage(self, crops: list[np.ndarray]) -> torch.Tensor:
        """Copy the crops into this turn's pinned host buffer, reused from batch to batch
        (allocating pinned memory is slow); wait until its last copy has left it."""
        rows = sum(len(c) for c in crops)
        shape = crops[0].shape[1:]
        buf = self._buffers[self._turn]
        if (copied := self._copied[self._turn]) is not None:
            copied.synchronize()
        if buf is None or buf.shape[0] < rows or buf.shape[1:] != shape:
            self._buffers[self._turn] = buf = None  # free the old one first
            buf = torch.empty((rows, *shape), dtype=torch.uint8, pin_memory=True)
            self._buffers[self._turn] = buf
        np.concatenate(crops, out=buf.numpy()[:rows])
        return buf[:rows]

    @torch.inference_mode()
    def _forward(self, host: torch.Tensor, per_video: int) -> tuple[torch.Tensor, torch.Tensor]:
        """host: uint8 [B*N, H, W, 3], N frames of each of B videos in order."""
        if self.cuda:
            with torch.cuda.stream(self._copy_stream):
                x = host.to(self.device, non_blocking=True)
            torch.cuda.current_stream(self.device).wait_stream(self._copy_stream)
            x.record_stream(torch.cuda.current_stream(self.device))
        else:
            x = host
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=self.cuda):
            f = self.model.encode(x)
        del x
        f = torch.nn.functional.normalize(f.float(), dim=-1)
        f = f.view(-1, per_video, f.shape[-1])
        v = torch.nn.functional.normalize(f.mean(dim=1), dim=-1)
        return v, f
