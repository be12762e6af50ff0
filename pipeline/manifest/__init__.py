"""The manifest: every video's state, the job's settings, and who holds which claim.

Everything that must survive a crash goes through here, in short transactions.
Manifest is one object for its callers, built from one part per job so each can be
read alone:

    database.py  engines, SQLite pragmas and BEGIN IMMEDIATE, transactions, retries, schema.sql
    tables.py    the SQLAlchemy declarations mirroring schema.sql (tests/test_schema.py)
    jobs.py      the job's settings: recorded once, checked by every later command
    scans.py     known files, and a scan's diff applied in one transaction
    liveness.py  runs, heartbeats, reaping the claims of runs that are gone, process liveness
    claims.py    claim, complete, fail_attempt, release, reset_failed
    reports.py   counts, failures, runs, done rows

See docs/design/claim-protocol.md for why claims look the way they do.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.errors import PipelineError
from pipeline.manifest.claims import Claim, ClaimsMixin
from pipeline.manifest.database import SCHEMA_SQL, Database
from pipeline.manifest.database import _with_driver  # noqa: F401 - tests open their own engines with it
from pipeline.manifest.jobs import JobSettingsMixin
from pipeline.manifest.liveness import RunLivenessMixin, proc_start_ticks, process_alive
from pipeline.manifest.reports import DoneRow, ReportsMixin
from pipeline.manifest.scans import ScanMixin
from pipeline.manifest.tables import STATES, job_settings, metadata, runs, videos

__all__ = [
    "DB_FILENAME", "SCHEMA_SQL", "STATES", "Claim", "Database", "DoneRow", "Manifest",
    "database_url", "job_exists", "job_settings", "metadata", "open_manifest", "proc_start_ticks",
    "process_alive", "runs", "videos",
]

DB_FILENAME = "manifest.sqlite"


class Manifest(JobSettingsMixin, ScanMixin, RunLivenessMixin, ClaimsMixin, ReportsMixin):
    """One job's manifest. Cheap to open; every method is one short transaction."""


def database_url(output_dir: str | os.PathLike[str], db: str | None) -> str:
    if db:
        return db
    return f"sqlite:///{Path(output_dir).resolve() / DB_FILENAME}"


def open_manifest(output_dir: str | os.PathLike[str], db: str | None, create: bool = False) -> Manifest:
    """Open the job's manifest; only `scan` creates one, every other command needs it."""
    url = database_url(output_dir, db)
    if url.startswith("sqlite") and not db:
        path = Path(output_dir) / DB_FILENAME
        if not create and not path.exists():
            raise PipelineError(f"no job in {output_dir}: run 'scan --video-dir DIR --output-dir {output_dir}' first")
        Path(output_dir).mkdir(parents=True, exist_ok=True)
    m = Manifest(url)
    if create:
        m.create_schema()
    elif not m.exists():
        raise PipelineError(f"no job in {url}: run 'scan' first")
    else:
        m.migrate()  # a job made by an older version gains the newer columns, in place
    return m


def job_exists(output_dir: str | os.PathLike[str], db: str | None) -> bool:
    try:
        open_manifest(output_dir, db).close()
        return True
    except PipelineError:
        return False
