"""Resident memory stays flat over a 2,000-video run (bench/memory.py measures it)."""

from __future__ import annotations

from pathlib import Path

from bench.memory import measure, report


def test_memory_flat_over_2000_videos(tmp_path: Path) -> None:
    r = measure(2000, tmp_path)
    print(report(r))
    assert r["samples"] >= 8, "the run was too short to tell"
    assert r["main_growth"] < 0.10, report(r)
    assert r["workers_growth"] < 0.10, report(r)
