"""`run --metrics-port N`: a Prometheus endpoint for a run, one series per engine.

Why this shape (docs/design/metrics.md has the whole story):

- Off by default, and then free: `Metrics.start(0, ...)` returns a no-op object and
  prometheus_client is never imported, so a run without the flag starts no faster or
  slower than before.
- One engine in this process (`--gpu 0`, `--gpu cpu`): the engine serves its own
  registry on the port while the run lives (and `--metrics-linger S` more, so a
  scraper sees the final counts of a short run).
- Several engine processes (`--gpu 0,1`, `cpu,cpu`): the parent serves the port with
  prometheus_client's multiprocess mode. It makes a directory and names it in the
  environment its engines inherit (METRICS_DIR_ENV); each engine then writes its
  samples to memory-mapped files there instead of serving, and the parent's collector
  sums them per label on every scrape. One port, no pipes, and an engine that dies
  keeps the counts it had made.

Every series carries `engine="<device>"` (`cuda:0`, `cpu`). Rates (videos/s, frames/s)
are not exported as gauges: Prometheus computes them from the counters with `rate()`,
over whatever window the dashboard picks (docs/grafana-dashboard.json).

The API (what the local engine calls, and what another executor calls the same way):

    metrics = Metrics.start(port, "cuda:0")   # NullMetrics when port is 0
    metrics.done(n); metrics.failed(n); metrics.retried(n); metrics.frames(n)
    metrics.decode_seconds(s)                 # one video's decode, in its worker
    metrics.encode_seconds(s)                 # one batch, launch to features
    metrics.queue("claimed" | "decode" | "batch", depth); metrics.claims(n)
    metrics.close(linger=0.0, stop=None)      # stop serving (after linger seconds)

    with serve_engines(port):                 # a parent of several engine processes
        ...start the engines...
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from pipeline.errors import PipelineError

log = logging.getLogger(__name__)

# Set by a parent serving several engines: the multiprocess directory its engines write to.
METRICS_DIR_ENV = "CLIPFEAT_METRICS_DIR"
PREFIX = "clipfeat"
QUEUES = ("claimed", "decode", "batch")  # claimed not yet sent, at the decoders, decoded waiting for a batch
# Decode: ~10 ms (a tiny clip) to minutes (a long 4K file); encode: one batch, ms to seconds.
DECODE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
ENCODE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Stoppable(Protocol):
    requested: bool


class NullMetrics:
    """Metrics off: every call does nothing."""

    serving = False

    def done(self, n: int) -> None: ...
    def failed(self, n: int) -> None: ...
    def retried(self, n: int) -> None: ...
    def frames(self, n: int) -> None: ...
    def decode_seconds(self, s: float) -> None: ...
    def encode_seconds(self, s: float) -> None: ...
    def queue(self, name: str, depth: int) -> None: ...
    def claims(self, n: int) -> None: ...
    def close(self, linger: float = 0.0, stop: Stoppable | None = None) -> None: ...


def _listen(port: int, registry: Any) -> Any:
    """The HTTP server on every interface (Prometheus scrapes from another host); one line if the port is taken."""
    from prometheus_client import start_http_server

    try:
        server, _thread = start_http_server(port, registry=registry)
    except (OSError, OverflowError) as e:  # taken, not allowed, or not a port number
        raise PipelineError(f"--metrics-port {port}: cannot listen there ({getattr(e, 'strerror', None) or e})") from None
    return server


def _stop_server(server: Any, linger: float, stop: Stoppable | None) -> None:
    """Keep serving `linger` more seconds (a stop request cuts it short), then shut down."""
    if linger > 0:
        log.info("metrics: the run is over; serving %.0f s more for a last scrape (--metrics-linger)", linger)
    end = time.monotonic() + linger
    while time.monotonic() < end and not (stop is not None and stop.requested):
        time.sleep(min(0.2, max(0.0, end - time.monotonic())))
    server.shutdown()
    server.server_close()


class Metrics(NullMetrics):
    """The run's Prometheus series for one engine. Build with `Metrics.start`."""

    def __init__(self, engine: str, registry: Any, server: Any = None) -> None:
        from prometheus_client import Counter, Gauge, Histogram

        self.engine = engine
        self._server = server
        self.serving = server is not None
        kw: dict[str, Any] = {"labelnames": ["engine"], "registry": registry}
        # livesum: in multiprocess mode a gauge is the sum over the engines alive now.
        gauge_kw = {**kw, "multiprocess_mode": "livesum"}
        self._done = Counter(f"{PREFIX}_videos_done", "Videos committed (features durably in a shard).", **kw).labels(engine)
        self._failed = Counter(f"{PREFIX}_videos_failed", "Videos failed for good.", **kw).labels(engine)
        self._retried = Counter(f"{PREFIX}_videos_retried", "Failed attempts sent back to pending.", **kw).labels(engine)
        self._frames = Counter(f"{PREFIX}_frames", "Frames of the committed videos.", **kw).labels(engine)
        self._decode = Histogram(
            f"{PREFIX}_decode_seconds", "One video's decode in its worker, open to crops.", buckets=DECODE_BUCKETS, **kw
        ).labels(engine)
        self._encode = Histogram(
            f"{PREFIX}_encode_seconds", "One batch on the device, launch to features on the host.", buckets=ENCODE_BUCKETS, **kw
        ).labels(engine)
        queues = Gauge(f"{PREFIX}_queue_depth", "Videos waiting at each stage.", labelnames=["engine", "queue"],
                       registry=registry, multiprocess_mode="livesum")
        self._queues = {q: queues.labels(engine, q) for q in QUEUES}
        self._claims = Gauge(f"{PREFIX}_claims_held", "Manifest claims this engine holds.", **gauge_kw).labels(engine)

    @classmethod
    def start(cls, port: int, engine: str) -> NullMetrics:
        """Metrics for the engine on `engine` (its device): a no-op when `port` is 0.

        Under a parent's serve_engines (METRICS_DIR_ENV set) the samples go to its
        directory and the parent serves them; otherwise this process serves `port`.
        """
        if not port:
            return NullMetrics()
        shared = os.environ.get(METRICS_DIR_ENV)
        if shared:
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = shared
            from prometheus_client import REGISTRY, values

            if not getattr(values.ValueClass, "_multiprocess", False):  # imported before the variable was set
                values.ValueClass = values.MultiProcessValue()
            return cls(engine, REGISTRY)
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry()
        metrics = cls(engine, registry)  # series exist (at 0) before the first scrape
        metrics._server = _listen(port, registry)
        metrics.serving = True
        log.info("metrics: serving Prometheus on port %d (engine=%s)", port, engine)
        return metrics

    def done(self, n: int) -> None:
        self._done.inc(n)

    def failed(self, n: int) -> None:
        self._failed.inc(n)

    def retried(self, n: int) -> None:
        self._retried.inc(n)

    def frames(self, n: int) -> None:
        self._frames.inc(n)

    def decode_seconds(self, s: float) -> None:
        self._decode.observe(s)

    def encode_seconds(self, s: float) -> None:
        self._encode.observe(s)

    def queue(self, name: str, depth: int) -> None:
        self._queues[name].set(depth)

    def claims(self, n: int) -> None:
        self._claims.set(n)

    def close(self, linger: float = 0.0, stop: Stoppable | None = None) -> None:
        """Stop serving, after `linger` seconds so a scraper sees the final counts."""
        for q in self._queues.values():
            q.set(0)
        self._claims.set(0)
        if self._server is not None:
            _stop_server(self._server, linger, stop)
            self._server = None
            self.serving = False


