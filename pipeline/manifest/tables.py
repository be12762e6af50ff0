"""The SQLAlchemy declarations of the manifest's tables, for building queries.

schema.sql creates the tables and is the source of truth (it also holds the
indexes and defaults the backends need); these declarations only mirror it so
queries are written in Python, not strings. tests/test_schema.py checks the two
agree on both backends, so a column added in one place and not the other fails.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Float, Integer, MetaData, String, Table, Text

metadata = MetaData()
job_settings = Table(
    "job_settings",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)
videos = Table(
    "videos",
    metadata,
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    Column("path", Text, nullable=False, unique=True),
    Column("size", BigInteger, nullable=False),
    Column("mtime_ns", BigInteger, nullable=False),
    Column("status", Text, nullable=False, server_default="pending"),
    Column("owner", Text),
    Column("lease_until", Float),
    Column("claims", Integer, nullable=False, server_default="0"),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("error", Text),
    Column("shard", Text),
    Column("shard_index", Integer),
    Column("num_frames", Integer),
    Column("updated_at", Float),
    Column("decoded_on", Text),  # added after the first jobs: Database.migrate adds it to theirs
)
runs = Table(
    "runs",
    metadata,
    Column("id", Text, primary_key=True),
    Column("host", Text, nullable=False),
    Column("pid", Integer, nullable=False),
    Column("proc_start", Text),
    Column("state", Text, nullable=False),
    Column("device", Text),
    Column("batch_size", Integer),
    Column("num_workers", Integer),
    Column("started_at", Float, nullable=False),
    Column("heartbeat_at", Float, nullable=False),
    Column("ended_at", Float),
    Column("videos_done", Integer, nullable=False, server_default="0"),
    Column("videos_failed", Integer, nullable=False, server_default="0"),
    Column("frames_done", BigInteger, nullable=False, server_default="0"),
    Column("message", String),
)

# Every value videos.status takes; counts() reports each, zero included.
STATES = ("pending", "running", "done", "failed", "missing")
