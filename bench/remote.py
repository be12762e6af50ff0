"""The S3 emulator for `python -m bench.sources`: its "s3 (emulator)" row and the scan of N objects.

moto's standalone S3 server runs in a child process on a free localhost port (so its Python
threads share no interpreter with the decode being timed) and is reached through s3fs with
credentials and endpoint from the AWS_* variables, as a user's bucket would be. The child
also fills a bucket of N tiny objects straight into its own backend (a put_object loop over
HTTP would dominate the benchmark); `scan_rows` then times the listing (ListObjectsV2, 1,000
a page) and the scanner's diff and bulk insert, and optionally `cli.py scan` as the user runs
it (a first scan and a rescan, fresh processes, imports included). bench/sources.py prints
the one table and writes the one JSON (bench/results/sources.json).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bench"  # the corpus, for the decode row
MANY = "many"  # N tiny objects, for the scan


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, n_objects: int, ready, stop) -> None:  # noqa: ANN001 - multiprocessing events
    """In the child: the server, the bucket of `n_objects`, then wait to be stopped."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # a line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    backend.create_bucket(MANY, "us-east-1")
    t = time.perf_counter()
    for i in range(n_objects):
        backend.put_object(MANY, f"d{i // 1000:03d}/clip{i % 1000:04d}.mp4", b"x")
    ready.put(round(time.perf_counter() - t, 1))
    stop.wait()
    server.stop()


@contextmanager
def emulator(n_objects: int) -> Iterator[float]:
    """A moto S3 server in a child process holding `n_objects` in bucket MANY; this process's
    environment points botocore at it. Yields the seconds the objects took to create."""
    port = _free_port()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL_S3=f"http://127.0.0.1:{port}")
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Queue(), ctx.Event()
    child = ctx.Process(target=_serve, args=(port, n_objects, ready, stop), daemon=True)
    child.start()
    try:
        yield ready.get(timeout=3600)
    finally:
        stop.set()
        child.join(timeout=30)
        if child.is_alive():
            child.kill()


def s3(corpus: list[Path], work: Path) -> list[str]:
    """The "s3 (emulator)" row of bench.sources.ROWS: the corpus uploaded to the bucket, as URLs."""
    import boto3

    client = boto3.client("s3")
    if BUCKET not in {b["Name"] for b in client.list_buckets()["Buckets"]}:
        client.create_bucket(Bucket=BUCKET)
    urls = []
    for i, p in enumerate(corpus):
        key = f"videos/{i:03d}_{p.name}"
        client.upload_file(str(p), BUCKET, key)
        urls.append(f"s3://{BUCKET}/{key}")
    return urls


def scan_rows(work: Path, cli: bool = True) -> dict:
    """Listing bucket MANY, then the scanner's diff and one bulk insert, as scanner.scan does
    them; with `cli`, a first `cli.py scan` and a rescan as the user runs them."""
    from pipeline.manifest import open_manifest
    from pipeline.sources import source_for

    url = f"s3://{MANY}/"
    t = time.perf_counter()
    entries = list(source_for(url).entries(("mp4",), []))
    list_s = time.perf_counter() - t
    manifest = open_manifest(work / "inproc", None, create=True)
    try:
        t = time.perf_counter()
        known = manifest.known_files()
        manifest.apply_scan(sorted((e.name, e.size, e.mtime_ns) for e in entries if e.name not in known), [], [], [])
        register_s = time.perf_counter() - t
    finally:
        manifest.close()
    out = {"listed": len(entries), "list_s": round(list_s, 1), "register_s": round(register_s, 1)}
    if cli:
        from pipeline.samples import make_tiny_clip

        model = make_tiny_clip(work / "model")
        times = []
        for extra in (["--model", model["model"], "--pretrained", model["pretrained"]], []):
            t = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "cli.py"), "scan", "--video-dir", url, "--output-dir",
                            str(work / "out"), *extra], capture_output=True, text=True, timeout=3600, check=True)
            times.append(round(time.perf_counter() - t, 1))
        out.update(cli_first_scan_s=times[0], cli_rescan_s=times[1])
    return out
