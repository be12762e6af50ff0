"""`run --metrics-port`: a real run serves Prometheus metrics over HTTP whose counts are the manifest's.

The run is scraped with urllib while it runs and during `--metrics-linger`, parsed with
prometheus_client's own parser, and compared with `status --json` (the manifest).
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.samples import make_clips
from tests.conftest import ROOT, Job, kill_group, wait_until

NUM_FRAMES = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
    """Every sample on the endpoint, by (name, sorted labels); None while nothing listens."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def summed(samples: dict, name: str) -> float:
    """A series summed over its labels (several engines)."""
    return sum(v for (n, _labels), v in samples.items() if n == name)


def _job_with_a_broken_file(new_job, tmp_path: Path, clips: int) -> Job:
    videos = make_clips(tmp_path / "videos", clips, frames=12)
    (videos / "broken.mp4").write_text("not a video\n")  # fails twice: one retry, then failed
    return new_job(videos, "--num-frames", str(NUM_FRAMES))


def _scrape_run(job: Job, port: int, *run_args: str) -> tuple[dict, list[dict], subprocess.Popen]:
    """Start the run, scrape it until every video is settled on the endpoint; (last, all, process)."""
    proc = job.start("run", "--metrics-port", str(port), "--metrics-linger", "60", *run_args,
                     log=job.out.parent / f"{job.out.name}-run.out")
    total = job.status()["total"]
    seen: list[dict] = []

    def settled() -> bool:
        got = scrape(port)
        if got:
            seen.append(got)
        return bool(got) and summed(got, "clipfeat_videos_done_total") + summed(got, "clipfeat_videos_failed_total") >= total

    try:
        assert wait_until(settled, timeout=180, interval=0.2), f"the endpoint never showed {total} settled videos"
    except BaseException:
        kill_group(proc)
        raise
    return seen[-1], seen, proc


def _stop_lingering(job: Job, port: int, proc: subprocess.Popen) -> int:
    """Once the run is over and only the endpoint lingers, a stop request ends
    --metrics-linger early, and the finished run still exits 0."""
    logs = lambda: "".join(p.read_text() for p in (job.out / "logs").glob("run-*.log"))  # noqa: E731
    assert wait_until(lambda: "more for a last scrape" in logs(), timeout=90)
    assert scrape(port) is not None  # still serving after the run
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            kill_group(proc)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_metrics_endpoint_counts_equal_the_manifest(new_job, tmp_path: Path) -> None:
    job = _job_with_a_broken_file(new_job, tmp_path, 4)
    port = free_port()
    last, seen, proc = _scrape_run(job, port, "--gpu", "cpu", "--num-workers", "1", "--batch-size", "2")
    try:
        _check_one_engine(job, port, last, seen, proc)
    finally:
        kill_group(proc)


def _check_one_engine(job: Job, port: int, last: dict, seen: list[dict], proc: subprocess.Popen) -> None:
    st = job.status()
    assert (st["done"], st["failed"]) == (4, 1)
    e = {"engine": "cpu"}
    assert value(last, "clipfeat_videos_done_total", **e) == st["done"]
    assert value(last, "clipfeat_videos_failed_total", **e) == st["failed"]
    assert value(last, "clipfeat_videos_retried_total", **e) == 1  # max_attempts 2: one retry before failing
    assert value(last, "clipfeat_frames_total", **e) == st["done"] * NUM_FRAMES
    assert value(last, "clipfeat_decode_seconds_count", **e) == st["done"]  # one decode per video that decoded
    assert value(last, "clipfeat_decode_seconds_sum", **e) > 0
    assert value(last, "clipfeat_encode_seconds_count", **e) >= 2  # 4 videos, batches of at most 2
    # Every gauge is exported from the first scrape on, per queue; at the end nothing is held.
    first = seen[0]
    for q in ("claimed", "decode", "batch"):
        assert ("clipfeat_queue_depth", (("engine", "cpu"), ("queue", q))) in first
        assert value(last, "clipfeat_queue_depth", engine="cpu", queue=q) == 0
    assert ("clipfeat_claims_held", (("engine", "cpu"),)) in first
    assert value(last, "clipfeat_claims_held", **e) == 0
    assert _stop_lingering(job, port, proc) == 0
    assert scrape(port) is None  # the endpoint lives while the run lives


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite"], indirect=True)
def test_several_engines_share_one_port(new_job, tmp_path: Path) -> None:
    """`--gpu cpu,cpu`: two engine processes, one endpoint (the parent's, multiprocess mode)."""
    job = _job_with_a_broken_file(new_job, tmp_path, 6)
    port = free_port()
    last, _seen, proc = _scrape_run(job, port, "--gpu", "cpu,cpu", "--num-workers", "2", "--batch-size", "2")
    try:
        _check_engines(job, port, last, proc)
    finally:
        kill_group(proc)


