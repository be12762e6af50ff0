"""Memory benchmark: resident memory of one `run` over many small videos stays flat.

Samples the RSS of the run process and of its decode workers while it works, prints
the curve, and compares the first and last quarters of the work. Writes
bench/results/memory.json. Used by `make bench` and by tests/faults/test_memory.py.

    python -m bench.memory [N_VIDEOS]
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import write_results  # noqa: E402
from pipeline.samples import make_clips, make_tiny_clip  # noqa: E402


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def measure(n_videos: int = 2000, workdir: Path | None = None, interval: float = 0.2) -> dict:
    work = Path(workdir or tempfile.mkdtemp(prefix="bench_memory_"))
    src = work / "videos"
    if not src.is_dir() or len(list(src.iterdir())) != n_videos:
        make_clips(src, n_videos, width=48, height=32, frames=5, vary=4)
    tiny = make_tiny_clip(work / "model")
    out = work / "out"
    cli = [sys.executable, str(ROOT / "cli.py")]
    subprocess.run([*cli, "scan", "--video-dir", str(src), "--output-dir", str(out), "--model", tiny["model"],
                    "--pretrained", tiny["pretrained"]], check=True, capture_output=True)
    run = subprocess.Popen([*cli, "run", "--output-dir", str(out), "--gpu", "cpu", "--batch-size", "16",
                            "--shard-size", "64"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    db = sqlite3.connect(out / "manifest.sqlite", timeout=30)
    curve = []  # (done, main rss kB, workers rss kB)
    while run.poll() is None:
        done = db.execute("SELECT count(*) FROM videos WHERE status='done'").fetchone()[0]
        curve.append((done, rss_kb(run.pid), sum(rss_kb(c) for c in children(run.pid))))
        time.sleep(interval)
    err = run.stderr.read().decode()
    if run.returncode != 0:
        raise RuntimeError(f"run failed: {err}")
    db.close()
    working = [c for c in curve if 0 < c[0] < n_videos]  # while videos flow
    q = max(1, len(working) // 4)
    first, last = working[:q], working[-q:]

    def mean(rows: list, k: int) -> float:
        return sum(r[k] for r in rows) / len(rows)

    result = {
        "videos": n_videos,
        "samples": len(working),
        "main_first_quarter_mb": mean(first, 1) / 1024,
        "main_last_quarter_mb": mean(last, 1) / 1024,
        "main_growth": mean(last, 1) / mean(first, 1) - 1,
        "workers_first_quarter_mb": mean(first, 2) / 1024,
        "workers_last_quarter_mb": mean(last, 2) / 1024,
        "workers_growth": mean(last, 2) / max(mean(first, 2), 1) - 1,
        "curve": [{"done": d, "main_mb": round(m / 1024, 1), "workers_mb": round(w / 1024, 1)} for d, m, w in working],
    }
    return result


def report(r: dict) -> str:
    lines = [f"memory over {r['videos']} videos ({r['samples']} samples)", "done    main MB  workers MB"]
    step = max(1, len(r["curve"]) // 12)
    lines += [f"{c['done']:>5}  {c['main_mb']:>8.1f}  {c['workers_mb']:>10.1f}" for c in r["curve"][::step]]
    lines.append(f"main: first quarter {r['main_first_quarter_mb']:.1f} MB, last {r['main_last_quarter_mb']:.1f} MB, "
                 f"growth {100 * r['main_growth']:+.1f}%")
    lines.append(f"workers: first quarter {r['workers_first_quarter_mb']:.1f} MB, last "
                 f"{r['workers_last_quarter_mb']:.1f} MB, growth {100 * r['workers_growth']:+.1f}%")
    return "\n".join(lines)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    r = measure(n, ROOT / "bench" / "cache" / f"memory_{n}")
    print(report(r))
    write_results("memory", r)


if __name__ == "__main__":
    main()
