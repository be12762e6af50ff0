"""The engine: one device's run loop. Claim rows, decode them in workers, encode in batches,
commit shards. Executors (pipeline/executors/) decide how many engines run and where.

One loop in the main process keeps every part busy: it tops up the claimed queue,
keeps each decode worker's queue full, encodes whenever a batch is ready, commits a
shard when it is big or old enough, and proves it is alive (heartbeat) so its
claims are not taken away. Everything it holds but has not committed is given back
on a clean stop; after a hard kill the next run gives it back (Manifest.reap).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.decoders import get_decoder, gpu_share_line
from pipeline.devices import Device, announce, warn_on_fallback
from pipeline.errors import PipelineError
from pipeline.fingerprint import record as record_fingerprint, refuse_changed_model
from pipeline.logs import start_log
from pipeline.manifest import Claim, Manifest, open_manifest
from pipeline.metrics import Metrics, NullMetrics
from pipeline.preprocess import Geometry
from pipeline.progress import RunProgress
from pipeline.settings import JobSettings, Options
from pipeline.signals import StopRequest
from pipeline.workers import DecodePool, DecodeSpec, Result, Task
from pipeline.writer import ShardWriter

if TYPE_CHECKING:
    from pipeline.encoder import Encoder, InFlight
    from pipeline.models import Model

log = logging.getLogger(__name__)


GEOMETRY_SETTING = "geometry"  # the crop geometry of the job's model, recorded by the first run that loads it
LOAD_DELAY_ENV = "CLIPFEAT_TEST_LOAD_DELAY"  # fault injection for tests: seconds the model load waits first
CLAIM_SECONDS = 4.0  # claim about this much work at a time...
MAX_CLAIM = 1024  # ...but never more rows than this
DOWN_AFTER = 5  # the run's first this many opens failing for one endpoint reason, none succeeding,
DOWN_WITHIN = 60.0  # within this many seconds of its start: the endpoint is down (docs/design/sources.md, Remote)


def claim_size(batch_size: int, capacity: int, videos_per_s: float) -> int:
    """Rows to claim at once: enough to keep decoders and a batch fed, and ~4 s of work.

    Fewer, larger claims keep the manifest's share of a fast worker's time small; the
    cap keeps the end-of-job tail short and a crashed run's claims few (they come back
    anyway, see docs/design/claim-protocol.md).
    """
    return max(2 * batch_size, capacity + batch_size, min(MAX_CLAIM, int(videos_per_s * CLAIM_SECONDS)))


class RunEnd:
    """How a run ends, as its row in the manifest records it (state, message): `crashed`
    until its body returns, then `finished` or `interrupted` (a stop was asked for);
    `failed` with the words of a PipelineError; `crashed` with any other exception's.
    The local engine and the Ray executor record it alike."""

    def __init__(self) -> None:
        self.state: str = "crashed"
        self.message: str | None = None

    @contextlib.contextmanager
    def recorded(self, stop: StopRequest) -> Iterator[None]:
        try:
            yield
            self.state = "interrupted" if stop.requested else "finished"
        except PipelineError as e:
            self.state, self.message = "failed", str(e)
            raise
        except BaseException as e:
            self.message = f"{type(e).__name__}: {e}"
            raise


@dataclass
class RunSummary:
    run_id: str
    done: int
    failed: int
    retried: int
    seconds: float
    state: str
    log_path: Path
    others_running: int


def run_engine(
    opts: Options, on: Device, stop: StopRequest, log_path: Path | None = None, engine: bool = False
) -> RunSummary:
    """The run loop on device `on`; `engine`: one of several under an executor, which shows progress.

    Start-up overlaps decoding with the model: once the job is checked, torch and the
    model load in a thread while this one registers the run, starts the decode workers
    and runs the loop, which claims, decodes, heartbeats and listens for stops until the
    model is there (docs/design/startup.md). The workers need the crop geometry before
    the model exists: the job's recorded one, else the family's hint, checked against
    the loaded model before any crop is encoded.
    """
    began = time.monotonic()
    out = Path(opts.paths.output_dir)
    manifest = open_manifest(out, opts.paths.db)
    job = manifest.check_job(opts.asked_job)
    log_path = start_log(out, "run", log_path)
    warn_on_fallback(opts.run.gpu, on)
    metrics = Metrics.start(opts.run.metrics_port, str(on))  # before the model: a taken port fails fast
    if opts.run.retry_failed:
        log.info("retry-failed: %d failed rows back to pending", manifest.reset_failed())
    workers = opts.run.workers()
    if (opts.run.decoder, on.kind) != ("cpu", "cpu"):  # the CPU decoder on the CPU needs no check (nor torch)
        get_decoder(opts.run.decoder).check(on.torch())  # e.g. nvdec without a CUDA GPU: one line, before any worker
    refuse_changed_model(manifest, job)  # a changed checkpoint: one line, before anything starts
    geometry = startup_geometry(manifest, job)
    load: ModelLoad | None = None
    if geometry is None:  # nothing recorded nor hinted: the model decides, before any worker starts
        log.info("start-up: no recorded geometry for this job's model: loading the model first")
        load = ModelLoad(job, on)
        geometry = load.wait().preprocess.geometry

    def encoder_for(loaded: "Model") -> "Encoder":
        """The loaded model checked against the job, its geometry recorded, on its device."""
        from pipeline.encoder import Encoder

        settings = manifest.settings()
        stored_dim = settings.get("dim")
        if stored_dim is None:
            manifest.set_setting("dim", str(loaded.dim))
        elif int(stored_dim) != loaded.dim:
            raise PipelineError(f"the model now gives {loaded.dim}-d features, the job has {stored_dim}-d ones")
        if settings.get(GEOMETRY_SETTING) != (text := loaded.preprocess.geometry.to_text()):
            manifest.set_setting(GEOMETRY_SETTING, text)  # the next run's workers start with it
        fingerprint = record_fingerprint(manifest, job, loaded)  # a changed checkpoint is refused here
        loop.writer.extra["fingerprint"] = fingerprint  # each shard says what made it (pipeline/fingerprint.py)
        device = on.torch()
        cpu_threads = max(1, opts.run.core_count() - workers) if device.type == "cpu" else None
        encoder = Encoder(loaded, device, cpu_threads)
        if not engine:  # once the model is there, so a refusal (no weights, another model) stays one line;
            announce([on], opts.run.gpu)  # one engine of several: the executor names them all
        return encoder

    spec = DecodeSpec(
        job.num_frames, geometry, job.resize, job.sampling, opts.run.threads_per_worker(),
        opts.run.decoder, on.index or 0, opts.run.cache_dir,
    )
    run_id = manifest.register_run(str(on), opts.run.batch_size, workers)
    log.info("run %s on %s: job %s, batch %d, %d decode workers x %d FFmpeg threads, %s decoding",
             run_id, on, job, opts.run.batch_size, workers, spec.threads, spec.decoder)
    released = manifest.reap(opts.run.lease_seconds, opts.run.max_claims)
    if released:
        log.info("gave back %d rows claimed by runs that are gone", released)

    loop = _Loop(opts, manifest, run_id, None, job.num_frames, job.save_frames, out)
    loop.began, loop.encoder_for = began, encoder_for
    loop.first_run = "dim" not in manifest.settings()
    loop.metrics = metrics
    loop.pool = DecodePool(workers, spec)
    # The load starts once the workers are spawned, not before: its imports hold the GIL
    # most of the time, and this thread's start-up work (the run's rows, the spawn) took
    # 1.3 s instead of 0.1 s beside them.
    load = load or ModelLoad(job, on)
    log.info("start-up: %d decode workers started %.2f s into the run%s", workers, time.monotonic() - began,
             "" if load.done() else ", the model still loading")
    end = RunEnd()
    try:
        with end.recorded(stop), RunProgress(manifest.counts(), job.num_frames, show=not engine) as progress:
            loop.progress = progress
            loop.run(loop.pool, stop, load)
    finally:
        decoding = len(loop.pool.drain())
        loop.pool.close()
        back = manifest.release(run_id)
        manifest.end_run(run_id, end.state, end.message)
        log.info("run %s %s: %d done, %d failed, %d claims given back (%d were decoding)",
                 run_id, end.state, loop.done, loop.failed, back, decoding)
        if share := gpu_share_line(opts.run.decoder, loop.on_gpu, loop.done):
            log.log(*share)
        metrics.close(opts.run.metrics_linger, stop)
    others = manifest.counts()["running"]
    return RunSummary(run_id, loop.done, loop.failed, loop.retried, time.monotonic() - loop.started, end.state, log_path,
                      others)


def idle_run(opts: Options) -> RunSummary | None:
    """A run with nothing to do, answered from the manifest alone; None when there is work.

    Nothing pending and nothing running once the claims of runs that are gone are taken
    back (as the run itself would), and no failed rows to retry: the summary a full run
    would give, without importing torch, loading a model or starting a worker. The job's
    settings are checked first, so a refused run is refused as quickly. Videos still
    running under other live runs are theirs: reported as a full run reports them.
    """
    started = time.monotonic()
    out = Path(opts.paths.output_dir)
    manifest = open_manifest(out, opts.paths.db)
    manifest.check_job(opts.asked_job)
    if "dim" not in manifest.settings():
        return None  # no run has loaded the job's model yet: the first records its dim (an empty job's export needs it)
    counts = manifest.counts()
    if counts["pending"] or (opts.run.retry_failed and counts["failed"]):
        return None
    if counts["running"] and manifest.reap(opts.run.lease_seconds, opts.run.max_claims):
        return None  # claims of dead runs came back: there is work after all
    counts = manifest.counts()
    if counts["pending"]:
        return None
    log_path = start_log(out, "run")
    log.info("nothing to run: %d done, %d failed, %d running under other runs; no model loaded",
             counts["done"], counts["failed"], counts["running"])
    return RunSummary("idle", 0, 0, 0, time.monotonic() - started, "finished", log_path, counts["running"])


def startup_geometry(manifest: Manifest, job: JobSettings) -> Geometry | None:
    """The crop geometry the decode workers start with: the one the job recorded when a
    run last loaded its model, else the model family's hint (no torch), else None."""
    from pipeline.models import geometry_hint

    recorded = manifest.settings().get(GEOMETRY_SETTING)
    return (Geometry.from_text(recorded) if recorded else None) or geometry_hint(job)


