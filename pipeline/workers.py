"""Decode workers: processes that turn paths into uint8 crops, in parallel with encoding.

Each worker has its own pipe and a short queue of tasks, so the parent always knows
which video a worker is on: when a worker dies, the video in its hands is the one
charged with the failure and the ones queued behind it go to another worker
unharmed. Workers import no torch, so they start fast and stay small.

Crops travel through shared memory, not the pipe: each worker owns one slot per queue
place, writes a video's crops there and sends only a few bytes; the parent copies the
slot once, straight into the engine's staging buffer (pinned memory on CUDA), before
the slot can be handed another task.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.decoders import DecodeError, get_decoder
from pipeline.errors import PipelineError
from pipeline.preprocess import Geometry
from pipeline.samplers import get_sampler
from pipeline.sources import open_video
from pipeline.signals import die_with_parent, ignore_stop_signals, start_resource_tracker, stop_signals_blocked

log = logging.getLogger(__name__)

SHM_PREFIX = "clipfeat"
SHM_DIR = Path("/dev/shm")
_names = itertools.count()


def orphan_segments() -> list[Path]:
    """Slot segments whose owning engine is gone: a segment's name carries its pid, and a
    SIGKILLed engine takes with it the resource tracker that would have removed them."""
    orphans = []
    for f in SHM_DIR.glob(f"{SHM_PREFIX}_*_*") if SHM_DIR.is_dir() else ():
        try:
            os.kill(int(f.name.split("_")[1]), 0)
        except ProcessLookupError:
            orphans.append(f)
        except (ValueError, PermissionError):
            pass
    return orphans


def sweep_shared_memory() -> int:
    """Unlink the segments of engines that were killed; returns how many."""
    orphans = orphan_segments()
    for f in orphans:
        f.unlink(missing_ok=True)
    return len(orphans)


@dataclass(frozen=True)
class DecodeSpec:
    """How every video of a run is decoded; sent to each worker once."""

    num_frames: int
    geometry: Geometry
    resize: str = "swscale"
    sampling: str = "exact"  # a name in pipeline.samplers.SAMPLERS
    threads: int = 1  # FFmpeg threads per worker
    decoder: str = "cpu"  # a name in pipeline.decoders.DECODERS
    gpu_index: int = 0
    cache_dir: str | None = None  # --cache-dir: remote videos copied whole here and reused

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.num_frames, *self.geometry.crop, 3)


@dataclass(frozen=True)
class Task:
    video_id: int
    path: str
    deadline: float = float("inf")  # seconds this video may take before its worker is killed
    slot: int = 0  # where in the worker's shared memory its crops go


@dataclass
class Result:
    video_id: int
    crops: np.ndarray | None  # uint8 [N, H, W, 3]; in the parent, a view of shared memory until taken
    n: int
    error: str | None
    final: bool = False  # no point retrying (a hang): fail now
    decoded: int = 0  # frames the decoder produced for it (the cost)
    crashed: bool = False  # its worker process died while holding it
    endpoint: str | None = None  # the store that failed it, where the reason is the store's (refused, timeout)
    seconds: float = 0.0  # the decode's wall time in the worker (metrics)
    decoded_on: str | None = None  # 'gpu' or 'cpu': where its frames really came from (Sampled.decoded_on)
    times: list[float | None] | None = None  # each sampled frame's presentation time, s (Sampled.times)


def decode_tools(spec: DecodeSpec) -> tuple[Any, Any, Any]:
    """(decoder, sampler, converter) for `spec`: built once per worker (local or a Ray task's process)."""
    convert = spec.geometry.converter(spec.resize)
    sampler = get_sampler(spec.sampling)(spec.num_frames)
    decoder = get_decoder(spec.decoder)(spec.threads, spec.gpu_index)
    if spec.cache_dir:
        from pipeline.sources.remote import set_cache_dir

        set_cache_dir(spec.cache_dir)
    return decoder, sampler, convert


def decode_into(decoder: Any, sampler: Any, convert: Any, video_id: int, path: str, out: np.ndarray) -> Result:
    """Decode one video's crops into `out` (uint8 [N, H, W, 3]); a failure is a Result with its reason.

    Shared by the local decode workers and the Ray executor's decode tasks, so a video
    decodes, and fails, the same way under either."""
    began = time.monotonic()
    try:
        sampled = decoder.sample(open_video(path), sampler, convert)
        for i, frame in enumerate(sampled.frames):
            out[i] = frame
        return Result(video_id, None, sampled.n, None, decoded=sampled.decoded,
                      seconds=time.monotonic() - began, decoded_on=sampled.decoded_on, times=sampled.times)
    except (DecodeError, PipelineError) as e:  # the file, or its source, says why
        return Result(video_id, None, 0, str(e), endpoint=getattr(e, "endpoint", None))
    except MemoryError:
        return Result(video_id, None, 0, "out of memory while decoding")
    except Exception as e:  # a decoder bug must not take the worker down
        return Result(video_id, None, 0, f"{type(e).__name__}: {e}")


def _worker_main(conn: Connection, spec: DecodeSpec, shm_name: str, slots: int) -> None:
    die_with_parent(signal.SIGKILL)  # a worker never outlives its run, even a SIGKILLed one
    ignore_stop_signals()  # the run decides when workers stop (see pipeline/signals.py)
    decoder, sampler, convert = decode_tools(spec)
    shm = SharedMemory(name=shm_name)
    out = np.ndarray((slots, *spec.shape), dtype=np.uint8, buffer=shm.buf)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            break
        if task is None:
            break
        result = decode_into(decoder, sampler, convert, task.video_id, task.path, out[task.slot])
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            break
    del out
    shm.close()


class _Worker:
    def __init__(self, ctx: Any, spec: DecodeSpec, slots: int) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.conn: Connection = parent
        name = f"{SHM_PREFIX}_{os.getpid()}_{next(_names)}"
        start_resource_tracker()  # before the first segment: see there
        self.shm = SharedMemory(name=name, create=True, size=max(1, slots * int(np.prod(spec.shape))))
        self.slots = np.ndarray((slots, *spec.shape), dtype=np.uint8, buffer=self.shm.buf)
        self.proc = ctx.Process(target=_worker_main, args=(child, spec, self.shm.name, slots), daemon=True)
        with stop_signals_blocked():  # until the worker has set its own dispositions
            self.proc.start()
        child.close()
        self.queue: deque[Task] = deque()
        self.started = 0.0  # when the head of the queue began decoding
        self.pushed = 0

    def push(self, task: Task) -> None:
        """Queue a task; its slot is free because at most `slots` tasks are ever queued."""
        if not self.queue:
            self.started = time.monotonic()
        task = dataclasses.replace(task, slot=self.pushed % len(self.slots))
        self.pushed += 1
        self.queue.append(task)
        self.conn.send(task)

    def release(self) -> None:
        """Free the shared memory (the worker has exited or been killed)."""
        del self.slots
        self.shm.close()
        self.shm.unlink()

    def pop(self) -> None:
        self.queue.popleft()
        self.started = time.monotonic()

    def overdue(self, now: float) -> bool:
        return bool(self.queue) and now - self.started > self.queue[0].deadline


class DecodePool:
    """A fixed number of decode processes; results come back in any order."""

    def __init__(self, num_workers: int, spec: DecodeSpec, depth: int = 2) -> None:
        self._ctx = mp.get_context("spawn")
        if removed := sweep_shared_memory():
            log.info("removed %d shared-memory segments of killed runs", removed)
        self.spec = spec
        self.depth = depth
        self.workers = [_Worker(self._ctx, spec, depth) for _ in range(num_workers)]

    @property
    def capacity(self) -> int:
        return sum(self.depth - len(w.queue) for w in self.workers)

    @property
    def in_flight(self) -> int:
        return sum(len(w.queue) for w in self.workers)

    def submit(self, task: Task) -> None:
        min(self.workers, key=lambda w: len(w.queue)).push(task)

    def poll(self, timeout: float) -> list[Result]:
        """Results ready within `timeout`. A dead or overdue worker's video comes back failed.

        A result's crops are a view of its worker's shared memory, valid until the next
        poll or submit: take them (copy) before then.
        """
        if not self.in_flight:
            time.sleep(min(timeout, 0.05))
            return []
        busy = [w for w in self.workers if w.queue]
        now = time.monotonic()
        soonest = min(w.started + w.queue[0].deadline for w in busy) - now
        ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy], max(0.0, min(timeout, soonest)))
        results: list[Result] = []
        for w in busy:
            if w.conn in ready:
                try:
                    while w.conn.poll():
                        res: Result = w.conn.recv()
                        if res.error is None:
                            res.crops = w.slots[w.queue[0].slot]
                        results.append(res)
                        w.pop()
                except (EOFError, OSError):
                    pass
            if w.overdue(time.monotonic()):
                task = w.queue[0]
                w.proc.kill()
                log.warning("decoding %s took over %.0f s: worker killed", task.path, task.deadline)
                results.extend(self._replace(w, f"timeout: no frames after {task.deadline:.0f} s", final=True))
            elif w.proc.sentinel in ready or not w.proc.is_alive():
                results.extend(self._replace(w))
        return results

    def _replace(self, w: _Worker, reason: str | None = None, final: bool = False) -> list[Result]:
        """The head of the queue is the video the worker died on; the rest go to its successor."""
        w.proc.join(timeout=5)
        if reason is None:
            code = w.proc.exitcode
            how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            reason = f"decoder process died ({how})"
        lost = list(w.queue)
        w.conn.close()
        w.release()
        self.workers[self.workers.index(w)] = fresh = _Worker(self._ctx, self.spec, self.depth)
        failed = []
        if lost:
            failed.append(Result(lost[0].video_id, None, 0, reason, final, crashed=True))
            log.warning("decode worker replaced: %s on %s", reason, lost[0].path)
        for task in lost[1:]:
            fresh.push(task)
        return failed

    def drain(self) -> list[Task]:
        """Forget every queued task (for a stop); returns them so claims can be given back."""
        lost = [t for w in self.workers for t in w.queue]
        for w in self.workers:
            w.queue.clear()
        return lost

    def close(self, wait_s: float = 2.0) -> None:
        for w in self.workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + wait_s
        for w in self.workers:
            w.proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=1)
            w.conn.close()
            w.release()
