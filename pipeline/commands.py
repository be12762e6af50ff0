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
    from pipeline.executors import run as run_job

    s = run_job(opts, devices)
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


def index(opts: Options, as_json: bool, rebuild: bool, ivf_min: int | None) -> None:
    import json
    from dataclasses import asdict

    from pipeline import index as job_index

    ivf_min = job_index.IVF_MIN if ivf_min is None else ivf_min
    info = job_index.build(opts.paths.output_dir, opts.paths.db, ivf_min, rebuild)
    if as_json:
        print(json.dumps({**asdict(info), "ivf_min": ivf_min}))
        return
    how = "exact (flat)" if info.kind == "flat" else f"IVF, {info.nlist} lists, nprobe {info.nprobe} (recall@10 {info.recall_at_10:.3f})"
    console.print(f"index {info.action}: {info.count} videos, {how}; IVF from {ivf_min} videos; "
                  f"{job_index.index_dir(opts.paths.output_dir)}")


def search(opts: Options, as_json: bool, text: str | None, video: str | None, top_k: int) -> None:
    import json
    from dataclasses import asdict

    from pipeline.search import search as run_search

    answer = run_search(opts.paths.output_dir, opts.paths.db, text, video, top_k)
    for w in answer.warnings:
        console.print(f"warning: {w}")
    if as_json:
        print(json.dumps({"method": answer.method, "searched": answer.searched, "warnings": answer.warnings,
                          "hits": [asdict(h) for h in answer.hits]}, ensure_ascii=False))
        return
    for h in answer.hits:
        print(f"{h.rank:>4}  {h.score:+.4f}  {h.path!r}" if "\n" in h.path else f"{h.rank:>4}  {h.score:+.4f}  {h.path}")
    console.print(f"{len(answer.hits)} of {answer.searched} videos, by {answer.method}")


def dedup(opts: Options, as_json: bool, threshold: float, out: str | None) -> None:
    import json

    from pipeline import dedup as job_dedup

    if out:
        job_dedup.out_format(out)  # a bad --out is refused before any work
    groups, compared = job_dedup.find_groups(opts.paths.output_dir, opts.paths.db, threshold)
    written = job_dedup.write(groups, threshold, compared, out) if out else None
    if as_json:
        print(json.dumps(job_dedup.as_json(groups, threshold, compared), ensure_ascii=False))
    pairs = sum(len(g.pairs) for g in groups)
    largest = max((len(g.videos) for g in groups), default=0)
    console.print(f"dedup: {compared} videos, {pairs} pairs with cosine >= {threshold:g}, {len(groups)} groups "
                  f"(largest {largest})" + (f"; written to {written}" if written else ""))


def extract(opts: Options) -> int:
    """scan, run, export. The devices are resolved first, so a GPU that is not there is an
    error before anything is scanned or created."""
    devices = opts.run.devices()
    scan(opts)
    code = run(opts, devices)
    if code == 0:
        export(opts)
    return code
