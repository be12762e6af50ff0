"""After the run, at scale: parquet export of N x 512 features, and the faiss index at 10^5 and 10^6.

- parquet: N x 512 synthetic unit features written through the real ParquetExport,
  a row group per 65,536 rows as `export` writes them, in a child process whose peak
  resident memory (ru_maxrss) is reported with its baseline after imports: the export
  streams, so the peak must not grow with N (N x 512 float32 is 2 GB at 10^6).
- index: clustered synthetic unit vectors (1,000 centres), the exact index (IndexFlatIP)
  and the IVF one the `index` command builds (pipeline/index.py: nlist ~ 4 sqrt(N),
  trained on a sample, nprobe chosen for recall@10 >= 0.95 on the data's own rows); build
  seconds, single-query latency (p50, p99 over 100 queries) and recall@10 of held-out
  queries against the exact answer. At 10^6 the IVF quantiser is trained on 39 rows per
  list (faiss's minimum) so the benchmark runs in minutes on 2 cores.
Writes bench/results/index.json.

    python -m bench.index                      # 10^5 and 10^6, parquet at 10^6
    python -m bench.index 100000 --parquet 100000
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import write_results  # noqa: E402
from pipeline.index import build_ivf, choose_nprobe, ivf_lists, recall_at  # noqa: E402

DIM = 512
CHUNK = 65536
QUERIES = 100

_CHILD = r"""
import json, resource, sys, time
from pathlib import Path
import numpy as np
sys.path.insert(0, sys.argv[1])
from pipeline.exports.parquet import ParquetExport
from pipeline.exports.base import RowFacts
out, n, dim, chunk = Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
job = {"model": "ViT-B-32", "pretrained": "openai", "num_frames": "8", "sampling": "exact", "save_frames": "false"}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
w = ParquetExport(out, n, dim, job)
for start in range(0, n, chunk):
    m = min(chunk, n - start)
    x = rng.standard_normal((m, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    w.write([f"/data/videos/{i:08d}.mp4" for i in range(start, start + m)], x,
            RowFacts([300] * m, [[0, 43, 85, 128, 171, 214, 256, 299]] * m))
w.close()
seconds = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"seconds": seconds, "peak_rss_mb": peak / 1024, "baseline_rss_mb": base / 1024,
                  "file_mb": (out / "features.parquet").stat().st_size / 2**20}))
"""


def bench_parquet(n: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-parquet-") as d:
        out = subprocess.run([sys.executable, "-c", _CHILD, str(ROOT), d, str(n), str(DIM), str(CHUNK)],
                             capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    r.update(rows=n, dim=DIM, rows_per_s=n / r["seconds"], raw_mb=n * DIM * 4 / 2**20)
    return r


def clustered(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        x = centres[rng.integers(0, len(centres), m)] + rng.standard_normal((m, centres.shape[1]), dtype=np.float32) * (
            0.6 / np.sqrt(centres.shape[1]))
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latency(index: object, queries: np.ndarray, k: int = 10) -> tuple[float, float]:
    times = []
    for q in queries:
        t = time.perf_counter()
        index.search(q[None, :], k)  # type: ignore[attr-defined]
        times.append(time.perf_counter() - t)
    return float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def bench_index(n: int) -> list[dict]:
    import faiss

    rng = np.random.default_rng(n)
    centres = rng.standard_normal((1000, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    data, queries = clustered(n, rng, centres), clustered(QUERIES, rng, centres)
    rows = []
    t = time.perf_counter()
    flat = faiss.IndexFlatIP(DIM)
    flat.add(data)
    build = time.perf_counter() - t
    p50, p99 = latency(flat, queries)
    _, truth = flat.search(queries, 10)
    rows.append(dict(n=n, kind="flat", build_s=build, p50_ms=p50, p99_ms=p99, recall_at_10=1.0))
    del flat
    nlist = ivf_lists(n)
    train = 39 * nlist if n >= 1_000_000 else None
    t = time.perf_counter()
    ivf, trained = build_ivf(data, nlist, train_rows=train)
    nprobe, chosen = choose_nprobe(ivf, data)
    build = time.perf_counter() - t
    ivf.nprobe = nprobe
    p50, p99 = latency(ivf, queries)
    _, found = ivf.search(queries, 10)
    rows.append(dict(n=n, kind="ivf", build_s=build, p50_ms=p50, p99_ms=p99, recall_at_10=recall_at(found, truth),
                     nlist=nlist, nprobe=nprobe, trained_on=trained, recall_at_10_choice=chosen))
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="*", type=int, default=[100_000, 1_000_000])
    ap.add_argument("--parquet", type=int, default=1_000_000, help="rows of the parquet export (0: skip)")
    args = ap.parse_args(argv)
    import os

    # The machine's load when it ran: on a shared box the figures are upper bounds.
    result: dict = {"dim": DIM, "index": [], "cpus": os.cpu_count(), "load_average_at_start": os.getloadavg()}
    if args.parquet:
        p = bench_parquet(args.parquet)
        result["parquet"] = p
        print(f"parquet export: {p['rows']:,} x {DIM} in {p['seconds']:.1f} s ({p['rows_per_s']:,.0f} rows/s), "
              f"peak RSS {p['peak_rss_mb']:.0f} MB (baseline {p['baseline_rss_mb']:.0f} MB; raw features "
              f"{p['raw_mb']:.0f} MB), file {p['file_mb']:.0f} MB")
    print(f"{'vectors':>10} {'index':>5} {'build s':>8} {'p50 ms':>8} {'p99 ms':>8} {'recall@10':>9}  params")
    for n in args.sizes:
        for r in bench_index(n):
            result["index"].append(r)
            params = f"nlist {r['nlist']}, nprobe {r['nprobe']}, trained on {r['trained_on']:,}" if r["kind"] == "ivf" else ""
            print(f"{r['n']:>10,} {r['kind']:>5} {r['build_s']:>8.2f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
                  f"{r['recall_at_10']:>9.3f}  {params}", flush=True)
    result["load_average_at_end"] = os.getloadavg()
    print(f"load average: {result['load_average_at_start'][0]:.1f} at start, {result['load_average_at_end'][0]:.1f} at end "
          f"on {result['cpus']} CPUs")
    write_results("index", result)


if __name__ == "__main__":
    main()
