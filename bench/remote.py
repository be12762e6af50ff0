"""Remote-source benchmark: decoding from an S3 emulator against local disk, bytes read, a 100,000-object scan.

moto's S3 server runs in this process on a free localhost port and is reached through s3fs
(credentials and endpoint from the AWS_* variables, as a user's bucket would be). Rows:
- decode cost per video (the run's sampler and decoder, 8 frames) from the bucket against the
  same file on local disk, best of R, the decode in a child process so the server's Python
  threads do not share its interpreter (target: within 25%);
- bytes fetched per video (ranged GETs through the block cache) against the file's size;
- `cli.py scan` of 100,000 tiny objects: listing (ListObjectsV2, 1,000 a page) and
  registration, a fresh process as the user runs it. The objects are put straight into
  moto's in-process backend (a put_object loop over HTTP would dominate the benchmark).
Writes bench/results/remote.json.

    python -m bench.remote [N_OBJECTS] [--no-cli]   (--no-cli: the scan rows in process only)
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench import write_results  # noqa: E402

REAL = ROOT.parent / "shared" / "realvideos"
VIDEOS = ["x_video2dataset_test_video.mp4", "moviepy_fire2.mp4", "moviepy_big_buck_bunny_0_30.webm",
          "decord_flipping_a_pancake.mkv", "decord_video_0.mov"]
FRAMES = 8
BLOCK_SIZE = 1 << 20  # the product's default (pipeline/sources/remote.py)
REPEATS = 3


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _decode_costs(pairs: list[tuple[str, str]], block_size: int) -> list[dict]:
    """In a child process: best-of-REPEATS decode time of each (local path, URL), and bytes fetched."""
    from pipeline.decoders.pyav import PyAVDecoder
    from pipeline.samplers import get_sampler
    from pipeline.sources import open_video, remote

    remote.BLOCK_SIZE = block_size

    decoder, sampler = PyAVDecoder(1), get_sampler("exact")(FRAMES)
    rows = []
    for local, url in pairs:
        best_local = best_remote = float("inf")
        fetched = 0
        for _ in range(REPEATS):
            t = time.perf_counter()
            decoder.sample(local, sampler)
            best_local = min(best_local, time.perf_counter() - t)
            t = time.perf_counter()
            f = open_video(url)  # the open (a HEAD) is part of the cost
            count = [0]
            fetch = f.cache.fetcher

            def counted(start: int, end: int, fetch=fetch, count=count) -> bytes:
                data = fetch(start, end)
                count[0] += len(data)
                return data

            f.cache.fetcher = counted
            decoder.sample(f, sampler)
            best_remote = min(best_remote, time.perf_counter() - t)
            fetched = count[0]
        size = os.path.getsize(local)
        rows.append({"video": Path(local).name, "block_kib": block_size >> 10, "bytes": size, "local_ms": round(best_local * 1e3, 1),
                     "s3_ms": round(best_remote * 1e3, 1), "s3_vs_local": round(best_remote / best_local, 3),
                     "bytes_fetched": fetched, "fetched_share": round(fetched / size, 3)})
    return rows


def _list_and_register(url: str, out: Path) -> tuple[int, float, float]:
    """In a child process: the source's listing alone, then the scanner's diff and bulk insert."""
    from pipeline.manifest import open_manifest
    from pipeline.sources import source_for

    t = time.perf_counter()
    entries = list(source_for(url).entries(("mp4",), []))
    list_s = time.perf_counter() - t
    manifest = open_manifest(out, None, create=True)
    t = time.perf_counter()
    known = manifest.known_files()  # as scanner.scan: the diff against what is registered, then one bulk insert
    manifest.apply_scan(sorted((e.name, e.size, e.mtime_ns) for e in entries if e.name not in known), [], [], [])
    return len(entries), list_s, time.perf_counter() - t


def measure(n_objects: int = 100_000, workdir: Path | None = None, cli: bool = True) -> dict:
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer


    work = Path(workdir or tempfile.mkdtemp(prefix="bench_remote_"))
    port = _free_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        import boto3

        client = boto3.client("s3")
        client.create_bucket(Bucket="bench")
        pairs = []
        for name in VIDEOS:
            if (REAL / name).is_file():
                client.upload_file(str(REAL / name), "bench", f"videos/{name}")
                pairs.append((str(REAL / name), f"s3://bench/videos/{name}"))
        with mp.get_context("spawn").Pool(1) as pool:
            decode = pool.apply(_decode_costs, (pairs, BLOCK_SIZE))
            # Smaller blocks show what the decode plan itself touches of a long-GOP file.
            decode += pool.apply(_decode_costs, (pairs[:1], 128 << 10))

        backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        client.create_bucket(Bucket="many")
        t = time.perf_counter()
        for i in range(n_objects):
            backend.put_object("many", f"d{i // 1000:03d}/clip{i % 1000:04d}.mp4", b"x")
        created = time.perf_counter() - t
        with mp.get_context("spawn").Pool(1) as pool:
            listed, list_s, register_s = pool.apply(_list_and_register, ("s3://many/", work / "inproc"))
        scans = _cli_scans(work, "s3://many/") if cli else {}
    finally:
        server.stop()
    return {"decode": decode, "objects": n_objects, "create_objects_s": round(created, 1), "listed": listed,
            "list_s": round(list_s, 1), "register_s": round(register_s, 1), **scans}


def _cli_scans(work: Path, url: str) -> dict:
    """A first scan and a rescan as the user runs them: fresh `cli.py scan` processes, imports included."""
    from pipeline.samples import make_tiny_clip

    model = make_tiny_clip(work / "model")
    times = []
    for extra in (["--model", model["model"], "--pretrained", model["pretrained"]], []):
        t = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "cli.py"), "scan", "--video-dir", url, "--output-dir",
                        str(work / "out"), *extra], capture_output=True, text=True, timeout=1800, check=True)
        times.append(time.perf_counter() - t)
    return {"cli_first_scan_s": round(times[0], 1), "cli_rescan_s": round(times[1], 1)}


def main() -> None:
    args = [a for a in sys.argv[1:] if a != "--no-cli"]
    res = measure(int(args[0]) if args else 100_000, cli="--no-cli" not in sys.argv)
    print(f"{'video':36} {'block':>6} {'bytes':>9} {'local ms':>9} {'s3 ms':>8} {'s3/local':>9} {'fetched':>9} {'share':>6}")
    for r in res["decode"]:
        print(f"{r['video']:36} {r['block_kib']:5d}K {r['bytes']:9d} {r['local_ms']:9.1f} {r['s3_ms']:8.1f} {r['s3_vs_local']:9.3f} "
              f"{r['bytes_fetched']:9d} {r['fetched_share']:6.3f}")
    print(f"scan of {res['objects']} objects on the emulator (created in {res['create_objects_s']} s, moto's "
          f"backend in process): listing {res['list_s']} s, diff and bulk insert {res['register_s']} s")
    if "cli_first_scan_s" in res:
        print(f"as `cli.py scan` processes: first scan {res['cli_first_scan_s']} s, rescan {res['cli_rescan_s']} s")
    write_results("remote", res)


if __name__ == "__main__":
    main()
