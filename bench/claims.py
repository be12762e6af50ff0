"""Claim throughput: 1, 4 and 16 concurrent claimers on SQLite and on PostgreSQL.

Each claimer is a process that claims batches through Manifest.claim (the same call a
run makes) and commits them done, until the table is drained. Two modes, both
reporting double claims (must be 0):
- flat out: claimers claim back to back; claims/s, rows/s, mean and p99 latency;
- paced: the cluster processes 1,000 videos/s (each claimer "works" batch x claimers
  / 1000 s per batch), and the share of a worker's time spent inside claim() is
  measured. Target: under 1%.
Flat out, claims are 128 rows (what a run starts with: 2 x its 64-video batch); paced,
they follow engine.claim_size at each claimer's share of the rate, as a run's do.
Writes bench/results/claims.json.

    python -m bench.claims          # PostgreSQL too when PIPELINE_TEST_PG_URL is set
    scripts/with_postgres.sh python -m bench.claims
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.manifest import Manifest  # noqa: E402
from pipeline.engine import claim_size  # noqa: E402

CLUSTER_VIDEOS_PER_S = 1000.0


def _fresh_url(backend: str, folder: Path) -> str:
    if backend == "sqlite":
        return f"sqlite:///{folder / f'claims-{uuid.uuid4().hex[:8]}.sqlite'}"
    import psycopg

    admin = os.environ["PIPELINE_TEST_PG_URL"]
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')
    return admin.rsplit("/", 1)[0] + "/" + name


def _claimer(url: str, name: str, batch: int, work_s: float, start: mp.Event, out: mp.Queue) -> None:
    m = Manifest(url)
    m.counts()  # connect now: a run's connection is opened once, not per claim
    ids: list[int] = []
    latencies: list[float] = []
    start.wait()
    t_start = time.perf_counter()
    n = 0
    while True:
        t = time.perf_counter()
        got = m.claim(name, batch, 300.0)
        latencies.append(time.perf_counter() - t)
        if not got:
            break
        n += 1
        ids += [c.id for c in got]
        if work_s:
            time.sleep(work_s * len(got) / batch)  # decoding and encoding them
        m.complete(name, f"{name}-{n:05d}", [(c.id, k, 0) for k, c in enumerate(got)], 0)
    m.close()
    out.put((ids, latencies, time.perf_counter() - t_start))


def measure(
    backend: str, claimers: int, rows: int = 20_000, batch: int = 128, folder: Path | None = None,
    pace: float | None = None,
) -> dict:
    """pace: videos/s for the whole cluster (None: flat out)."""
    folder = Path(folder or tempfile.mkdtemp(prefix="bench_claims_"))
    url = _fresh_url(backend, folder)
    m = Manifest(url)
    m.create_schema()
    m.apply_scan([(f"/videos/{i:07d}.mp4", 1, 1) for i in range(rows)], [], [], [])
    m.close()
    ctx = mp.get_context("fork")
    start, out = ctx.Event(), ctx.Queue()
    work_s = batch * claimers / pace if pace else 0.0
    procs = [ctx.Process(target=_claimer, args=(url, f"bench-{i}", batch, work_s, start, out))
             for i in range(claimers)]
    for p in procs:
        p.start()
    time.sleep(0.5)  # all connected and waiting
    t0 = time.perf_counter()
    start.set()
    results = [out.get(timeout=600) for _ in procs]
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    ids = [i for r in results for i in r[0]]
    lat = sorted(x for r in results for x in r[1])
    calls = len(lat)
    mean = sum(lat) / calls
    share = sum(sum(r[1]) / r[2] for r in results) / len(results)  # time in claim() / worker wall
    return {
        "backend": backend,
        "claimers": claimers,
        "mode": f"paced {pace:.0f} videos/s" if pace else "flat out",
        "rows": rows,
        "batch": batch,
        "claims_per_s": calls / wall,
        "rows_per_s": len(ids) / wall,
        "mean_claim_ms": 1000 * mean,
        "p99_claim_ms": 1000 * lat[min(calls - 1, int(0.99 * calls))],
        "double_claims": len(ids) - len(set(ids)),
        "unclaimed": rows - len(set(ids)),
        "claim_share_of_worker_time": share,
    }


def table(results: list[dict]) -> str:
    head = (f"{'backend':<11}{'mode':<22}{'claimers':>9}{'claims/s':>10}{'rows/s':>9}{'mean ms':>9}"
            f"{'p99 ms':>9}{'double':>8}{'in claim()':>12}")
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['backend']:<11}{r['mode']:<22}{r['claimers']:>9}{r['claims_per_s']:>10.0f}{r['rows_per_s']:>9.0f}"
            f"{r['mean_claim_ms']:>9.2f}{r['p99_claim_ms']:>9.2f}{r['double_claims']:>8}"
            f"{100 * r['claim_share_of_worker_time']:>11.3f}%"
        )
    return "\n".join(lines)


def main() -> None:
    backends = ["sqlite"] + (["postgresql"] if os.environ.get("PIPELINE_TEST_PG_URL") else [])
    if len(backends) == 1:
        print("PostgreSQL skipped: set PIPELINE_TEST_PG_URL, or run under scripts/with_postgres.sh")
    results = [measure(b, k) for b in backends for k in (1, 4, 16)]
    # Paced: 1,000 videos/s across the cluster, 12 s of work each.
    results += [
        measure(b, k, rows=12000, pace=CLUSTER_VIDEOS_PER_S,
                batch=claim_size(64, 2 * os.cpu_count(), CLUSTER_VIDEOS_PER_S / k))
        for b in backends for k in (1, 4, 16)
    ]
    print(table(results))
    path = ROOT / "bench" / "results" / "claims.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