def _check_engines(job: Job, port: int, last: dict, proc: subprocess.Popen) -> None:
    st = job.status()
    assert (st["done"], st["failed"]) == (6, 1)
    assert {dict(labels).get("engine") for (n, labels), _v in last.items() if n.startswith("clipfeat_")} == {"cpu"}
    assert summed(last, "clipfeat_videos_done_total") == st["done"]
    assert summed(last, "clipfeat_videos_failed_total") == st["failed"]
    assert summed(last, "clipfeat_frames_total") == st["done"] * NUM_FRAMES
    assert summed(last, "clipfeat_decode_seconds_count") == st["done"]
    assert _stop_lingering(job, port, proc) == 0
    assert scrape(port) is None


def test_metrics_off_imports_no_prometheus() -> None:
    """Without a port the run pays nothing: a no-op object, prometheus_client never imported."""
    code = (
        "import sys; from pipeline.metrics import Metrics, NullMetrics; import pipeline.engine\n"
        "m = Metrics.start(0, 'cpu'); m.done(3); m.queue('decode', 2); m.close(5)\n"
        "assert type(m) is NullMetrics and not m.serving\n"
        "assert 'prometheus_client' not in sys.modules, 'imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_a_taken_port_is_one_line_error() -> None:
    from pipeline.errors import PipelineError
    from pipeline.metrics import Metrics

    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(PipelineError, match=rf"--metrics-port {port}: cannot listen there \(.*in use"):
            Metrics.start(port, "cpu")


def test_serve_and_close_in_process() -> None:
    """The API another executor calls: series move as called, and close() stops serving."""
    from pipeline.metrics import Metrics

    port = free_port()
    m = Metrics.start(port, "cuda:3")
    try:
        m.done(5)
        m.frames(40)
        m.failed(1)
        m.retried(2)
        m.decode_seconds(0.3)
        m.encode_seconds(0.02)
        m.queue("batch", 7)
        m.claims(9)
        got = scrape(port)
        assert got is not None
        e = {"engine": "cuda:3"}
        assert (value(got, "clipfeat_videos_done_total", **e), value(got, "clipfeat_frames_total", **e)) == (5, 40)
        assert (value(got, "clipfeat_videos_failed_total", **e), value(got, "clipfeat_videos_retried_total", **e)) == (1, 2)
        assert value(got, "clipfeat_decode_seconds_bucket", engine="cuda:3", le="0.5") == 1
        assert value(got, "clipfeat_decode_seconds_bucket", engine="cuda:3", le="0.25") == 0
        assert value(got, "clipfeat_queue_depth", engine="cuda:3", queue="batch") == 7
        assert value(got, "clipfeat_claims_held", **e) == 9
    finally:
        started = time.monotonic()
        m.close(linger=0)
    assert time.monotonic() - started < 5
    assert scrape(port) is None


def test_the_dashboard_queries_only_series_the_run_exports() -> None:
    """docs/grafana-dashboard.json: every clipfeat_ series a panel asks for is one Metrics serves."""
    import json
    import re

    from pipeline.metrics import Metrics

    port = free_port()
    m = Metrics.start(port, "cpu")
    try:
        m.decode_seconds(0.1)
        m.encode_seconds(0.1)
        names = {name for name, _labels in scrape(port) or {}}
    finally:
        m.close()
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    asked = {n for e in exprs for n in re.findall(r"clipfeat_\w+", e)}
    assert asked and asked <= names, asked - names
    assert {"clipfeat_videos_done_total", "clipfeat_queue_depth", "clipfeat_claims_held",
            "clipfeat_decode_seconds_bucket", "clipfeat_encode_seconds_bucket"} <= asked