class EngineMetrics:
    """The parent's side of serve_engines: tells the collector which engines are gone, and
    (`stopped`, set by the parent) whether a stop request should cut the linger short."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.stopped: Callable[[], bool] = lambda: False

    @property
    def requested(self) -> bool:
        return self.stopped()

    def engine_ended(self, pid: int) -> None:
        """Drop a dead engine's live gauges (its counters stay: the work it did happened)."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.path)


@contextlib.contextmanager
def serve_engines(port: int, linger: float = 0.0) -> Iterator[EngineMetrics | None]:
    """Serve the samples of the engine processes started inside this block on `port`.

    Yields None when `port` is 0. The engines must be started (spawned) inside the
    block: they find the directory in the environment they inherit.
    """
    if not port:
        yield None
        return
    from prometheus_client import CollectorRegistry, multiprocess

    path = tempfile.mkdtemp(prefix="clipfeat-metrics-")
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=path)
    try:
        server = _listen(port, registry)
    except PipelineError:
        shutil.rmtree(path, ignore_errors=True)
        raise
    log.info("metrics: serving Prometheus on port %d for the engines (multiprocess dir %s)", port, path)
    before = os.environ.get(METRICS_DIR_ENV)
    os.environ[METRICS_DIR_ENV] = path
    handle = EngineMetrics(path)
    try:
        yield handle
    finally:
        if before is None:
            os.environ.pop(METRICS_DIR_ENV, None)
        else:
            os.environ[METRICS_DIR_ENV] = before
        try:
            _stop_server(server, linger, handle)
        finally:
            shutil.rmtree(path, ignore_errors=True)
