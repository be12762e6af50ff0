"""Start-up: decode workers start, and decode, while the main process imports torch and
loads the model; leases hold through a slow load; a stop during it is clean; a wrong
geometry guess costs decodes, never a wrong feature (docs/design/startup.md).

A slow model load is made with the engine's fault hook CLIPFEAT_TEST_LOAD_DELAY (the
load waits that many seconds first, as a ViT-L read from a network disk would).
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from pipeline.engine import GEOMETRY_SETTING, LOAD_DELAY_ENV
from pipeline.manifest import open_manifest
from pipeline.reader import load_features
from pipeline.samples import make_clips
from tests.conftest import cli, model_args, start_cli, status_json, wait_until

RUN = ["--gpu", "cpu", "--num-workers", "1", "--batch-size", "2", "--shard-size", "2"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clips(tmp_path_factory.mktemp("clips"), 2, width=32, height=32, frames=6)


def scanned(tmp_path: Path, clips: Path, tiny: dict[str, str], name: str = "out") -> Path:
    out = tmp_path / name
    cli("scan", "--video-dir", str(clips), "--output-dir", str(out), *model_args(tiny))
    return out


def run_log(out: Path) -> str:
    logs = sorted((out / "logs").glob("run-*.log"), key=lambda p: p.stat().st_mtime)
    return logs[-1].read_text() if logs else ""


def when(text: str, words: str) -> float:
    """The wall-clock time of the first log line containing `words`."""
    line = next(line for line in text.splitlines() if words in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def test_first_video_is_decoded_while_the_model_loads_and_its_leases_hold(
    tmp_path: Path, clips: Path, tiny_model, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Load delayed past the lease: the run decodes its first video before the load ends,
    heartbeats meanwhile (its rows' leases stay ahead of the clock, the reap another run
    does takes nothing), then encodes and finishes with every video done once."""
    lease, delay = 2.0, 8.0
    out = scanned(tmp_path, clips, tiny_model)
    monkeypatch.setenv(LOAD_DELAY_ENV, str(delay))
    proc = start_cli("run", "--output-dir", str(out), *RUN, "--lease-seconds", str(lease), log=tmp_path / "run.log")
    try:
        assert wait_until(lambda: "first video decoded" in run_log(out) or proc.poll() is not None, timeout=120)
        first = when(run_log(out), "first video decoded")
        # Past two leases since then, the model still loading: what another run would do, and see.
        assert wait_until(lambda: time.time() > first + 2 * lease, timeout=30)
        assert "model loaded" not in run_log(out), "the load ended before the check: raise `delay`"
        manifest = open_manifest(out, None)
        assert manifest.reap(lease, 10) == 0, "another run's reap took the slow run's claims"
        with sqlite3.connect(out / "manifest.sqlite") as c:
            rows = c.execute("SELECT status, owner, lease_until FROM videos").fetchall()
            (beat,) = c.execute("SELECT heartbeat_at FROM runs WHERE state='running'").fetchone()
        assert [r[0] for r in rows] == ["running", "running"] and len({r[1] for r in rows}) == 1, rows
        assert min(r[2] for r in rows) > time.time() and beat > time.time() - lease, (rows, beat)
        assert proc.wait(timeout=120) == 0, (tmp_path / "run.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    text = run_log(out)
    assert "model still loading" in next(line for line in text.splitlines() if "first video decoded" in line)
    assert when(text, "first video decoded") < when(text, "model loaded") <= when(text, "first features"), text
    loaded = re.search(r"model loaded in ([\d.]+) s", text)
    assert loaded and float(loaded.group(1)) >= delay > lease
    st = status_json(out)
    assert (st["done"], st["pending"], st["running"], st["failed"]) == (2, 0, 0, 0)
    assert st["settings"][GEOMETRY_SETTING], "the run did not record the model's geometry for the next one"
    with sqlite3.connect(out / "manifest.sqlite") as c:
        assert c.execute("SELECT max(claims) FROM videos").fetchone()[0] == 1


@pytest.mark.slow
def test_stop_during_a_slow_model_load_is_clean(tmp_path: Path, clips: Path, tiny_model, monkeypatch) -> None:
    """SIGTERM to the group while the model loads: the run stops at once (not after the
    load), gives its claims back uncharged, and the next run does every video."""
    out = scanned(tmp_path, clips, tiny_model)
    monkeypatch.setenv(LOAD_DELAY_ENV, "60")
    log = tmp_path / "run.log"
    proc = start_cli("run", "--output-dir", str(out), *RUN, log=log)
    assert wait_until(lambda: "first video decoded" in run_log(out) or proc.poll() is not None, timeout=120)
    os.killpg(proc.pid, signal.SIGTERM)
    t0 = time.monotonic()
    assert proc.wait(timeout=60) == 130, log.read_text()
    assert time.monotonic() - t0 < 30, "the stop waited for the model load"
    terminal = log.read_text()
    assert "run the same command again to resume" in terminal and "Traceback" not in terminal, terminal
    text = run_log(out)
    assert "model loaded" not in text and text.count("claims given back") == 1, text
    st = status_json(out)
    assert (st["done"], st["pending"], st["running"], st["failed"]) == (0, 2, 0, 0)
    with sqlite3.connect(out / "manifest.sqlite") as c:
        assert c.execute("SELECT count(*) FROM videos WHERE attempts > 0 OR error IS NOT NULL").fetchone()[0] == 0
    monkeypatch.delenv(LOAD_DELAY_ENV)
    cli("run", "--output-dir", str(out), *RUN)
    assert status_json(out)["done"] == 2


@pytest.mark.slow
def test_a_wrong_recorded_geometry_is_decoded_again_with_the_models(tmp_path: Path, clips: Path, tiny_model) -> None:
    """The workers start with the job's recorded geometry; when the loaded model crops
    otherwise, the crops decoded meanwhile are decoded again: the features equal those
    of a run that started right, and the model's geometry is recorded for the next run."""
    right = scanned(tmp_path, clips, tiny_model, "right")
    cli("run", "--output-dir", str(right), *RUN)
    wrong = scanned(tmp_path, clips, tiny_model, "wrong")
    manifest = open_manifest(wrong, None)
    manifest.set_setting(GEOMETRY_SETTING, '{"crop": [48, 48], "interpolation": "bilinear", "mode": "shortest", "size": 48}')
    cli("run", "--output-dir", str(wrong), *RUN)
    assert "decoding again" in run_log(wrong)
    a, b = load_features(right), load_features(wrong)
    assert a.paths == b.paths and np.allclose(a.features, b.features, atol=1e-6)
    assert manifest.settings()[GEOMETRY_SETTING] == open_manifest(right, None).settings()[GEOMETRY_SETTING]


def _python(code: str, timeout: float = 120) -> "subprocess.CompletedProcess[str]":
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          cwd=Path(__file__).resolve().parent.parent)


