"""Real servers for the remote-source tests: moto's S3 server and a stdlib HTTP server with Range.

Both listen on a free localhost port, are reached through s3fs/aiohttp exactly as a real
bucket or web server would be, and are stopped by their context managers.
"""

from __future__ import annotations

import os
import re
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SECRET = "s2-test-secret-Zq8x/VvR"  # the S3 secret key; no manifest, log, shard or export may hold it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def s3_env(port: int) -> dict[str, str]:
    """Credentials and endpoint the standard way: AWS variables botocore reads itself."""
    return {
        "AWS_ACCESS_KEY_ID": "s2testkey", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}",
    }


class S3:
    """moto's standalone server in a thread; its buckets live in this process, so a stopped and
    restarted server (same port) still holds them: an endpoint that went down and came back."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:
        self.server.stop()

    def client(self):  # noqa: ANN201 - boto3's client type is generated
        import boto3

        return boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}")


@contextmanager
def s3_server(monkeypatch) -> Iterator[S3]:  # noqa: ANN001 - pytest's MonkeyPatch
    """A moto S3 server; the test process's environment points botocore at it."""
    port = free_port()
    for k, v in s3_env(port).items():
        monkeypatch.setenv(k, v)
    server = S3(port)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class RangeHandler(SimpleHTTPRequestHandler):
    """Directory index pages (the listing fsspec reads), HEAD, and GET honouring one
    `Range: bytes=a-b`; every range served is recorded in the server's `requests` list.
    A file whose name holds `truncated` advertises its size but sends half of it; one whose
    name holds `reset` answers HEAD but drops the connection on every GET."""

    def log_message(self, *args: object) -> None:
        pass

    def send_head(self):  # noqa: ANN201
        path = self.translate_path(self.path)
        if os.path.isdir(path) or not os.path.isfile(path):
            return super().send_head()
        if "reset" in path and self.command == "GET":
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)
            return None
        size = os.path.getsize(path)
        start, end = 0, size - 1
        m = re.match(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if m:
            start, end = int(m.group(1)), min(int(m.group(2) or size - 1), size - 1)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Last-Modified", self.date_time_string(int(os.path.getmtime(path))))
        self.end_headers()
        if self.command == "GET":
            self.server.requests.append((self.path, start, end + 1))  # type: ignore[attr-defined]
        f = open(path, "rb")
        f.seek(start)
        self._send = end - start + 1 if "truncated" not in path else (end - start + 1) // 2
        return f

    def copyfile(self, source, outputfile) -> None:  # noqa: ANN001
        if not hasattr(self, "_send"):
            return super().copyfile(source, outputfile)
        outputfile.write(source.read(self._send))
        if "truncated" in self.path:
            self.close_connection = True


@contextmanager
def http_server(root: Path) -> Iterator[ThreadingHTTPServer]:
    """Serve `root` on a free port; `server.url` is its base URL, `server.requests` the ranges read."""
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(RangeHandler, directory=str(root)))
    server.requests = []  # type: ignore[attr-defined]
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
