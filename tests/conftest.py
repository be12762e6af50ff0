"""Shared fixtures: a tiny random-weight CLIP saved to a checkpoint, sample videos, CLI runs.

The tiny model goes through the same loading path users take offline
(--model CONFIG.json --pretrained CHECKPOINT.pt), so the tests exercise the real
open_clip code, not a stand-in.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
REALVIDEOS = ROOT.parent / "shared" / "realvideos"

sys.path.insert(0, str(ROOT))

@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A tiny CLIP architecture with random weights, saved as config JSON + checkpoint."""
    from pipeline.samples import make_tiny_clip

    return make_tiny_clip(tmp_path_factory.mktemp("tiny_model"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo corpus: several codecs, containers, sizes, a rotated clip, broken files."""
    from pipeline.samples import make_corpus

    folder = tmp_path_factory.mktemp("corpus")
    make_corpus(folder)
    return folder


def cli(*args: str, check: bool = True, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    env = dict(kw.pop("env", os.environ), PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True, timeout=timeout, env=env, **kw
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"cli {args} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def start_cli(*args: str, log: Path | None = None) -> subprocess.Popen:
    """Start the CLI in its own process group, so a kill reaches its decode workers too."""
    out = open(log, "w") if log else subprocess.DEVNULL
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), *args],
        stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )


def kill_group(proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass
    proc.wait(timeout=60)


def status_json(output_dir: Path, *extra: str) -> dict:
    return json.loads(cli("status", "--output-dir", str(output_dir), "--json", *extra).stdout)


def wait_until(predicate, timeout: float = 120, interval: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def model_args(tiny: dict[str, str]) -> list[str]:
    return ["--model", tiny["model"], "--pretrained", tiny["pretrained"]]


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)
