"""The Ray executor: decode tasks on whichever nodes have CPUs, encoder actors on the GPUs.

The driver (the `run` process) is the one engine of the run: it registers the run,
claims rows, heartbeats, writes the shards and commits them exactly as the local
engine does, through the same `_Loop` methods (pipeline/engine.py), so claims,
leases, the shard-then-rows commit order and exactly-once are the manifest's. Only
the two stages move out of the process:

- decoding: one Ray task per video (`num_cpus=1`, plus --ray-decode-resource if given),
  running the local workers' own code (pipeline/workers.py `decode_into`); its uint8
  crops stay in the object store, the driver sees a few bytes of metadata;
- encoding: encoder actors, one per unit of --ray-encode-resource in the cluster (a GPU
  each by default; one CPU actor where the cluster has none), each loading the model
  and running `Encoder` as an engine does. Crops go from the decoding node's object
  store straight to the actor; only features (a few KB per video) come back.

Ray never retries anything here (max_retries=0, max_restarts=0): a decode task whose
worker crashed is charged to its video like a local worker's crash; one whose node
died, or a batch whose encoder died or whose crops were lost with their node, goes back
to the queue uncharged and is done again by what is left; the manifest decides what
is done. Backpressure: at most `slots` decode tasks in flight and at most a few
batches of crops waiting per encoder, whatever the job's size. See docs/design/ray.md.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.executors.base import Executor
from pipeline.signals import StopRequest

if TYPE_CHECKING:
    from pipeline.devices import Device
    from pipeline.engine import RunSummary
    from pipeline.manifest import Claim
    from pipeline.settings import JobSettings, Options, RunSettings
    from pipeline.workers import DecodeSpec, Result, Task

log = logging.getLogger(__name__)

NAMESPACE = "clipfeat"
ENCODER_PREFIX = "clipfeat-encoder"  # actor names: ENCODER_PREFIX-RUNID-K (tests and operators find them)
BATCHES_PER_ENCODER = 2  # in flight on each actor: one encoding, the next one already there
LOST_LIMIT = 5  # uncharged returns (node or encoder lost) before a video is failed as cursed


class RayExecutor(Executor):
    name = "ray"
    help = "a Ray cluster: decode tasks on any CPU node, one encoder actor per GPU (--ray-address)"

    def run(self, opts: "Options", devices: "list[Device]") -> "RunSummary":
        with StopRequest() as stop:  # from the start: a stop during start-up is clean too
            return run_ray(opts, stop, cpu_encoder=all(d.kind == "cpu" for d in devices))


# Decode tasks ---------------------------------------------------------------------------

_tools: tuple[Any, Any] | None = None  # (spec, its decoder/sampler/converter): one per Ray worker process


def decode_task(spec: "DecodeSpec", video_id: int, path: str) -> tuple[dict[str, Any], np.ndarray | None]:
    """One video in a Ray worker: the local workers' decode code; returns (meta, crops or None)."""
    import ray

    from pipeline.workers import decode_into, decode_tools

    global _tools
    if _tools is None or _tools[0] != spec:
        _tools = (spec, decode_tools(spec))
    started = time.monotonic()
    out = np.empty(spec.shape, dtype=np.uint8)
    res = decode_into(*_tools[1], video_id, path, out)
    meta = {
        "n": res.n, "error": res.error, "decoded": res.decoded, "final": res.final, "endpoint": res.endpoint,
        "decoded_on": res.decoded_on, "times": res.times,
        "node": ray.get_runtime_context().get_node_id(), "seconds": time.monotonic() - started,
    }
    return meta, (out if res.error is None else None)


@dataclass
class _Running:
    task: "Task"
    crops: Any  # ObjectRef of the crops
    submitted: float


