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
    from pipeline.scanner import scan_all
    from pipeline.sources import source_for
    from pipeline.sources.lists import video_list

    if not opts.paths.video_dir and not opts.paths.video_list:
        raise PipelineError("scan needs --video-dir DIR (or --video-list FILE)")
    # Every location is checked before the job is created or anything is registered.
    sources = [*map(source_for, opts.paths.video_dir), *map(video_list, opts.paths.video_list)]
    if opts.asked_job or not job_exists(opts.paths.output_dir, opts.paths.db):
        check_weights(opts.job)  # refuse a typo before the job exists, not hours later
    manifest = open_manifest(opts.paths.output_dir, opts.paths.db, create=True)
    start_log(opts.paths.output_dir, "scan")
    job = manifest.create_job(opts.job, opts.asked_job)
    results = scan_all(manifest, sources, opts.paths.extensions, opts.paths.output_dir)
    counts = manifest.counts()
    if not any(r.found for r in results):  # allowed (an empty day's folder), but most often a wrong path
        log.warning("no videos found in %s (extensions: %s); wrong path or --extensions?",
                    ", ".join(s.location for s in sources), ", ".join(opts.paths.extensions))
    for source, res in zip(sources, results):
        console.print(
            f"scanned {source.location}: {res.found} videos found, {res.new} new, {res.changed} changed, "
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


def tune(opts: Options, sample: int, out: str | None) -> None:
    """Measure this box on a sample of the job's videos; print and write the recommended settings."""
    from pipeline.tune import summary, tune as tune_job

    rec, path = tune_job(opts, sample, out)
    for line in summary(rec, path):
        console.print(line)


def extract(opts: Options) -> int:
    """scan, run, export. The devices are resolved first, so a GPU that is not there is an
    error before anything is scanned or created."""
    devices = opts.run.devices()
    scan(opts)
    code = run(opts, devices)
    if code == 0:
        export(opts)
    return code


# -- issue 13: checking and using the features (pipeline/verify.py, labels.py, probe.py, plots.py, report.py)


def verify(opts: Options, as_json: bool) -> int:
    """Exit 0 when every done row holds; else one line per problem (stdout) and 1."""
    import json

    from pipeline.verify import verify as check

    v = check(opts.paths.output_dir, opts.paths.db)
    if as_json:
        print(json.dumps(v.as_json(), ensure_ascii=False))
    else:
        for p in v.problems:
            print(p.message)
    for w in v.warnings:
        console.print(f"warning: {w}")
    console.print(f"verify: {v.done} done videos in {v.shards} shards, {v.dim}-d: "
                  + ("all hold" if v.ok else f"{len(v.problems)} problem{'s' if len(v.problems) > 1 else ''}"))
    return 0 if v.ok else 1


def probe(opts: Options, as_json: bool, predict: bool, out: str | None) -> None:
    import json

    from pipeline import probe as probes

    a = opts.analysis
    if predict:
        p = probes.predict(opts.paths.output_dir, opts.paths.db, out)
        if as_json:
            print(json.dumps({"out": str(p.out), "count": p.count, "predicted": p.predicted}))
        console.print(f"scored {p.count} videos: " + ", ".join(f"{k} {v}" for k, v in p.predicted.items()) + f"; {p.out}")
        return
    if not a.labels:
        raise PipelineError("probe needs --labels FILE (DFDC metadata.json, a path,label CSV, or folders), or --predict")
    r = probes.train(opts.paths.output_dir, opts.paths.db, a.labels, a.classifier, a.folds)
    for w in r.warnings:
        console.print(f"warning: {w}")
    if as_json:
        print(json.dumps(r.as_json()))
        return
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    for f in r.folds:
        console.print(f"fold {f['fold']}: {f['n']} videos, AUC {fmt(f['auc'])}, log loss {fmt(f['log_loss'])}, accuracy {fmt(f['accuracy'])}")
    o = r.overall
    console.print(f"overall ({r.kind}, {len(r.folds)} grouped folds, {r.n} videos: "
                  + ", ".join(f"{c} {n}" for c, n in r.counts.items())
                  + f"): AUC {fmt(o['auc'])}, log loss {fmt(o['log_loss'])}, accuracy {fmt(o['accuracy'])}")
    console.print(f"confusion (rows true, columns predicted; {', '.join(r.classes)}): {o['confusion']}")
    console.print(f"classifier saved: {r.classifier_path}")


def plot(opts: Options, out: str | None) -> None:
    from pipeline.plots import plot as draw

    if not opts.analysis.labels:
        raise PipelineError("plot needs --labels FILE (DFDC metadata.json, a path,label CSV, or folders)")
    p = draw(opts.paths.output_dir, opts.paths.db, opts.analysis.labels, opts.analysis.method, out)
    for w in p.warnings:
        console.print(f"warning: {w}")
    console.print(f"plotted {p.n} videos ({', '.join(p.classes)}): " + ", ".join(str(f) for f in p.files))


def report(opts: Options, out: str | None) -> None:
    from pipeline.report import write

    console.print(f"report: {write(opts.paths.output_dir, opts.paths.db, out)}")
