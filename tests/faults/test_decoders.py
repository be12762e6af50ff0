"""Decoders that hang or die: the worker is replaced, the video charged, the run goes on.

A FIFO put where a scanned video was makes a real hang: FFmpeg's open() blocks in the
worker process until a writer appears, which never happens. No test hook is needed in
the product code.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

from pipeline.samples import Spec, make_video
from tests.conftest import cli, model_args, start_cli, status_json

RUN = ["--gpu", "cpu", "--num-workers", "2", "--batch-size", "4"]


def corpus_with_fifo(tmp_path: Path, tiny, n_good: int) -> tuple[Path, Path]:
    src = tmp_path / "v"
    for i in range(n_good):
        make_video(src / f"ok{i:02d}.mp4", Spec("x.mp4", frames=15 + i, width=64, height=48))
    stuck = make_video(src / "stuck.mp4", Spec("x.mp4", frames=15, width=64, height=48))
    out = tmp_path / "out"
    cli("scan", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny))
    stuck.unlink()
    os.mkfifo(stuck)  # same name as scanned; opening it now blocks for ever
    return out, stuck


def holders(path: Path) -> list[int]:
    """Pids of processes that have `path` open (the worker stuck on it)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                    pids.append(int(pid))
                    break
        except OSError:
            continue
    return pids


def test_hung_decoder_is_killed_at_its_deadline(tmp_path: Path, tiny_model) -> None:
    out, stuck = corpus_with_fifo(tmp_path, tiny_model, 6)
    started = time.monotonic()
    proc = cli("run", "--output-dir", str(out), *RUN, "--decode-timeout", "3", timeout=120)
    took = time.monotonic() - started
    st = status_json(out)
    assert (st["done"], st["failed"], st["pending"], st["running"]) == (6, 1, 0, 0)
    assert st["failures"][0]["path"] == str(stuck)
    assert st["failures"][0]["error"].startswith("timeout")
    assert "timeout" in proc.stderr
    assert took < 60, f"the hang held the run for {took:.0f} s"
    assert not holders(stuck), "the hung worker was left running"


def test_decoder_killed_from_outside_is_replaced_and_the_video_charged(tmp_path: Path, tiny_model) -> None:
    out, stuck = corpus_with_fifo(tmp_path, tiny_model, 12)
    run = start_cli("run", "--output-dir", str(out), *RUN, "--decode-timeout", "600", "--max-attempts", "2",
                    log=tmp_path / "run.log")
    kills = 0
    writer = None  # our end of the FIFO, held open so a reader's read() blocks instead of seeing EOF
    deadline = time.monotonic() + 120
    try:
        while run.poll() is None and time.monotonic() < deadline:
            if writer is None:
                try:  # succeeds once a worker waits in open() on it, and lets that open() return
                    writer = os.open(stuck, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    pass
            for pid in holders(stuck):  # the worker now blocked reading this video: "crash" it
                if pid != os.getpid():
                    os.kill(pid, signal.SIGKILL)
                    kills += 1
            time.sleep(0.1)
    finally:
        if writer is not None:
            os.close(writer)
    assert run.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()
    st = status_json(out)
    assert (st["done"], st["failed"]) == (12, 1), "videos queued behind the crash were lost"
    assert st["failures"][0]["error"] == "decoder process died (killed by signal 9)"
    assert kills == 2  # one per attempt, then failed
    with sqlite3.connect(out / "manifest.sqlite") as c:
        assert c.execute("SELECT attempts FROM videos WHERE path=?", (str(stuck),)).fetchone()[0] == 2
