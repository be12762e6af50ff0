"""Scan benchmark: the first scan and a rescan of 100,000 files, through the CLI.

A collection of 10^5 to 10^6 videos is scanned again every time new videos arrive, so
a rescan must cost seconds, not a run's worth of time. The files are empty (the scan
reads names, sizes and mtimes, never contents) in 100 folders of 1,000. Each scan is
timed as the user runs it: a fresh `cli.py scan` process, imports included. Writes
bench/results/scan.json. Used by `make bench` and by tests/test_scan.py.

    python -m bench.scan [N_FILES]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import write_results  # noqa: E402
from pipeline.samples import make_tiny_clip  # noqa: E402

PER_FOLDER = 1000


def make_tree(folder: Path, n_files: int) -> Path:
    """n_files empty .mp4 files, PER_FOLDER to a sub-folder (d000/clip0000.mp4, ...)."""
    for i in range(n_files):
        sub = folder / f"d{i // PER_FOLDER:03d}"
        if i % PER_FOLDER == 0:
            sub.mkdir(parents=True, exist_ok=True)
        (sub / f"clip{i % PER_FOLDER:04d}.mp4").touch()
    return folder


def _timed_scan(args: list[str], timeout: float) -> float:
    started = time.monotonic()
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "scan", *args], check=True, capture_output=True,
                   timeout=timeout)
    return time.monotonic() - started


def measure(n_files: int = 100_000, workdir: Path | None = None, model: dict[str, str] | None = None,
            timeout: float = 600) -> dict:
    """Time a first scan (every file new) and a rescan (nothing changed) of n_files files."""
    work = Path(workdir or tempfile.mkdtemp(prefix="bench_scan_"))
    src = work / "many"
    make_tree(src, n_files)
    model = model or make_tiny_clip(work / "model")
    out = work / "out"
    first = _timed_scan(["--video-dir", str(src), "--output-dir", str(out), "--model", model["model"],
                         "--pretrained", model["pretrained"]], timeout)
    again = _timed_scan(["--video-dir", str(src), "--output-dir", str(out)], timeout)
    return {"files": n_files, "first_scan_s": round(first, 2), "rescan_s": round(again, 2),
            "first_files_per_s": round(n_files / first), "rescan_files_per_s": round(n_files / again),
            "output_dir": str(out)}


def report(r: dict) -> str:
    return "\n".join([
        f"scan of {r['files']:,} files (a fresh CLI process each, imports included)",
        "             seconds   files/s",
        f"first scan  {r['first_scan_s']:>8.1f}  {r['first_files_per_s']:>8,}",
        f"rescan      {r['rescan_s']:>8.1f}  {r['rescan_files_per_s']:>8,}",
    ])


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    with tempfile.TemporaryDirectory(prefix="bench_scan_") as work:
        r = measure(n, Path(work))
    del r["output_dir"]
    print(report(r))
    write_results("scan", r)


if __name__ == "__main__":
    main()
