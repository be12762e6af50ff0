"""Sources benchmark (issue 12): decoding a video through each kind of source against the same file on disk,
and the scan of N objects on an S3 emulator.

For each row (a kind of source), the same corpus is put where that source reads it (a
stored zip, a deflated zip, a tar, moto's S3 server: bench/remote.py) and every video is
decoded as a run decodes it (`sources.open_video`, then the CPU decoder's plan, 8 exact
frames, one FFmpeg thread):
- decode cost per video (median over the corpus of the best of REPEATS): CPU seconds of
  this process (for S3 that includes fsspec's I/O thread; the server is another process)
  and wall seconds (for S3 that includes the requests' latency), each against the local
  file's (targets: a stored zip member within 10%, the S3 emulator within 25%);
- bytes read per video (the process's read() bytes, /proc/self/io `rchar`, plus for S3 the
  bytes the block cache fetched) against the file's size.
The rows are interleaved video by video so a busy machine slows them alike. A new kind of
source is one function in ROWS: it gets the corpus and a scratch folder and returns the
names `open_video` opens, in corpus order. Then the scan of N_OBJECTS objects on the
emulator: listing, the scanner's diff and bulk insert, and `cli.py scan` twice (first scan,
rescan) unless --no-cli. One table; writes bench/results/sources.json.

    python -m bench.sources [N_OBJECTS] [--repeats N] [--no-cli]   (N_OBJECTS: default 100000)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import remote, write_results  # noqa: E402
from pipeline.decoders import DecodeError, sample_frames  # noqa: E402
from pipeline.samples import Spec, make_video  # noqa: E402
from pipeline.sources import open_video  # noqa: E402

REALVIDEOS = ROOT.parent / "shared" / "realvideos"
EXTENSIONS = (".mp4", ".mkv", ".webm", ".mov", ".avi")
MIN_BYTES = 200_000  # below FFmpeg's few read buffers a file is read whole whatever the source
N_FRAMES = 8


def local(corpus: list[Path], work: Path) -> list[str]:
    return [str(p) for p in corpus]


def _zip(corpus: list[Path], archive: Path, compression: int) -> list[str]:
    with zipfile.ZipFile(archive, "w", compression) as zf:
        for i, p in enumerate(corpus):
            zf.write(p, f"part/{i:03d}_{p.name}")
    return [f"{archive}::part/{i:03d}_{p.name}" for i, p in enumerate(corpus)]


def stored_zip(corpus: list[Path], work: Path) -> list[str]:
    return _zip(corpus, work / "stored.zip", zipfile.ZIP_STORED)


def deflated_zip(corpus: list[Path], work: Path) -> list[str]:
    return _zip(corpus, work / "deflated.zip", zipfile.ZIP_DEFLATED)


def tar(corpus: list[Path], work: Path) -> list[str]:
    with tarfile.open(work / "clips.tar", "w") as tf:
        for i, p in enumerate(corpus):
            tf.add(p, f"part/{i:03d}_{p.name}")
    return [f"{work / 'clips.tar'}::part/{i:03d}_{p.name}" for i, p in enumerate(corpus)]


# source -> where it reads the corpus from. "local" is the baseline the others are held to.
ROWS: dict[str, Callable[[list[Path], Path], list[str]]] = {
    "local": local,
    "zip (stored)": stored_zip,
    "zip (deflated)": deflated_zip,
    "tar": tar,
    "s3 (emulator)": remote.s3,
}
TARGETS = {"zip (stored)": 1.10, "s3 (emulator)": 1.25}  # decode cost against local, at most


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _decode(name: str) -> tuple[float, float, int]:
    """CPU seconds, wall seconds and bytes read to open and decode one video's frames as a run does.

    Bytes read are the file reads `rchar` counts plus, for a remote object, the bytes its
    block cache fetched (socket reads are not in `rchar`)."""
    read0, cpu0, wall0 = _rchar(), time.process_time(), time.perf_counter()
    f = open_video(name)
    fetched = [0]
    cache = getattr(f, "cache", None)
    if cache is not None and hasattr(cache, "fetcher"):  # an fsspec file (pipeline/sources/remote.py)
        fetch = cache.fetcher

        def counted(start: int, end: int) -> bytes:
            data = fetch(start, end)
            fetched[0] += len(data)
            return data

        cache.fetcher = counted
    try:
        sample_frames(f, N_FRAMES, threads=1)
    finally:
        if not isinstance(f, str):
            f.close()
    return time.process_time() - cpu0, time.perf_counter() - wall0, _rchar() - read0 + fetched[0]


def corpus_files(work: Path) -> list[Path]:
    """The real-world videos big enough to tell a seek from a full read; synthetic long-GOP
    clips where that folder is missing."""
    found = sorted(p for p in REALVIDEOS.glob("*") if p.suffix.lower() in EXTENSIONS and p.stat().st_size >= MIN_BYTES) \
        if REALVIDEOS.is_dir() else []
    usable = []
    for p in found:
        try:
            sample_frames(str(p), N_FRAMES)
            usable.append(p)
        except DecodeError:
            continue
    if usable:
        return usable
    return [make_video(work / "synthetic" / f"c{i}.mp4", Spec("c.mp4", 300, 640, 360, gop=250, bframes=3))
            for i in range(3)]


def measure(repeats: int = 3, n_objects: int = 100_000, cli: bool = True, workdir: Path | None = None) -> dict:
    """The decode rows and the scan rows, all under one S3 emulator."""
    work = Path(workdir or tempfile.mkdtemp(prefix="bench_sources_"))
    with remote.emulator(n_objects) as created_s:
        result = _decode_rows(repeats, work)
        scan = remote.scan_rows(work, cli)
    return {**result, "scan": {"objects": n_objects, "create_objects_s": created_s, **scan}}


def _decode_rows(repeats: int, work: Path) -> dict:
    corpus = corpus_files(work)
    names = {row: make(corpus, work) for row, make in ROWS.items()}
    cost: dict[str, list[float]] = {row: [] for row in ROWS}
    wall: dict[str, list[float]] = {row: [] for row in ROWS}
    read: dict[str, list[int]] = {row: [] for row in ROWS}
    for i in range(len(corpus)):
        best: dict[str, float] = {row: float("inf") for row in ROWS}
        best_wall: dict[str, float] = {row: float("inf") for row in ROWS}
        nread: dict[str, int] = {}
        for _ in range(repeats):
            for row in ROWS:
                seconds, wall_s, nbytes = _decode(names[row][i])
                best[row] = min(best[row], seconds)
                best_wall[row] = min(best_wall[row], wall_s)
                nread[row] = nbytes  # the same every time: the plan is deterministic
        for row in ROWS:
            cost[row].append(best[row])
            wall[row].append(best_wall[row])
            read[row].append(nread[row])
    sizes = [p.stat().st_size for p in corpus]
    rows = []
    for row in ROWS:
        ratios = [c / b for c, b in zip(cost[row], cost["local"]) if b > 0]
        wall_ratios = [c / b for c, b in zip(wall[row], wall["local"]) if b > 0]
        rows.append({
            "source": row,
            "videos": len(corpus),
            "decode_ms_per_video": round(1000 * statistics.median(cost[row]), 2),
            "decode_vs_local": round(statistics.median(ratios), 3),
            "wall_ms_per_video": round(1000 * statistics.median(wall[row]), 2),
            "wall_vs_local": round(statistics.median(wall_ratios), 3),
            "bytes_read_per_video": round(statistics.mean(read[row])),
            "read_vs_size": round(sum(read[row]) / sum(sizes), 3),
            "target_vs_local": TARGETS.get(row),
        })
    return {"corpus": [p.name for p in corpus], "mean_size": round(statistics.mean(sizes)), "repeats": repeats,
            "rows": rows}


def print_table(result: dict) -> None:
    print(f"sources: {len(result['corpus'])} videos, mean {result['mean_size'] / 1e6:.2f} MB, "
          f"{N_FRAMES} frames each, best of {result['repeats']}")
    print(f"{'source':<16} {'cpu ms/video':>13} {'vs local':>9} {'wall ms/video':>14} {'vs local':>9} {'target':>7} "
          f"{'bytes read/video':>17} {'read/size':>10}")
    for r in result["rows"]:
        target = f"<={r['target_vs_local']:.2f}" if r["target_vs_local"] else ""
        print(f"{r['source']:<16} {r['decode_ms_per_video']:>13.2f} {r['decode_vs_local']:>9.3f} "
              f"{r['wall_ms_per_video']:>14.2f} {r['wall_vs_local']:>9.3f} {target:>7} "
              f"{r['bytes_read_per_video']:>17,} {r['read_vs_size']:>10.3f}")
    s = result["scan"]
    print(f"scan of {s['objects']:,} objects on the S3 emulator (created in {s['create_objects_s']} s in moto's backend): "
          f"listing {s['list_s']} s ({s['listed']:,} listed), diff and bulk insert {s['register_s']} s"
          + (f"; `cli.py scan`: first {s['cli_first_scan_s']} s, rescan {s['cli_rescan_s']} s"
             if "cli_first_scan_s" in s else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n_objects", type=int, nargs="?", default=100_000, help="objects for the scan rows")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-cli", action="store_true", help="the scan rows in process only")
    args = parser.parse_args()
    result = measure(args.repeats, args.n_objects, not args.no_cli)
    print_table(result)
    write_results("sources", result)


if __name__ == "__main__":
    main()
