"""Benchmarks (`make bench`): each prints a table and writes its JSON under bench/results/."""

from __future__ import annotations

import json
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def write_results(name: str, result: dict) -> Path:
    """bench/results/NAME.json, the figures a benchmark printed, for docs and comparisons."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=1))
    print(f"wrote {path}")
    return path
