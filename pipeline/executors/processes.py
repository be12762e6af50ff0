"""`run --gpu 0,1,2,3` (or `all`, or `cpu,cpu`): one engine process per device.

Each engine is an ordinary run (its own claims, decode workers and shards) started
by this parent, which shows one progress display for the job, keeps one log file for
all of them, and watches them: an engine that dies has its videos handed back at once
for the others to take; a stop request (Ctrl-C, SIGTERM) is passed on once; and an
engine whose parent vanishes (even by SIGKILL) is told by the kernel to stop cleanly.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
import signal
from multiprocessing.connection import wait
from pathlib import Path
from types import FrameType

from pipeline.devices import Device, announce
from pipeline.errors import PipelineError
from pipeline.manifest import open_manifest
from pipeline.metrics import serve_engines
from pipeline.progress import RunProgress
from pipeline.settings import Options
from pipeline.signals import (
    STOP_SIGNALS, StopRequest, die_with_parent, listened, start_resource_tracker, stop_signals_blocked,
)

log = logging.getLogger(__name__)


def _engine_main(opts: Options, device: Device, log_path: str, parent: int,
                 reasons: "mp.SimpleQueue[tuple[str, str]]") -> None:
    from pipeline.engine import run_engine

    die_with_parent(signal.SIGTERM)  # a clean stop, even if the parent was SIGKILLed
    if os.getppid() != parent:  # the parent died before prctl took effect
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent passes stops on as SIGTERM
    try:
        with StopRequest(engine=True) as stop:
            summary = run_engine(opts, device, stop, log_path=Path(log_path), engine=True)
    except PipelineError as e:
        log.error("engine stopped: %s", e)
        reasons.put((str(device), str(e)))  # the parent says it as a one-engine run would, in one line
        raise SystemExit(1) from None
    raise SystemExit(130 if summary.state == "interrupted" else 0)


def run_many(opts: Options, devs: list[Device]) -> tuple[int, int, str, Path]:
    """Run one engine per device until the job is done; returns (done, failed, state, log).

    `devs` come resolved (RunSettings.devices), so a GPU that is not there was an error
    before anything started."""
    from pipeline.logs import start_log

    out = Path(opts.paths.output_dir)
    manifest = open_manifest(out, opts.paths.db)
    manifest.check_job(opts.asked_job)
    log_path = start_log(out, "run")
    announce(devs, opts.run.gpu)
    metrics = serve_engines(opts.run.metrics_port, opts.run.metrics_linger)  # one port for every engine
    served = metrics.__enter__()  # entered here, left in the finally below: engines spawn inside it
    per_engine = max(1, opts.run.workers() // len(devs))
    cores = max(1, opts.run.core_count() // len(devs))  # each engine sizes its FFmpeg threads within its share
    ctx = mp.get_context("spawn")
    engines: list[tuple[Device, mp.Process]] = []
    start_resource_tracker()  # the queue's semaphore starts it, and the engines share it
    reasons: mp.SimpleQueue[tuple[str, str]] = ctx.SimpleQueue()  # (device, an engine's PipelineError)
    said: dict[str, str] = {}  # device -> its engine's refusal, in its words

    def launch(d: Device) -> mp.Process:
        child = dataclasses.replace(
            opts, run=dataclasses.replace(opts.run, gpu=d.spec, num_workers=per_engine, cores=cores)
        )
        p = ctx.Process(target=_engine_main, args=(child, d, str(log_path), os.getpid(), reasons), name=f"engine-{d}")
        with stop_signals_blocked():  # pending, not fatal, until the engine listens for them
            p.start()
        engines.append((d, p))
        return p

    stops = [0]

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stops[0] += 1
        how = signal.SIGTERM if stops[0] == 1 else signal.SIGKILL
        for _d, p in engines:
            if p.is_alive():
                os.kill(p.pid, how)
        if stops[0] == 1:
            log.warning("stopping %d engines; press Ctrl-C again to quit now", len(engines))
        else:
            os._exit(128 + signum)

    old = {s: signal.signal(s, on_signal) for s in listened(STOP_SIGNALS)}
    for d in devs:
        if not stops[0]:  # a stop that came while engines were starting starts no more
            launch(d)
    log.info("started %d engines on %s, %d decode workers each", len(devs), ",".join(map(str, devs)), per_engine)
    start = manifest.counts()
    relaunches = 0
    try:
        with RunProgress(start, int(manifest.settings()["num_frames"])) as progress:
            alive = list(engines)  # (device, process); a device may repeat (cpu,cpu)
            while alive:
                ready = wait([p.sentinel for _d, p in alive], timeout=0.5)
                for d, p in list(alive):
                    if p.sentinel in ready:
                        p.join()
                        alive.remove((d, p))
                        if served is not None:
                            served.engine_ended(p.pid)
                        if p.exitcode not in (0, 130):
                            log.warning("engine on %s died (exit %s): its videos go back to the others", d, p.exitcode)
                            manifest.reap(opts.run.lease_seconds, opts.run.max_claims)
                while not reasons.empty():
                    device, words = reasons.get()
                    said[device] = words
                now = manifest.counts()
                progress.update(now["done"] - start["done"], now["failed"] - start["failed"])
                # A device whose engine refused (the endpoint down, the disk full, nvdec missing)
                # would refuse a relaunch alike: only the others take one.
                usable = [d for d in devs if str(d) not in said]
                if not alive and not stops[0] and now["pending"] and relaunches < len(devs) and usable:
                    # A dead engine's videos came back after the others had finished.
                    healthy = [d for d, p in engines if p.exitcode == 0 and str(d) not in said] or usable
                    relaunches += 1
                    log.info("%d videos came back from a dead engine: relaunching on %s", now["pending"], healthy[0])
                    alive.append((healthy[0], launch(healthy[0])))
    finally:
        stopped = stops[0]  # a stop during the linger below comes after the work: not an interruption
        if served is not None:
            served.stopped = lambda: bool(stops[0])  # a stop request ends --metrics-linger
        metrics.__exit__(None, None, None)  # after --metrics-linger: the engines' final counts stay scrapeable
        for s, h in old.items():
            signal.signal(s, h)
    end = manifest.counts()
    codes = [p.exitcode for _d, p in engines]  # relaunched engines included
    state = "interrupted" if stopped else ("finished" if not end["pending"] and not end["running"] else "failed")
    log.info("engines ended with %s: %s", codes, state)
    if state == "failed" and said:  # what a one-engine run says, not "an engine stopped"
        raise PipelineError("; ".join(dict.fromkeys(said.values())))
    return end["done"] - start["done"], end["failed"] - start["failed"], state, log_path