class ModelLoad:
    """Loads the job's model in a thread, so the run loop decodes, heartbeats (a 30 s
    ViT-L load must not lose its leases) and hears stops meanwhile.

    The thread imports torch and open_clip and builds the model; the engine takes the
    model with `take()` in its own thread, which checks it and builds the encoder there
    (the CUDA device is current per thread). A daemon thread: a stop during the load
    does not wait for it.
    """

    def __init__(self, job: JobSettings, on: Device) -> None:
        self.job, self.on = job, on
        self.began = time.monotonic()
        self.seconds: float | None = None  # how long the load took, once done
        self._model: Model | None = None
        self._error: BaseException | None = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._load, name="model-load", daemon=True)
        self._thread.start()

    def _load(self) -> None:
        try:
            delay = float(os.environ.get(LOAD_DELAY_ENV, "0") or 0)
            if delay > 0:  # tests: a slow model load (a ViT-L from a network disk)
                log.info("%s: the model load waits %.1f s first", LOAD_DELAY_ENV, delay)
                time.sleep(delay)
            import pipeline.encoder  # noqa: F401 - torch imported here, off the run loop's thread
            from pipeline.models import load_model

            self._model = load_model(self.job, self.on.torch())
        except BaseException as e:  # noqa: BLE001 - handed to the engine's thread by wait()
            self._error = e
        finally:
            self.seconds = time.monotonic() - self.began
            self._done.set()

    def settle(self, timeout: float) -> None:
        """Sleep until the load is done, at most `timeout` seconds."""
        self._done.wait(timeout)

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Model:
        """The loaded model (blocking); the load's own error is raised here, in the caller's thread."""
        if not self._done.wait(timeout):
            raise TimeoutError("model still loading")
        if self._error is not None:
            raise self._error
        assert self._model is not None
        return self._model


