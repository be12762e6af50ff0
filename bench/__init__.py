"""Benchmarks (`make bench`): each prints a table and writes its JSON under bench/results/."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, result: dict) -> Path:
    """bench/results/NAME.json, the figures a benchmark printed, for docs and comparisons."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return path


def keep_encoding(enc: Any, crops: Any, num_frames: int, seconds: float) -> int:
    """Submit the same batch back to back for `seconds`, one in flight as the engine keeps it,
    and return the frames encoded: an encoder's own rate, not one batch's latency."""
    frames, pending, start = 0, None, time.perf_counter()
    while time.perf_counter() - start < seconds:
        nxt = enc.submit([crops], num_frames)
        if pending is not None:
            pending.result()
        pending, frames = nxt, frames + len(crops)
    if pending is not None:
        pending.result()
    return frames
