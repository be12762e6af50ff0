"""Sources benchmark: decoding a video through each kind of source against the same file on disk.

For each row (a kind of source), the same corpus is put where that source reads it (a
stored zip, a deflated zip, a tar...) and every video is decoded as a run decodes it
(`sources.open_video`, then the CPU decoder's plan, 8 exact frames, one FFmpeg thread):
- decode cost: CPU seconds per video (median over the corpus of the best of REPEATS),
  and its ratio to the local file's (target for a stored zip member: within 10%);
- bytes read per video (the process's read() bytes, /proc/self/io `rchar`) against the
  file's size: the plan seeks, so a long-GOP file is read far less than whole.
The rows are interleaved video by video so a busy machine slows them alike. A new kind of
source is one function in ROWS: it gets the corpus and a scratch folder and returns the
names `open_video` opens, in corpus order. Writes bench/results/sources.json.

    python -m bench.sources [--repeats N]
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

from bench import write_results  # noqa: E402
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
}
TARGETS = {"zip (stored)": 1.10}  # decode cost against local, at most


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("rchar:"))


def _decode(name: str) -> tuple[float, int]:
    """CPU seconds and bytes read to decode one video's frames as a run does."""
    read0, cpu0 = _rchar(), time.process_time()
    sample_frames(open_video(name), N_FRAMES, threads=1)
    return time.process_time() - cpu0, _rchar() - read0


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


def measure(repeats: int = 3, workdir: Path | None = None) -> dict:
    work = Path(workdir or tempfile.mkdtemp(prefix="bench_sources_"))
    corpus = corpus_files(work)
    names = {row: make(corpus, work) for row, make in ROWS.items()}
    cost: dict[str, list[float]] = {row: [] for row in ROWS}
    read: dict[str, list[int]] = {row: [] for row in ROWS}
    for i in range(len(corpus)):
        best: dict[str, float] = {row: float("inf") for row in ROWS}
        nread: dict[str, int] = {}
        for _ in range(repeats):
            for row in ROWS:
                seconds, nbytes = _decode(names[row][i])
                best[row] = min(best[row], seconds)
                nread[row] = nbytes  # the same every time: the plan is deterministic
        for row in ROWS:
            cost[row].append(best[row])
            read[row].append(nread[row])
    sizes = [p.stat().st_size for p in corpus]
    rows = []
    for row in ROWS:
        ratios = [c / b for c, b in zip(cost[row], cost["local"]) if b > 0]
        rows.append({
            "source": row,
            "videos": len(corpus),
            "decode_ms_per_video": round(1000 * statistics.median(cost[row]), 2),
            "decode_vs_local": round(statistics.median(ratios), 3),
            "bytes_read_per_video": round(statistics.mean(read[row])),
            "read_vs_size": round(sum(read[row]) / sum(sizes), 3),
            "target_vs_local": TARGETS.get(row),
        })
    return {"corpus": [p.name for p in corpus], "mean_size": round(statistics.mean(sizes)), "repeats": repeats,
            "rows": rows}


def print_table(result: dict) -> None:
    print(f"sources: {len(result['corpus'])} videos, mean {result['mean_size'] / 1e6:.2f} MB, "
          f"{N_FRAMES} frames each, best of {result['repeats']}")
    print(f"{'source':<16} {'decode ms/video':>16} {'vs local':>9} {'target':>7} {'bytes read/video':>17} {'read/size':>10}")
    for r in result["rows"]:
        target = f"<={r['target_vs_local']:.2f}" if r["target_vs_local"] else ""
        print(f"{r['source']:<16} {r['decode_ms_per_video']:>16.2f} {r['decode_vs_local']:>9.3f} {target:>7} "
              f"{r['bytes_read_per_video']:>17,} {r['read_vs_size']:>10.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = measure(args.repeats)
    print_table(result)
    write_results("sources", result)


if __name__ == "__main__":
    main()
