"""The job's settings in the manifest: recorded by the first scan, checked by every later command.

A job's settings (model, frames, sampling, ...) decide what its features mean, so
they are stored once and every later command that names them must agree; a
different value is refused rather than mixed into the same job.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from pipeline.errors import PipelineError
from pipeline.manifest.database import Database
from pipeline.manifest.tables import job_settings
from pipeline.settings import JobSettings, to_text


class JobSettingsMixin(Database):
    """Manifest methods on the job_settings table."""

    def exists(self) -> bool:
        """Is there a job here: the tables exist and a scan recorded its settings."""

        def check(conn: Connection) -> bool:
            if self.is_sqlite:
                q = "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='job_settings'"
            else:
                q = "SELECT count(*) FROM information_schema.tables WHERE table_name='job_settings'"
            if not conn.exec_driver_sql(q).scalar():
                return False
            return bool(conn.execute(select(func.count()).select_from(job_settings)).scalar())

        return self.read(check)

    def settings(self) -> dict[str, str]:
        return self.read(lambda c: {k: v for k, v in c.execute(select(job_settings.c.key, job_settings.c.value))})

    def job(self) -> JobSettings:
        return JobSettings.from_strings(self.settings())

    def set_setting(self, key: str, value: str) -> None:
        """One upsert: concurrent first runs of a job each record the model's dim and
        geometry, and a delete-then-insert let two of them insert the same key at once (a
        unique violation that stopped a run on PostgreSQL)."""
        from sqlalchemy.dialects import postgresql, sqlite

        insert = (sqlite.insert if self.is_sqlite else postgresql.insert)(job_settings).values(key=key, value=value)
        upsert = insert.on_conflict_do_update(index_elements=[job_settings.c.key], set_={"value": insert.excluded.value})
        self.write(lambda conn: conn.execute(upsert))

    def create_job(self, job: JobSettings, asked: dict[str, Any]) -> JobSettings:
        """Record the job's settings on first use; afterwards refuse different ones."""

        def create_or_check(conn: Connection) -> JobSettings:
            stored = {k: v for k, v in conn.execute(select(job_settings.c.key, job_settings.c.value))}
            if not stored:
                rows = [{"key": k, "value": v} for k, v in job.as_strings().items()]
                conn.execute(job_settings.insert(), rows)
                return job
            existing = JobSettings.from_strings(stored)
            _check_same(existing, asked)
            return existing

        return self.write(create_or_check)

    def check_job(self, asked: dict[str, Any]) -> JobSettings:
        existing = self.job()
        _check_same(existing, asked)
        return existing


def _check_same(existing: JobSettings, asked: dict[str, Any]) -> None:
    for key, value in asked.items():
        have = getattr(existing, key)
        if have != value:
            raise PipelineError(
                f"this job was created with {key}={to_text(have)}, not {to_text(value)}: "
                f"use another --output-dir for different settings"
            )
