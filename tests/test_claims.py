"""Sixteen concurrent claimers never take the same row, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.claims import measure


@pytest.mark.parametrize("claimers", [4, 16])
def test_no_double_claims(backend: str, claimers: int, tmp_path: Path) -> None:
    r = measure(backend, claimers, rows=3000, batch=16, folder=tmp_path)
    assert r["double_claims"] == 0 and r["unclaimed"] == 0, r


def test_a_setting_two_runs_record_at_once(backend: str, tmp_path: Path) -> None:
    """Concurrent first runs of a job each record the model's dim and geometry: the one whose
    insert waits on the other's must not fail when that commits (on PostgreSQL it stopped
    with a unique violation, seen in CI as one of three concurrent runs exiting 1). Made
    deterministic: another connection holds the same key's insert open while set_setting runs."""
    import sqlite3
    import threading
    import time

    import psycopg

    from pipeline.manifest import open_manifest
    from tests.conftest import _fresh_pg_database

    db = _fresh_pg_database() if backend == "postgresql" else None
    manifest = open_manifest(tmp_path / "out", db, create=True)
    other = psycopg.connect(db) if db else sqlite3.connect(tmp_path / "out" / "manifest.sqlite", timeout=30)
    other.execute("INSERT INTO job_settings (key, value) VALUES ('geometry', 'theirs')")  # not committed yet
    errors: list[BaseException] = []

    def record() -> None:
        try:
            manifest.set_setting("geometry", "ours")
        except BaseException as e:  # noqa: BLE001 - handed to the test
            errors.append(e)

    writer = threading.Thread(target=record)
    writer.start()
    time.sleep(1.0)  # the writer is now waiting on the other connection's row (or lock)
    other.commit()
    other.close()
    writer.join(timeout=60)
    assert not writer.is_alive() and not errors, errors
    assert manifest.settings()["geometry"] == "ours"
    manifest.close()
