"""Decode workers: processes that turn paths into uint8 crops, in parallel with encoding.

Each worker has its own pipe and a short queue of tasks, so the parent always knows
which video a worker is on: when a worker dies, the video in its hands is the one
charged with the failure and the ones queued behind it go to another worker
unharmed. Workers import no torch, so they start fast and stay small.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from pipeline.decoder import DecodeError, sample_frames, to_rgb
from pipeline.preprocess import Geometry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    video_id: int
    path: str
    deadline: float = float("inf")  # seconds this video may take before its worker is killed


@dataclass
class Result:
    video_id: int
    crops: np.ndarray | None  # uint8 [N, H, W, 3]
    n: int
    error: str | None
    final: bool = False  # no point retrying (a hang): fail now


def _worker_main(conn: Connection, num_frames: int, geometry: Geometry, threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when workers stop
    convert = lambda frame: geometry(to_rgb(frame))  # noqa: E731
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        try:
            sampled = sample_frames(task.path, num_frames, convert, threads)
            crops = np.stack(sampled.frames)
            result = Result(task.video_id, crops, sampled.n, None)
        except DecodeError as e:
            result = Result(task.video_id, None, 0, str(e))
        except MemoryError:
            result = Result(task.video_id, None, 0, "out of memory while decoding")
        except Exception as e:  # a decoder bug must not take the worker down
            result = Result(task.video_id, None, 0, f"{type(e).__name__}: {e}")
        try:
            conn.send(result)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, ctx: Any, args: tuple[Any, ...]) -> None:
        parent, child = ctx.Pipe(duplex=True)
        self.conn: Connection = parent
        self.proc = ctx.Process(target=_worker_main, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()
        self.queue: deque[Task] = deque()
        self.started = 0.0  # when the head of the queue began decoding

    def push(self, task: Task) -> None:
        if not self.queue:
            self.started = time.monotonic()
        self.queue.append(task)
        self.conn.send(task)

    def pop(self) -> None:
        self.queue.popleft()
        self.started = time.monotonic()

    def overdue(self, now: float) -> bool:
        return bool(self.queue) and now - self.started > self.queue[0].deadline


class DecodePool:
    """A fixed number of decode processes; results come back in any order."""

    def __init__(self, num_workers: int, num_frames: int, geometry: Geometry, threads: int = 1, depth: int = 2) -> None:
        self._ctx = mp.get_context("spawn")
        self._args = (num_frames, geometry, threads)
        self.depth = depth
        self.workers = [_Worker(self._ctx, self._args) for _ in range(num_workers)]

    @property
    def capacity(self) -> int:
        return sum(self.depth - len(w.queue) for w in self.workers)

    @property
    def in_flight(self) -> int:
        return sum(len(w.queue) for w in self.workers)

    def submit(self, task: Task) -> None:
        min(self.workers, key=lambda w: len(w.queue)).push(task)

    def poll(self, timeout: float) -> list[Result]:
        """Results ready within `timeout`. A dead or overdue worker's video comes back failed."""
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
                        results.append(w.conn.recv())
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
        self.workers[self.workers.index(w)] = fresh = _Worker(self._ctx, self._args)
        failed = []
        if lost:
            failed.append(Result(lost[0].video_id, None, 0, reason, final))
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
