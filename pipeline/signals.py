"""Who stops on which signal, so that a stop is clean whoever sends it to whom.

Slurm (scancel, preemption, requeue), systemd's control-group kill and `kill -TERM -PGID`
signal every process of the job at once, decode workers included. Only the run (and its
engines) decide when work stops: workers ignore the stop signals and are told to stop
by their run, or die with it (the kernel sends SIGKILL when their parent goes). A worker
that died from a group signal would otherwise have its video charged a failed attempt,
and a requeued job would fail innocent videos one preemption at a time.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int) -> None:
    """Ask the kernel to send `sig` when the parent dies, so no child outlives its run."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, sig)
    except OSError:
        pass


@contextmanager
def stop_signals_blocked() -> Iterator[None]:
    """Start children with the stop signals blocked: a child inherits the mask, and one
    signalled while it is still starting (before it could ignore them) keeps the signal
    pending instead of dying of it."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def start_resource_tracker() -> None:
    """Start multiprocessing's resource tracker (if not running) with the stop signals
    blocked. Whatever first makes a shared-memory segment or a semaphore starts it, and its
    children share it; it ignores SIGINT and SIGTERM but not SIGHUP, so a group SIGHUP (a
    closed terminal) killed it, and it came back with a KeyError traceback per segment.
    Started with them blocked, they stay pending in it. Call before the first segment or
    multiprocessing queue."""
    from multiprocessing import resource_tracker

    with stop_signals_blocked():
        resource_tracker.ensure_running()


def unblock_stop_signals() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


def ignore_stop_signals() -> None:
    """For decode workers: their run decides when they stop."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
    unblock_stop_signals()


def listened(sigs: tuple[int, ...]) -> tuple[int, ...]:
    """SIGHUP ignored on purpose (nohup) stays ignored: closing the terminal must not stop the run."""
    return tuple(s for s in sigs if not (s == signal.SIGHUP and signal.getsignal(s) == signal.SIG_IGN))


class StopRequest:
    """The first SIGINT/SIGTERM/SIGHUP asks for a clean stop; a second one ends the process now.

    An engine started by the process executor listens to SIGTERM and SIGHUP only (its parent passes
    Ctrl-C on as SIGTERM) and always stops cleanly: a hard stop is the parent's to give
    (SIGKILL).
    """

    def __init__(self, engine: bool = False) -> None:
        self.requested = False
        self.engine = engine
        self.signals = listened((signal.SIGTERM, signal.SIGHUP) if engine else STOP_SIGNALS)
        self._old: dict[int, object] = {}

    def __enter__(self) -> "StopRequest":
        for sig in self.signals:
            self._old[sig] = signal.signal(sig, self._handle)
        unblock_stop_signals()  # one that arrived while the process started is handled now
        return self

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        if self.requested:
            if self.engine:
                return
            os._exit(128 + signum)  # claims are given back by the next run's reap
        self.requested = True
        log.warning("stopping (signal %d): finishing the batch in hand; press Ctrl-C again to quit now", signum)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]