class RayDecodePool:
    """Decode tasks in flight, at most `slots`; the engine's DecodePool interface (capacity,
    in_flight, submit, poll, drain, close), so the engine's claim sizing applies unchanged."""

    def __init__(self, spec: "DecodeSpec", slots: int, resource: str | None) -> None:
        import ray

        self.spec = spec
        self.slots = slots
        self._spec_ref = ray.put(spec)
        options: dict[str, Any] = {"num_cpus": 1, "max_retries": 0, "num_returns": 2}
        if resource:
            options["resources"] = {resource: 0.001}  # placement only: CPUs bound the concurrency
        self._remote = ray.remote(decode_task).options(**options)
        self.running: dict[Any, _Running] = {}  # meta ObjectRef -> its task
        self.lost: list[Task] = []  # tasks whose node died: back to the queue, uncharged
        self.nodes: Counter[str] = Counter()  # videos decoded per node id
        self.seconds = 0.0  # decode seconds, summed over tasks
        self.bytes = 0  # crop bytes put in the object store

    @property
    def capacity(self) -> int:
        return max(0, self.slots - len(self.running))

    @property
    def in_flight(self) -> int:
        return len(self.running)

    def submit(self, task: "Task") -> None:
        meta, crops = self._remote.remote(self._spec_ref, task.video_id, task.path)
        self.running[meta] = _Running(task, crops, time.monotonic())

    def poll(self, timeout: float) -> list["Result"]:
        """Decoded videos (crops: an ObjectRef), failures to charge; lost ones go to `self.lost`."""
        import ray
        from ray.exceptions import LocalRayletDiedError, NodeDiedError, RayError, WorkerCrashedError

        from pipeline.workers import Result

        if not self.running:
            time.sleep(min(timeout, 0.05))
            return []
        refs = list(self.running)
        ready, _ = ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        results: list[Result] = []
        for ref in ready:
            run = self.running.pop(ref)
            vid = run.task.video_id
            try:
                meta = ray.get(ref)
                if meta["error"] is not None:
                    run.crops = None
            except WorkerCrashedError:  # the process died under it (a segfault, a kill): its fault
                _seen(run.crops)
                results.append(Result(vid, None, 0, "decoder process died (Ray worker crashed)", crashed=True))
                log.warning("decode worker died on %s", run.task.path)
                continue
            except (NodeDiedError, LocalRayletDiedError):  # the machine went, not the video
                _seen(run.crops)
                log.warning("decode node lost while decoding %s: it goes back to the queue", run.task.path)
                self.lost.append(run.task)
                continue
            except RayError as e:
                _seen(run.crops)
                results.append(Result(vid, None, 0, f"{type(e).__name__}: {str(e).splitlines()[0]}"))
                continue
            self.seconds += meta["seconds"]
            if meta["error"] is not None:
                results.append(Result(vid, None, 0, meta["error"], meta["final"], endpoint=meta["endpoint"]))
                continue
            self.nodes[meta["node"]] += 1
            self.bytes += int(np.prod(self.spec.shape))
            results.append(Result(vid, run.crops, meta["n"], None, decoded=meta["decoded"], seconds=meta["seconds"],
                                  decoded_on=meta["decoded_on"], times=meta.get("times")))
        now = time.monotonic()
        for ref, run in list(self.running.items()):
            if now - run.submitted > run.task.deadline:  # hung (or queued that long): kill it, fail the video
                ray.cancel(ref, force=True)
                del self.running[ref]
                log.warning("decoding %s took over %.0f s: task cancelled", run.task.path, run.task.deadline)
                results.append(Result(run.task.video_id, None, 0, f"timeout: no frames after {run.task.deadline:.0f} s",
                                      final=True))
        return results

    def drain(self) -> list["Task"]:
        """Cancel every task in flight (a stop); returns them so their claims can be given back."""
        import ray

        lost = [r.task for r in self.running.values()]
        for ref in self.running:
            ray.cancel(ref, force=True)
        self.running.clear()
        return lost

    def close(self) -> None:
        self.drain()


def _seen(ref: Any) -> None:
    """Read a failed task's other return once, so Ray does not report its error again as unhandled."""
    import ray

    try:
        ray.get(ref, timeout=0)
    except Exception:  # noqa: BLE001 - the error we already handled
        pass


# Encoder actors ---------------------------------------------------------------------------

class EncoderActor:
    """One encoder: the engine's model load and Encoder, on its GPU (or CPU cores)."""

    def __init__(self, job: "JobSettings", cuda: bool, cpu_threads: int) -> None:
        import torch

        from pipeline.encoder import Encoder
        from pipeline.models import load_model

        self._job = job
        self.device = torch.device("cuda", 0) if cuda else torch.device("cpu")  # Ray sets CUDA_VISIBLE_DEVICES
        self.loaded = load_model(job, self.device)
        self.encoder = Encoder(self.loaded, self.device, None if cuda else cpu_threads)

    def describe(self) -> dict[str, Any]:
        import ray

        from pipeline.fingerprint import model_fingerprint

        return {"geometry": self.loaded.preprocess.geometry, "dim": self.loaded.dim, "device": str(self.device),
                "node": ray.get_runtime_context().get_node_id(), "pid": os.getpid(),
                "fingerprint": model_fingerprint(self._job, self.loaded)}

    def encode(self, num_frames: int, *crops: np.ndarray) -> dict[str, Any]:
        """Features of a batch; its crops arrive resolved from the decoding nodes' object stores."""
        started = time.monotonic()
        enc = self.encoder.submit(list(crops), num_frames).result()
        return {"videos": enc.videos, "frames": enc.frames, "max_videos": self.encoder.max_videos,
                "seconds": time.monotonic() - started}