def test_quick_exit_keeps_the_code_the_atexit_handlers_and_the_threads_work(tmp_path: Path) -> None:
    """With torch loaded the CLI leaves by os._exit; what Python's exit would still do
    must happen: a pool thread's queued task finishes (the first version joined such a
    thread without telling it to end and hung), atexit handlers run, stdio and the log
    are flushed, and the code is the command's."""
    mark, logged = tmp_path / "atexit", tmp_path / "log.txt"
    proc = _python(f"""
import atexit, concurrent.futures, logging, sys, time, torch
from pathlib import Path
logging.basicConfig(filename={str(logged)!r}, level=logging.INFO)
pool = concurrent.futures.ThreadPoolExecutor(1)
pool.submit(lambda: (time.sleep(0.5), Path({str(mark)!r} + '.thread').write_text('done')))
atexit.register(lambda: Path({str(mark)!r}).write_text('ran'))
logging.info('the last line')
print('printed, unflushed', end='')
from pipeline.quick_exit import exit_process
exit_process(3)
""", timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout == "printed, unflushed"
    assert mark.read_text() == "ran" and Path(f"{mark}.thread").read_text() == "done"
    assert "the last line" in logged.read_text()


def test_a_run_leaves_its_manifest_whole_in_one_file(tmp_path: Path, clips: Path, tiny_model) -> None:
    """The quick exit skips the garbage collection that used to close the manifest's SQLite
    connections; the manifest closes them at exit itself, so SQLite merges its WAL and a
    copy of manifest.sqlite alone (a backup, a read-only mount) holds every commit."""
    out = scanned(tmp_path, clips, tiny_model)
    cli("run", "--output-dir", str(out), *RUN)
    assert not (out / "manifest.sqlite-wal").exists(), "the run left its last commits in the WAL"
    alone = tmp_path / "copy.sqlite"
    alone.write_bytes((out / "manifest.sqlite").read_bytes())
    with sqlite3.connect(alone) as c:
        assert c.execute("SELECT count(*) FROM videos WHERE status='done'").fetchone()[0] == 2
        assert c.execute("SELECT state FROM runs").fetchall() == [("finished",)]


def test_gpu_auto_on_a_box_without_a_gpu_driver_imports_no_torch() -> None:
    """`--gpu auto` resolved, and its fallback warning given, before the workers start:
    where no GPU driver is loaded neither imports torch (it cost 1.3 s before the first
    worker); elsewhere the answer is torch's own."""
    proc = _python("""
import logging, sys
from pipeline.devices import no_gpu_driver, resolve_devices, warn_on_fallback
logging.basicConfig(level=logging.WARNING)
devices = resolve_devices('auto')
warn_on_fallback('auto', devices[0])
print(no_gpu_driver() or None, [str(d) for d in devices], 'torch' in sys.modules)
import torch
print(torch.cuda.is_available())
""")
    assert proc.returncode == 0, proc.stderr
    first, cuda = proc.stdout.splitlines()
    if first.startswith("True"):  # no driver: this machine and CI
        assert first == "True ['cpu'] False" and cuda == "False"
        assert "no CUDA GPU found: running on the CPU" in proc.stderr
    else:
        assert first.endswith("True") and ("cuda:0" in first) == (cuda == "True")


def test_the_benchs_load_floor_in_its_two_regimes() -> None:
    """bench/startup.py's floor: the whole load when the first batch decodes faster than
    the model loads, the load's CPU over the cores when the decode hides it (what says
    whether the 1.5 s target can be met on a box at all)."""
    from bench.startup import load_floor

    assert load_floor(decode_s=0.1, load_s=3.0, workers=2, cores=2) == pytest.approx(2.9)  # load on the critical path
    assert load_floor(decode_s=14.0, load_s=3.0, workers=2, cores=2) == pytest.approx(1.5)  # hidden, its CPU shared
    assert load_floor(decode_s=14.0, load_s=3.0, workers=16, cores=16) == pytest.approx(3.0 / 16)
    assert load_floor(decode_s=14.0, load_s=3.0, workers=1, cores=2) == pytest.approx(0.0)  # a core left idle for it
