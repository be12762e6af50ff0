"""Stop latency: how long a run takes to stop after a signal, and what the stop charged.

The tests only bound these generously (a shared 2-core CI box is noisy); this measures
them. Each case starts a run on small clips, waits until it has committed something,
sends the signal as its source would (a terminal's Ctrl-C and Slurm's SIGTERM reach the
whole process group; a second Ctrl-C follows the first one's message), and times the
exit. Writes bench/results/stop.json.

    python -m bench.stop [REPEATS]
"""

from __future__ import annotations

import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import write_results  # noqa: E402
from pipeline.samples import make_clips, make_tiny_clip  # noqa: E402

CASES = {
    "SIGINT to the group (Ctrl-C)": (signal.SIGINT, 1),
    "SIGTERM to the group (Slurm)": (signal.SIGTERM, 1),
    "SIGHUP to the group (terminal closed)": (signal.SIGHUP, 1),
    "second Ctrl-C (quit now)": (signal.SIGINT, 2),
}
RUN = ["--gpu", "cpu", "--num-workers", "2", "--batch-size", "2", "--shard-size", "2"]


def _scalar(db: Path, sql: str) -> int:
    with sqlite3.connect(db, timeout=30) as c:
        return int(c.execute(sql).fetchone()[0])


def stop_once(out: Path, sig: int, times: int) -> dict:
    cli = [sys.executable, str(ROOT / "cli.py")]
    db = out / "manifest.sqlite"
    with sqlite3.connect(db) as c:  # every case starts from the same job: nothing done, nothing charged
        c.execute("UPDATE videos SET status='pending', owner=NULL, lease_until=NULL, claims=0, attempts=0, "
                  "error=NULL, shard=NULL, shard_index=NULL")
    proc = subprocess.Popen([*cli, "run", "--output-dir", str(out), *RUN], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, text=True)
    while _scalar(db, "SELECT count(*) FROM videos WHERE status='done'") == 0:
        if proc.poll() is not None:
            raise RuntimeError(f"run ended before it could be stopped: {proc.stderr.read()}")
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    sent = time.monotonic()
    if times == 2:
        buf = ""
        while "press Ctrl-C again" not in buf:
            buf += proc.stderr.readline()
        os.kill(proc.pid, sig)
        sent = time.monotonic()
    proc.wait(timeout=120)
    took = time.monotonic() - sent
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # any worker of a hard stop; the next run reaps
    except ProcessLookupError:
        pass
    return {
        "seconds": took,
        "exit": proc.returncode,
        "charged": _scalar(db, "SELECT count(*) FROM videos WHERE attempts > 0 OR status = 'failed'"),
    }


def measure(repeats: int = 3, workdir: Path | None = None) -> dict:
    work = Path(workdir or tempfile.mkdtemp(prefix="bench_stop_"))
    src = work / "videos"
    if not src.is_dir():
        make_clips(src, 200, width=64, height=48, frames=20, vary=5)
    tiny = make_tiny_clip(work / "model")
    out = work / "out"
    if not (out / "manifest.sqlite").exists():
        subprocess.run([sys.executable, str(ROOT / "cli.py"), "scan", "--video-dir", str(src), "--output-dir", str(out),
                        "--model", tiny["model"], "--pretrained", tiny["pretrained"]], check=True, capture_output=True)
    results = {}
    for name, (sig, times) in CASES.items():
        runs = [stop_once(out, sig, times) for _ in range(repeats)]
        results[name] = {
            "median_s": statistics.median(r["seconds"] for r in runs),
            "max_s": max(r["seconds"] for r in runs),
            "exits": sorted({r["exit"] for r in runs}),
            "charged": sum(r["charged"] for r in runs),
        }
    return {"repeats": repeats, "cases": results}


def report(r: dict) -> str:
    lines = [f"stop latency ({r['repeats']} runs each)", f"{'case':<40} {'median s':>9} {'max s':>7}  exit  charged"]
    for name, c in r["cases"].items():
        lines.append(f"{name:<40} {c['median_s']:>9.2f} {c['max_s']:>7.2f}  {','.join(map(str, c['exits'])):<5} "
                     f"{c['charged']:>7}")
    return "\n".join(lines)


def main() -> None:
    repeats = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    r = measure(repeats, ROOT / "bench" / "cache" / "stop")
    print(report(r))
    write_results("stop", r)


if __name__ == "__main__":
    main()