class _Loop:
    def __init__(
        self, opts: Options, manifest: Manifest, run_id: str, encoder: "Encoder | None", num_frames: int, save_frames: bool,
        out: Path,
    ) -> None:
        self.settings = opts.run
        self.manifest = manifest
        self.run_id = run_id
        self.encoder = encoder
        self.num_frames = num_frames
        self.writer = ShardWriter(out / "shards", run_id, save_frames)
        self.todo: deque[Claim] = deque()
        self.claimed: dict[int, Claim] = {}
        self.ready: list[Result] = []
        self.in_flight: tuple[list[Result], "InFlight"] | None = None  # encoding on the device
        self.batch_size = opts.run.batch_size  # shrinks if the device runs out of memory
        self.done = self.failed = self.retried = self.batches = 0
        self.decoded = self.collected = 0  # frames decoders produced, for how many videos
        self.started = time.monotonic()
        self.last_beat = self.started  # the last heartbeat (_upkeep)
        self.first_run = False  # no run has loaded the job's model yet (run_engine sets it)
        self.progress: RunProgress | None = None
        self.stop: StopRequest | None = None
        self.unopened: list[Result] = []  # endpoint failures held uncharged while no open has succeeded
        self.metrics: NullMetrics = NullMetrics()  # run_engine's, when --metrics-port is on
        self.decoded_on: dict[int, str] = {}  # decoded, not yet committed: 'gpu' or 'cpu'
        self.on_gpu = 0  # committed videos whose frames the GPU decoded
        self.launched_at = 0.0  # when the batch in flight was launched
        self.pool: DecodePool | None = None
        # Start-up (run_engine sets these): the run's start, and how a loaded model becomes the encoder.
        self.began = self.started
        self.encoder_for: "Callable[[Model], Encoder] | None" = None

    # The loop -----------------------------------------------------------------------

    def run(self, pool: DecodePool, stop: StopRequest, load: "ModelLoad | None" = None) -> None:
        """Until nothing is left or a stop is asked for. With `load`, the model is still
        loading: decode (at most one batch ahead) until it is there, then encode too."""
        self.stop = stop
        self.pool = pool
        self.last_beat = next_claim = time.monotonic()
        while not stop.requested:
            if self.encoder is None and load is not None and load.done():
                self._start_encoding(load)
            pool = self.pool  # a new one if the model's geometry was not the one the workers had
            now = time.monotonic()
            idle = not self.todo and pool.in_flight == 0
            # While the model loads, claims found empty are retried once a second, not every pass.
            eager = idle and (self.encoder is not None or not self.ready)
            if len(self.todo) < pool.capacity + self.batch_size and (eager or now >= next_claim):
                got = self._claim(pool)
                if not got and idle and not self.ready and self.in_flight is None and not self.writer:
                    # Before calling it done, take back what dead runs left behind.
                    if not self.manifest.reap(self.settings.lease_seconds, self.settings.max_claims) or not (got := self._claim(pool)):
                        if self.encoder is None and load is not None and self.first_run:
                            load.settle(0.2)  # the job's first run records its model's dim, even with no video
                            continue
                        break
                next_claim = now + (0.0 if got else 1.0)
                for c in got:
                    self.claimed[c.id] = c
                    self.todo.append(c)
            while self.todo and pool.capacity > 0 and (
                self.encoder is not None or len(self.ready) + pool.in_flight < self.batch_size
            ):
                c = self.todo.popleft()
                pool.submit(Task(c.id, c.path, self.settings.deadline(c.size)))
            if self.encoder is None and load is not None and pool.in_flight == 0:
                load.settle(0.2)  # nothing to collect: sleep until the model is there (or 0.2 s)
            for res in pool.poll(0.2):
                self._collect(res)
            idle = not self.todo and pool.in_flight == 0
            if idle and self.unopened:
                self._charge_unopened()  # fewer videos than DOWN_AFTER: they are failures after all
            while self.encoder is not None and (len(self.ready) >= self.batch_size or (self.ready and idle)):
                batch = self.ready[: self.batch_size]
                del self.ready[: len(batch)]
                self._encode(batch)
            if self.in_flight and (idle or self.in_flight[1].ready()):
                self._finish()
            self._upkeep(pool, idle)
        if stop.requested:
            self._commit()  # what is encoded is kept; the rest is given back by run_engine
            log.warning("stopped: %d videos committed this run", self.done)

    def _start_encoding(self, load: "ModelLoad") -> None:
        """The model is loaded: check it, make the encoder, and make sure the crops decoded
        meanwhile have the model's geometry (else decode them again with it)."""
        assert self.encoder_for is not None and self.pool is not None
        loaded = load.wait()
        self.encoder = self.encoder_for(loaded)
        log.info("start-up: model loaded in %.2f s, %.2f s into the run; %d videos decoded meanwhile",
                 load.seconds or 0.0, time.monotonic() - self.began, len(self.ready))
        geometry = loaded.preprocess.geometry
        if geometry != self.pool.spec.geometry:
            log.info("start-up: the model crops to %s, not %s as the workers started: decoding again", geometry,
                     self.pool.spec.geometry)
            lost = {t.video_id for t in self.pool.drain()} | {r.video_id for r in self.ready}
            self.ready.clear()
            self.pool.close()
            self.todo.extendleft(sorted((self.claimed[i] for i in lost if i in self.claimed), key=lambda c: -c.id))
            self.pool = DecodePool(len(self.pool.workers), dataclasses.replace(self.pool.spec, geometry=geometry))

    def _claim(self, pool: DecodePool) -> list[Claim]:
        elapsed = time.monotonic() - self.started
        # A rate from the first seconds is noise (and would let the first engine of
        # several grab everything before the others start): claim small until then.
        rate = self.done / elapsed if elapsed >= CLAIM_SECONDS else 0.0
        return self.manifest.claim(self.run_id, claim_size(self.batch_size, pool.capacity, rate), self.settings.lease_seconds)

    def _collect(self, res: Result) -> None:
        claim = self.claimed.get(res.video_id)
        if claim is None:
            return
        if self._endpoint_down(res):
            return
        if res.error is None:
            self.decoded += res.decoded
            self.collected += 1
            self.metrics.decode_seconds(res.seconds)
            self.decoded_on[res.video_id] = res.decoded_on or "cpu"
            if self.collected == 1:
                log.info("start-up: first video decoded %.2f s into the run%s", time.monotonic() - self.began,
                         "" if self.encoder is not None else ", the model still loading")
            res.crops = np.array(res.crops)  # out of the worker's shared slot before it is reused
            self.ready.append(res)
            return
        if res.crashed and self.stop is not None and self.stop.requested:
            # A worker that died while its run is stopping (a signal to the whole group, say)
            # says nothing about its video: it goes back untouched with the run's other claims.
            del self.claimed[res.video_id]
            log.info("decode worker ended during the stop; %s goes back uncharged", claim.path)
            return
        self._charge(res.video_id, res.error, res.final)

    def _endpoint_down(self, res: Result) -> bool:
        """Hold back the run's first failures that blame the endpoint, uncharged; when the first
        DOWN_AFTER opens all fail alike within DOWN_WITHIN s and none succeeded, stop the run
        (its claims go back untouched). Any other outcome charges what was held."""
        early = self.collected == 0 and self.done == 0 and time.monotonic() - self.started < DOWN_WITHIN
        if res.error and res.endpoint and early and all((r.endpoint, r.error) == (res.endpoint, res.error) for r in self.unopened):
            self.unopened.append(res)
            if len(self.unopened) >= DOWN_AFTER:
                raise PipelineError(
                    f"{res.endpoint}: every video fails to open ({res.error}); is the endpoint up? nothing was charged"
                )
            return True
        self._charge_unopened()
        return False

    def _charge_unopened(self) -> None:
        held, self.unopened = self.unopened, []
        for r in held:
            if r.video_id in self.claimed:
                self._charge(r.video_id, r.error or "", r.final)

    def _charge(self, video_id: int, error: str, final: bool) -> None:
        """A failed attempt for a video this run holds: back to pending, or failed at the limit."""
        claim = self.claimed.pop(video_id)
        status = self.manifest.fail_attempt(self.run_id, video_id, error, self.settings.max_attempts, final)
        self.decoded_on.pop(video_id, None)
        if status == "failed":
            self.failed += 1
            self.metrics.failed(1)
            log.warning("failed: %s: %s", claim.path, error)
        else:
            self.retried += 1
            self.metrics.retried(1)
            log.info("attempt %d failed, will retry: %s: %s", claim.attempts + 1, claim.path, error)
        if self.progress:
            self.progress.update(self.done, self.failed)

    def _encode(self, batch: list[Result]) -> None:
        """Launch this batch on the device, then take the previous one's features: the
        device works on one batch while the host gathers the next."""
        launched = self.encoder.submit([r.crops for r in batch], self.num_frames)  # type: ignore[misc]
        for r in batch:
            r.crops = None  # staged: free the host copy
        self._finish()
        self.in_flight = (batch, launched)
        self.launched_at = time.monotonic()

    def _finish(self) -> None:
        if self.in_flight is None:
            return
        batch, launched = self.in_flight
        self.in_flight = None
        enc = launched.result()
        self.metrics.encode_seconds(time.monotonic() - self.launched_at)
        if self.encoder.max_videos and self.encoder.max_videos < self.batch_size:
            self.batch_size = self.encoder.max_videos  # memory ran out during that batch
        finite = np.isfinite(enc.videos).all(axis=1) & np.isfinite(enc.frames).all(axis=(1, 2))
        if not finite.all():  # fp16 overflow, or weights that give NaN: a reason, never a stored NaN
            for r in (r for r, ok in zip(batch, finite) if not ok):
                self._charge(r.video_id, f"non-finite feature (NaN or Inf) from the model on {self.encoder.device}", True)
            batch = [r for r, ok in zip(batch, finite) if ok]
            enc.videos, enc.frames = enc.videos[finite], enc.frames[finite]
        ids = [r.video_id for r in batch]
        if ids:
            self.writer.add(ids, [self.claimed[i].path for i in ids], [r.n for r in batch], enc.videos, enc.frames,
                            [r.times for r in batch])
        self.batches += 1
        if self.batches == 1:
            log.info("start-up: first features %.2f s into the run", time.monotonic() - self.began)
        if self.batches % self.settings.log_every == 0:
            self._log_rate()

    def _commit(self) -> None:
        """Commit everything encoded, in shards of at most --shard-size rows."""
        self._finish()
        while (record := self.writer.flush(self.settings.shard_size)) is not None:
            on = {vid: self.decoded_on.pop(vid) for vid, _idx, _n in record.rows if vid in self.decoded_on}
            done = self.manifest.complete(self.run_id, record.name, record.rows, len(record.rows) * self.num_frames, on)
            if done < len(record.rows):
                log.warning("%d rows of shard %s had been claimed by another run", len(record.rows) - done, record.name)
            for vid, _idx, _n in record.rows:
                self.claimed.pop(vid, None)
            self.done += done
            self.on_gpu += min(done, sum(1 for v in on.values() if v == "gpu"))
            self.metrics.done(done)
            self.metrics.frames(done * self.num_frames)
            if self.progress:
                self.progress.update(self.done, self.failed)

    def _upkeep(self, pool: DecodePool, idle: bool) -> None:
        """How every turn of a run loop ends (this one's and the Ray executor's): a shard
        committed when big, old or idle; the heartbeat, and reaping, when due; the gauges."""
        if self.writer and (
            len(self.writer) >= self.settings.shard_size or self.writer.age() >= self.settings.shard_seconds or idle
        ):
            self._commit()
        if time.monotonic() - self.last_beat >= self.settings.lease_seconds / 4:
            self.manifest.heartbeat(self.run_id, self.settings.lease_seconds)
            self.manifest.reap(self.settings.lease_seconds, self.settings.max_claims)
            self.last_beat = time.monotonic()
        self._gauges(pool)

    def _gauges(self, pool: DecodePool) -> None:
        """Queue depths and claims held, for --metrics-port (each a no-op without it)."""
        self.metrics.queue("claimed", len(self.todo))
        self.metrics.queue("decode", pool.in_flight)
        self.metrics.queue("batch", len(self.ready))
        self.metrics.claims(len(self.claimed))

    def _log_rate(self) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-9)
        vps = self.done / elapsed
        sampled = max(1, self.collected * self.num_frames)
        log.info(
            "batch %d: %d videos done, %d failed, %.2f videos/s, %.1f frames/s, %.2f frames decoded per frame sampled",
            self.batches, self.done, self.failed, vps, vps * self.num_frames, self.decoded / sampled,
        )
