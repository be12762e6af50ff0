"""Start-up: what a run pays before its first video is encoded, and an idle run's answer.

A run is restarted often (a Slurm requeue, a crash, a new batch of videos), and each
start pays a fixed cost: Python, the CLI's imports, torch and open_clip, the model
build, the decode workers' spawn. Decode workers now start first and decode while the
rest loads (docs/design/startup.md), so the cost that remains is what the run adds to
the decoding of its first batch:

- **fixed cost** = the run's wall time (launch to exit) minus the decode time of its
  first batch, on a job of exactly one batch; the target (issue 11) is at most 1.5 s.
  The first batch's decode time is measured apart: the same videos through a DecodePool
  of the run's workers and spec, timed from the first submit to the last result.
- **time to first feature**: launch to the run's "first features" log line.
- **idle run**: `run` on a job with nothing left (answered from the manifest, no torch).
- the load's floor: the least fixed cost the model's load alone (torch and open_clip's
  imports, the build; measured apart) imposes on this box's cores, whatever the project
  does (`load_floor`): all of it when the first batch decodes faster than it loads, its
  CPU over the cores when the decode hides it.
- the components, each in a fresh process or from the run's own log: Python, `import cli`,
  `import torch`, `import open_clip`, the model build, workers started, first decode,
  model loaded, first features, and the process exit after the run's last line.

Each figure is the minimum over REPEATS (the machine is shared: the minimum is the
least disturbed). Writes bench/results/startup.json.

    python -m bench.startup [REPEATS] [--model tiny|ViT-B-32|...] [--dfdc N]

`--dfdc N`: the first batch is N DFDC-like clips (10 s of 1080p H.264, as
bench/throughput.py's), long enough to decode that the model's load can hide behind it.

`tiny` (the default) is the tests' tiny CLIP from its checkpoint: the start-up is all
there is to measure, the encode of one batch takes no time. A named model is built with
random weights (`--pretrained none`); on a CPU its encode of the batch then counts in
the fixed cost (it is work the GPU would do in milliseconds).
"""

from __future__ import annotations

import argparse
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import write_results  # noqa: E402
from pipeline.samples import make_clips, make_tiny_clip, make_video  # noqa: E402

WORKERS, NUM_FRAMES = 2, 8


def dfdc_batch(folder: Path, batch: int) -> Path:
    """`batch` DFDC-like videos (bench/throughput.py's spec: 10 s of 1080p H.264, GOP 250, 3
    B-frames; the sample videos' content): two distinct clips, each linked batch / 2 times
    (each link is decoded as its own video)."""
    from bench.throughput import corpora

    dfdc = next(c.spec for c in corpora(quick=False) if c.name == "dfdc_1080p_h264")
    videos = folder / "videos"
    videos.mkdir(parents=True)
    clips = [make_video(folder / "distinct" / f"c{i}.mp4", replace(dfdc, frames=dfdc.frames + i)) for i in range(2)]
    for i in range(batch):
        (videos / f"v{i:03d}.mp4").symlink_to(clips[i % 2])
    return videos


TARGET_S = 1.5
# Log lines of a run (pipeline/engine.py) -> the component they end.
MARKS = {
    "run started": "log opened",
    "decode workers started": "workers started",
    "first video decoded": "first video decoded",
    "model loaded": "model loaded",
    "first features": "first features",
    " finished: ": "run's last line",
}