@dataclass
class _Actor:
    name: str
    handle: Any
    ready: Any  # ObjectRef of describe()
    info: dict[str, Any] | None = None
    batches: dict[Any, list["Result"]] | None = None  # encode ObjectRef -> its batch


@dataclass
class _Features:
    """What the engine's _finish reads from a finished batch (an Encoded without torch)."""

    videos: np.ndarray
    frames: np.ndarray


class _Launched:
    def __init__(self, features: _Features) -> None:
        self.features = features

    def ready(self) -> bool:
        return True

    def result(self) -> _Features:
        return self.features


@dataclass
class _EncoderView:
    """The two Encoder attributes the engine's _finish reads."""

    device: str
    max_videos: int | None


class EncoderPool:
    """The run's encoder actors: started at once, replaced when one dies."""

    def __init__(self, job: "JobSettings", settings: "RunSettings", run_id: str) -> None:
        import ray

        resources = ray.cluster_resources()
        self.resource = settings.ray_encode_resource
        self.cuda = settings.gpu != "cpu" and resources.get("GPU", 0) >= 1
        units = int(resources.get(self.resource, 0))
        if self.resource != "GPU" and units < 1:
            raise PipelineError(f"no node of the Ray cluster has the resource {self.resource!r} (--ray-encode-resource)")
        self.count = units if (self.cuda or self.resource != "GPU") else 1  # no GPU: one CPU encoder
        options: dict[str, Any] = {"max_restarts": 0, "max_task_retries": 0, "namespace": NAMESPACE}
        if self.cuda:
            options.update(num_gpus=1, num_cpus=0)
        else:
            options["num_cpus"] = 1
        if self.resource != "GPU":
            options["resources"] = {self.resource: 1}
        self._cls, self._options = ray.remote(EncoderActor), options
        self._job = job
        self._run_id = run_id
        self._started = 0
        self.actors: list[_Actor] = [self._start() for _ in range(self.count)]
        self.lost = 0
        self.seconds = 0.0

    def _start(self) -> _Actor:
        self._started += 1
        name = f"{ENCODER_PREFIX}-{self._run_id}-{self._started}"
        handle = self._cls.options(name=name, **self._options).remote(self._job, self.cuda, 1)
        return _Actor(name, handle, handle.describe.remote(), batches={})

    def first_ready(self, stop: StopRequest, timeout: float = 600.0) -> dict[str, Any]:
        """The model's geometry and dim, from the first encoder that has loaded it."""
        import ray
        from ray.exceptions import RayActorError

        deadline = time.monotonic() + timeout
        while not stop.requested and time.monotonic() < deadline:
            pending = {a.ready: a for a in self.actors if a.info is None}
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.5)
            for ref in ready:
                actor = pending[ref]
                try:
                    actor.info = ray.get(ref)
                except RayActorError as e:
                    cause = getattr(e, "cause", None) or e
                    if isinstance(cause, PipelineError):
                        raise cause from None
                    self._replace(actor, f"{type(e).__name__}")
                    continue
                log.info("encoder %s on %s (node %s)", actor.name, actor.info["device"], actor.info["node"][:12])
                return actor.info
        raise PipelineError("no encoder actor started" + ("" if stop.requested else f" within {timeout:.0f} s"))

    def _replace(self, actor: _Actor, why: str) -> None:
        self.lost += 1
        if self.lost > LOST_LIMIT * self.count:
            raise PipelineError(f"encoder actors keep dying ({self.lost} lost; last: {why})")
        fresh = self._start()
        log.warning("encoder %s lost (%s): starting %s", actor.name, why, fresh.name)
        self.actors[self.actors.index(actor)] = fresh

    @property
    def in_flight(self) -> int:
        return sum(len(a.batches or {}) for a in self.actors)

    def free(self) -> _Actor | None:
        """An actor with room for one more batch (least loaded first); None: wait."""
        room = [a for a in self.actors if len(a.batches or {}) < BATCHES_PER_ENCODER]
        return min(room, key=lambda a: len(a.batches or {}), default=None)

    def dispatch(self, actor: _Actor, batch: list["Result"], num_frames: int) -> None:
        ref = actor.handle.encode.remote(num_frames, *[r.crops for r in batch])
        assert actor.batches is not None
        actor.batches[ref] = batch

    def harvest(self, timeout: float) -> tuple[list[tuple[list["Result"], dict[str, Any]]], list[list["Result"]]]:
        """(finished batches with their features, batches to do again: their encoder or crops were lost)."""
        import ray
        from ray.exceptions import ObjectLostError, OwnerDiedError, RayActorError, RayTaskError

        owners = {ref: a for a in self.actors for ref in (a.batches or {})}
        if not owners:
            return [], []
        ready, _ = ray.wait(list(owners), num_returns=1, timeout=timeout)
        if not ready:
            return [], []
        ready, _ = ray.wait(list(owners), num_returns=len(owners), timeout=0)
        done, again = [], []
        dead: set[str] = set()
        for ref in ready:
            actor = owners[ref]
            assert actor.batches is not None
            if ref not in actor.batches:  # its actor died: already back in the queue
                continue
            batch = actor.batches.pop(ref)
            try:
                out = ray.get(ref)
            except RayActorError as e:  # the actor (or its node) died: the batch is done by another
                again.append(batch)
                if actor.name not in dead:
                    dead.add(actor.name)
                    again.extend(actor.batches.values())
                    actor.batches.clear()
                    self._replace(actor, type(e).__name__)
                continue
            except (ObjectLostError, OwnerDiedError) as e:  # crops lost with their node: decode again
                log.warning("crops of a batch were lost (%s): its videos go back to the queue", type(e).__name__)
                again.append(batch)
                continue
            except RayTaskError as e:
                cause = e.cause if isinstance(getattr(e, "cause", None), BaseException) else None
                if isinstance(cause, (ObjectLostError, OwnerDiedError)):
                    again.append(batch)
                    continue
                if isinstance(cause, PipelineError):
                    raise cause from None
                raise PipelineError(f"encoder {actor.name} failed: {str(e).splitlines()[0]}") from None
            self.seconds += out["seconds"]
            done.append((batch, out))
        return done, again

    def close(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a.handle)
            except Exception:  # noqa: BLE001 - already gone
                pass


