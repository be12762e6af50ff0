"""Sixteen concurrent claimers never take the same row, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.claims import measure


@pytest.mark.parametrize("claimers", [4, 16])
def test_no_double_claims(backend: str, claimers: int, tmp_path: Path) -> None:
    r = measure(backend, claimers, rows=3000, batch=16, folder=tmp_path)
    assert r["double_claims"] == 0 and r["unclaimed"] == 0, r