def _seconds(code: str) -> float:
    """Seconds a fresh Python spends on `code` (its own clock, so spawn is not counted)."""
    out = subprocess.run([sys.executable, "-c", f"import time; t = time.perf_counter()\n{code}\n"
                          "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True, cwd=ROOT)
    return float(out.stdout.strip().splitlines()[-1])


def _launch_to_exit(args: list[str]) -> tuple[float, float, subprocess.CompletedProcess]:
    launched = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, cwd=ROOT)
    return launched, time.time(), proc


def _timeline(log: Path, launched: float) -> dict[str, float]:
    marks: dict[str, float] = {}
    for line in log.read_text().splitlines():
        try:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        for words, name in MARKS.items():
            if words in line and name not in marks:
                marks[name] = round(at - launched, 3)
    return marks


def _reset(out: Path) -> None:
    """Every video pending again; the job's settings (its recorded geometry too) kept, as
    for a restarted job."""
    with sqlite3.connect(out / "manifest.sqlite") as c:
        c.execute("UPDATE videos SET status='pending', owner=NULL, lease_until=NULL, claims=0, attempts=0, "
                  "error=NULL, shard=NULL, shard_index=NULL")
        c.execute("DELETE FROM runs")
    for f in (out / "shards").glob("*"):
        f.unlink()


def load_floor(decode_s: float, load_s: float, workers: int, cores: int) -> float:
    """The least fixed cost the model's load alone imposes on this box, whatever the project
    does: the run must both decode the batch (its workers busy `decode_s` on min(workers,
    cores) cores) and load the model (`load_s` of one core: imports and build), so its wall
    is at least max(decode_s, load_s, (decode_s x busy + load_s) / cores); minus decode_s.
    With the decode long enough to hide the load, on every core, that is load_s / cores:
    the imports' CPU taken from the decoders."""
    busy = min(workers, cores)
    return max(decode_s, load_s, (decode_s * busy + load_s) / cores) - decode_s


def first_batch_decode(videos: list[Path], model: str) -> float:
    """The first batch's videos through the run's own DecodePool and spec, timed from the
    first submit to the last result (workers already started: spawning is start-up)."""
    from pipeline.models import geometry_hint
    from pipeline.settings import JobSettings, RunSettings
    from pipeline.workers import DecodePool, DecodeSpec, Task

    geometry = geometry_hint(JobSettings(model=model))
    assert geometry is not None
    spec = DecodeSpec(NUM_FRAMES, geometry, threads=RunSettings(num_workers=WORKERS).threads_per_worker())
    pool = DecodePool(WORKERS, spec)
    try:
        for i in range(WORKERS):  # every worker has started and decoded one file first
            pool.submit(Task(-1 - i, str(videos[i])))
        while pool.in_flight:
            pool.poll(1.0)
        started, todo, got = time.monotonic(), list(videos), 0
        while got < len(videos):
            while todo and pool.capacity:
                pool.submit(Task(len(todo), str(todo.pop())))
            results = pool.poll(1.0)
            assert all(r.error is None for r in results), [r.error for r in results]
            got += len(results)
        return time.monotonic() - started
    finally:
        pool.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("repeats", nargs="?", type=int, default=3)
    ap.add_argument("--model", default="tiny", help="tiny (the tests' CLIP), or a model built with random weights")
    ap.add_argument("--dfdc", type=int, default=0, metavar="N",
                    help="a first batch of N DFDC-like clips (10 s of 1080p) instead of 8 small ones")
    args = ap.parse_args()
    batch = args.dfdc or 8
    run_args = ["--gpu", "cpu", "--num-workers", str(WORKERS), "--batch-size", str(batch)]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    tmp = Path(tempfile.mkdtemp(prefix="bench_startup_"))
    src = dfdc_batch(tmp, batch) if args.dfdc else make_clips(tmp / "videos", batch, width=640, height=360, frames=90, vary=1)
    what = f"{batch} DFDC-like videos 1920x1080 x 300 frames" if args.dfdc else f"{batch} videos 640x360 x 90 frames"
    out = tmp / "job"
    if args.model == "tiny":
        tiny = make_tiny_clip(tmp / "model")
        model, weights = tiny["model"], tiny["pretrained"]
    else:
        model, weights = args.model, "none"
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "scan", "--video-dir", str(src), "--output-dir", str(out),
                    "--model", model, "--pretrained", weights], check=True, capture_output=True, cwd=ROOT)
    _launch_to_exit(["run", "--output-dir", str(out), *run_args])  # the first run records the job's geometry

    runs, idles, decodes = [], [], []
    for _ in range(args.repeats):
        _reset(out)
        launched, ended, proc = _launch_to_exit(["run", "--output-dir", str(out), *run_args])
        if proc.returncode != 0 or not re.search(rf"run finished: {batch} done", proc.stderr):
            raise SystemExit(f"run failed: {proc.stderr[-2000:]}")
        log = Path(re.search(r"log: (\S+)", proc.stderr).group(1))
        runs.append({"wall_s": round(ended - launched, 3), **_timeline(log, launched)})
        launched, ended, proc = _launch_to_exit(["run", "--output-dir", str(out), *run_args])
        assert proc.returncode == 0 and "run finished: 0 done" in proc.stderr, proc.stderr
        idles.append(ended - launched)
        decodes.append(first_batch_decode(sorted(src.glob("*.mp4")), model))
    best = min(runs, key=lambda r: r["wall_s"])
    decode = min(decodes)
    components = {
        "python -c pass": min(_seconds("pass") for _ in range(args.repeats)),
        "import cli": min(_seconds("import cli") for _ in range(args.repeats)),
        "import torch": min(_seconds("import torch") for _ in range(args.repeats)),
        "import open_clip (torch included)": min(_seconds("import open_clip") for _ in range(args.repeats)),
        f"load {args.model} (imports done)": min(
            _seconds(f"import open_clip, torch\nfrom pipeline.models import load_model\nfrom pipeline.settings import JobSettings\n"
                     f"t = time.perf_counter()\nload_model(JobSettings(model={model!r}, pretrained={weights!r}))")
            for _ in range(args.repeats)),
    }
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    load = components["import open_clip (torch included)"] + components[f"load {args.model} (imports done)"]
    floor = load_floor(decode, load, WORKERS, cores)
    result = {
        "model": args.model, "videos": batch, "clips": what, "workers": WORKERS, "batch_size": batch, "repeats": args.repeats,
        "run_wall_s": best["wall_s"],
        "first_batch_decode_s": round(decode, 3),
        "fixed_cost_s": round(best["wall_s"] - decode, 3),
        "target_fixed_cost_s": TARGET_S,
        "cores": cores,
        "load_floor_s": round(floor, 3),
        "time_to_first_feature_s": best.get("first features"),
        "idle_run_s": round(min(idles), 3),
        "timeline_s": best,
        "exit_after_last_line_s": round(best["wall_s"] - best.get("run's last line", best["wall_s"]), 3),
        "components_s": {k: round(v, 3) for k, v in components.items()},
        "runs": runs,
    }
    print(f"\nstart-up, model {args.model}, {what} = one batch, "
          f"{WORKERS} workers, min of {args.repeats}")
    rows = [
        ("run, launch to exit", result["run_wall_s"]),
        ("first batch's decode alone", result["first_batch_decode_s"]),
        (f"fixed cost (target <= {TARGET_S})", result["fixed_cost_s"]),
        (f"  of which the model's load alone, at least ({cores} cores)", result["load_floor_s"]),
        ("time to first feature", result["time_to_first_feature_s"]),
        ("idle run (nothing left)", result["idle_run_s"]),
        ("process exit after the run's last log line", result["exit_after_last_line_s"]),
    ]
    rows += [(f"  timeline: {k}", v) for k, v in best.items() if k != "wall_s"]
    rows += [(f"  component: {k}", v) for k, v in result["components_s"].items()]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v if v is not None else '-':>7} s")
    write_results("startup-dfdc" if args.dfdc else "startup", result)


if __name__ == "__main__":
    main()
