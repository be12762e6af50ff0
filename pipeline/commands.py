"""What each CLI command does, start to finish: open the job, call the stage, report.

Kept apart from cli.py so the flag parsing stays thin and every command can be
called from Python (and from tests) with the same Options object.
"""

from __future__ import annotations

import logging

from rich.console import Console

from pipeline.devices import Device
from pipeline.errors import PipelineError
from pipeline.logs import start_log
from pipeline.manifest import job_exists, open_manifest
from pipeline.settings import Options

log = logging.getLogger(__name__)
console = Console(stderr=True, highlight=False, soft_wrap=True)


def scan(opts: Options) -> None:
    from pipeline.models import check_weights
    from pipeline.scanner import scan as scan_dir

    if not opts.paths.video_dir:
        raise PipelineError("scan needs --video-dir DIR")
    if opts.asked_job or not job_exists(opts.paths.output_dir, opts.paths.db):
        check_weights(opts.job)  # refuse a typo before the job exists, not hours later
    manifest = open_manifest(opts.paths.output_dir, opts.paths.db, create=True)
    start_log(opts.paths.output_dir, "scan")
    job = manifest.create_job(opts.job, opts.asked_job)
    res = scan_dir(manifest, opts.paths.video_dir, opts.paths.extensions)
    counts = manifest.counts()
    console.print(
        f"scanned {opts.paths.video_dir}: {res.found} videos found, {res.new} new, {res.changed} changed, "
        f"{res.vanished} vanished, {res.restored} back"
        + (f", {res.unreadable} unreadable entries (see log)" if res.unreadable else "")
    )
    console.print(f"job {opts.paths.output_dir}: {counts['total']} videos, {counts['pending']} pending; "
                  f"model {job.model}, pretrained {job.pretrained}, {job.num_frames} frames")


def run(opts: Options, devices: list[Device] | None = None) -> int:
    """`devices`: --gpu already resolved (by extract); otherwise the run resolves it."""
    from pipeline.engine import idle_run
    from pipeline.executors import run as run_job

    s = idle_run(opts) or run_job(opts, devices)  # nothing to do: answered without torch or a model
    rate = s.done / s.seconds if s.seconds > 0 else 0.0
    console.print(f"run {s.state}: {s.done} done, {s.failed} failed, {s.retried} retries, "
                  f"{rate:.2f} videos/s; log: {s.log_path}")
    if s.state == "interrupted":
        console.print("interrupted: nothing is lost; run the same command again to resume")
        return 130
    if s.state == "failed":
        console.print("error: an engine stopped before the job was done (see the log); run the same command again")
        return 1
    if s.others_running:
        console.print(f"{s.others_running} videos are still being processed by other runs")
    return 0


def status(opts: Options, as_json: bool, watch: bool) -> None:
    from pipeline.status import show

    show(open_manifest(opts.paths.output_dir, opts.paths.db), as_json, watch)


def export(opts: Options) -> None:
    from pipeline.exports.job import export as export_job

    written, feats = export_job(opts.paths.output_dir, opts.paths.db, opts.export.format)
    shape = "x".join(str(d) for d in feats.features.shape)
    console.print(f"exported {len(feats.paths)} features ({shape} float32): " + ", ".join(str(p) for p in written))


def extract(opts: Options) -> int:
    """scan, run, export. The devices are resolved first, so a GPU that is not there is an
    error before anything is scanned or created."""
    devices = opts.run.devices()
    scan(opts)
    code = run(opts, devices)
    if code == 0:
        export(opts)
    return code