# The run ---------------------------------------------------------------------------------

def connect(settings: "RunSettings", cpu_encoder: bool) -> None:
    """ray.init for --ray-address: an existing cluster, or a local Ray of this run's cores
    (plus one for a CPU encoder actor: the local engine's encoder thread shares the cores too)."""
    import ray

    address = settings.ray_address
    kw: dict[str, Any] = {"logging_level": logging.WARNING, "namespace": NAMESPACE}
    if address == "local" or (not address and not os.environ.get("RAY_ADDRESS")):
        kw.update(address="local", num_cpus=settings.core_count() + int(cpu_encoder), include_dashboard=False)
    else:
        kw["address"] = address or None
    try:
        ray.init(**kw)
    except (ConnectionError, ValueError, RuntimeError) as e:
        raise PipelineError(f"cannot connect to Ray at {address or os.environ.get('RAY_ADDRESS')}: "
                            f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def decode_cpus(resource: str | None) -> int:
    """CPUs of the nodes decode tasks may use (those with `resource`, or all)."""
    import ray

    cpus = 0.0
    for node in ray.nodes():
        have = node.get("Resources", {})
        if node.get("Alive") and (resource is None or have.get(resource, 0) > 0):
            cpus += have.get("CPU", 0)
    return int(cpus)


def run_ray(opts: "Options", stop: StopRequest, cpu_encoder: bool = True) -> "RunSummary":
    """The run on Ray: the engine's set-up (manifest, job, run, dim check) with Ray's stages."""
    import ray

    from pipeline.engine import RunEnd, RunSummary
    from pipeline.fingerprint import keep as keep_fingerprint
    from pipeline.logs import start_log
    from pipeline.metrics import Metrics
    from pipeline.manifest import open_manifest
    from pipeline.progress import RunProgress
    from pipeline.workers import DecodeSpec

    settings = opts.run
    if settings.decoder != "cpu":
        raise PipelineError(f"--decoder {settings.decoder} does not go with --executor ray: decode tasks run on CPU nodes")
    out = Path(opts.paths.output_dir)
    manifest = open_manifest(out, opts.paths.db)
    job = manifest.check_job(opts.asked_job)
    log_path = start_log(out, "run")
    if settings.retry_failed:
        log.info("retry-failed: %d failed rows back to pending", manifest.reset_failed())
    metrics = Metrics.start(settings.metrics_port, "ray")  # before Ray: a taken port fails fast
    connect(settings, cpu_encoder)
    for sig in stop.signals:  # ray.init makes SIGTERM a sys.exit: a stop is the run's to make, cleanly
        signal.signal(sig, stop._handle)
    run_id: str | None = None
    encoders: EncoderPool | None = None
    pool: RayDecodePool | None = None
    loop: RayLoop | None = None
    end = RunEnd()
    try:
        with end.recorded(stop):
            cpus = decode_cpus(settings.ray_decode_resource)
            if cpus < 1:
                raise PipelineError(f"no node of the Ray cluster has a CPU and {settings.ray_decode_resource!r} for decoding")
            slots = 2 * (settings.num_workers or cpus)  # one running and one queued per decode CPU
            run_id = manifest.register_run(f"ray:{settings.ray_encode_resource}", settings.batch_size, slots)
            encoders = EncoderPool(job, settings, run_id)
            info = encoders.first_ready(stop)
            stored_dim = manifest.settings().get("dim")
            if stored_dim is None:
                manifest.set_setting("dim", str(info["dim"]))
            elif int(stored_dim) != info["dim"]:
                raise PipelineError(f"the model now gives {info['dim']}-d features, the job has {stored_dim}-d ones")
            fingerprint = keep_fingerprint(manifest, info["fingerprint"])  # a changed checkpoint is refused here
            spec = DecodeSpec(job.num_frames, info["geometry"], job.resize, job.sampling, settings.decode_threads or 1)
            pool = RayDecodePool(spec, slots, settings.ray_decode_resource)
            log.info("run %s on Ray: job %s, batch %d, %d encoder actors (%s), %d decode tasks in flight on %d CPUs",
                     run_id, job, settings.batch_size, encoders.count, "GPU" if encoders.cuda else "CPU", slots, cpus)
            if released := manifest.reap(settings.lease_seconds, settings.max_claims):
                log.info("gave back %d rows claimed by runs that are gone", released)
            loop = RayLoop(opts, manifest, run_id, encoders, job.num_frames, job.save_frames, out)
            loop.writer.extra["fingerprint"] = fingerprint  # each shard says what made it (pipeline/fingerprint.py)
            loop.metrics = metrics
            with RunProgress(manifest.counts(), job.num_frames) as progress:
                loop.progress = progress
                loop.run(pool, stop)
    finally:
        decoding = len(pool.drain()) if pool else 0
        if encoders:
            encoders.close()
        if run_id is not None:
            back = manifest.release(run_id)
            manifest.end_run(run_id, end.state, end.message)
            if loop is not None:
                log.info("run %s %s: %d done, %d failed, %d claims given back (%d were decoding); decoded per node %s",
                         run_id, end.state, loop.done, loop.failed, back, decoding,
                         {n[:12]: c for n, c in pool.nodes.items()} if pool else {})
                log.info("figures %s", json.dumps(loop.counts()))
        ray.shutdown()  # which puts back the handlers ray.init found: the run's again, for the linger
        for sig in stop.signals:
            signal.signal(sig, stop._handle)
        metrics.close(settings.metrics_linger, stop)
    assert loop is not None
    others = manifest.counts()["running"]
    return RunSummary(run_id, loop.done, loop.failed, loop.retried, time.monotonic() - loop.started, end.state, log_path,
                      others)


def _loop_base() -> type:
    from pipeline.engine import _Loop

    return _Loop


class RayLoop(_loop_base()):  # type: ignore[misc]
    """The engine's loop (claims, charging, commits: pipeline/engine.py `_Loop`), with decode
    tasks for workers and several encoder actors, each with batches in flight, for the one
    local encoder."""

    def __init__(self, opts: "Options", manifest: Any, run_id: str, encoders: EncoderPool, num_frames: int,
                 save_frames: bool, out: Path) -> None:
        super().__init__(opts, manifest, run_id, _EncoderView("ray", None), num_frames, save_frames, out)
        self.encoders = encoders
        self.returned: Counter[int] = Counter()  # uncharged returns per video (node or encoder lost)

    def counts(self) -> dict[str, float]:
        """The run's figures in one place (for a metrics hook: one call)."""
        pool = getattr(self, "pool", None)
        return {
            "done": self.done, "failed": self.failed, "retried": self.retried,
            "frames": self.done * self.num_frames,
            "decode_seconds": pool.seconds if pool else 0.0, "encode_seconds": self.encoders.seconds,
            "decode_in_flight": pool.in_flight if pool else 0, "claimed_waiting": len(self.todo),
            "crops_waiting": len(self.ready), "batches_encoding": self.encoders.in_flight,
            "claims_held": len(self.claimed), "object_store_bytes": pool.bytes if pool else 0,
            "encoders_lost": self.encoders.lost,
        }

    def run(self, pool: RayDecodePool, stop: StopRequest) -> None:  # type: ignore[override]
        self.stop = stop
        self.pool = pool
        self.last_beat = next_claim = time.monotonic()
        max_ready = self.batch_size * (self.encoders.count * BATCHES_PER_ENCODER + 1)  # crops waiting, at most
        while not stop.requested:
            now = time.monotonic()
            busy = pool.in_flight or self.ready or self.encoders.in_flight or self.writer
            if len(self.todo) < pool.capacity + self.batch_size and (not self.todo and not pool.in_flight or now >= next_claim):
                got = self._claim(pool)
                if not got and not self.todo and not busy:
                    # Before calling it done, take back what dead runs left behind.
                    if not self.manifest.reap(self.settings.lease_seconds, self.settings.max_claims) or not (got := self._claim(pool)):
                        break
                next_claim = now + (0.0 if got else 1.0)
                for c in got:
                    self.claimed[c.id] = c
                    self.todo.append(c)
            self._submit(pool, max_ready)
            for res in pool.poll(0.05):
                self._collect(res)
            self._requeue(t.video_id for t in pool.lost)
            pool.lost.clear()
            decoding = bool(self.todo or pool.in_flight)
            while self.ready and (len(self.ready) >= self.batch_size or not decoding):
                actor = self.encoders.free()
                if actor is None:
                    break
                batch = self.ready[: self.batch_size]
                del self.ready[: len(batch)]
                self.encoders.dispatch(actor, batch, self.num_frames)
            self._harvest(0.05 if not decoding else 0.0)
            idle = not decoding and not self.ready and not self.encoders.in_flight
            self._upkeep(pool, idle)
        if stop.requested:
            pool.drain()
            deadline = time.monotonic() + 30
            while self.encoders.in_flight and time.monotonic() < deadline:
                self._harvest(0.5)
            self._commit()  # what is encoded is kept; the rest is given back by run_ray
            log.warning("stopped: %d videos committed this run", self.done)

    def _submit(self, pool: RayDecodePool, max_ready: int) -> None:
        from pipeline.workers import Task

        while self.todo and pool.capacity > 0 and len(self.ready) + pool.in_flight < max_ready:
            c = self.todo.popleft()
            pool.submit(Task(c.id, c.path, self.settings.deadline(c.size)))

    def _collect(self, res: "Result") -> None:
        """The engine's, except that crops stay an ObjectRef (they go to an encoder unread)."""
        if res.error is None:
            if res.video_id in self.claimed:
                self.decoded += res.decoded
                self.collected += 1
                self.metrics.decode_seconds(res.seconds)
                self.decoded_on[res.video_id] = res.decoded_on or "cpu"
                self.ready.append(res)
            return
        super()._collect(res)

    def _requeue(self, video_ids: Any) -> None:
        """Videos whose node or encoder was lost: decoded again, uncharged, unless it keeps happening."""
        for vid in video_ids:
            claim: Claim | None = self.claimed.get(vid)
            if claim is None:
                continue
            self.returned[vid] += 1
            if self.returned[vid] > LOST_LIMIT:
                self._charge(vid, f"lost with its Ray node or encoder {self.returned[vid]} times", True)
            else:
                self.todo.appendleft(claim)

    def _harvest(self, timeout: float) -> None:
        done, again = self.encoders.harvest(timeout)
        for batch in again:
            self._requeue(r.video_id for r in batch)
        for batch, out in done:
            for r in batch:
                r.crops = None  # the object store may free them now
            # The engine's _finish: non-finite features charged, the rest to the shard writer.
            self.encoder = _EncoderView(f"encoder actor ({'cuda' if self.encoders.cuda else 'cpu'})", out["max_videos"])
            self.in_flight = (batch, _Launched(_Features(out["videos"], out["frames"])))
            self.launched_at = time.monotonic() - out["seconds"]  # the actor's encode time, for the metrics
            super()._finish()

    def _finish(self) -> None:
        """Called by the engine's _commit: what has been harvested is already in the writer."""
        if self.in_flight is not None:
            super()._finish()
