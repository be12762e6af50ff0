-- The manifest: the one source of truth for a job's state.
-- Portable SQL (SQLite and PostgreSQL); every statement is idempotent.
-- pipeline/manifest.py declares the same tables for SQLAlchemy, and
-- tests/test_schema.py checks that the two agree.

-- The job's extraction settings, fixed by its first scan (model, pretrained,
-- num_frames, sampling, save_frames) plus facts learnt later (dim).
CREATE TABLE IF NOT EXISTS job_settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- One row per video file. status: pending | running | done | failed | missing.
CREATE TABLE IF NOT EXISTS videos (
    id          BIGINT PRIMARY KEY,
    path        TEXT NOT NULL UNIQUE,
    size        BIGINT NOT NULL,
    mtime_ns    BIGINT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'pending',
    owner       TEXT,                      -- runs.id holding the claim
    lease_until DOUBLE PRECISION,          -- unix time the claim expires
    claims      INTEGER NOT NULL DEFAULT 0,  -- times claimed (bounded: poison guard)
    attempts    INTEGER NOT NULL DEFAULT 0,  -- failed decode attempts
    error       TEXT,                      -- reason of the last failure
    shard       TEXT,                      -- shard file stem holding the feature
    shard_index INTEGER,                   -- row of that shard
    num_frames  INTEGER,                   -- frames counted in the stream
    updated_at  DOUBLE PRECISION,
    decoded_on  TEXT                       -- gpu | cpu: where its frames were decoded (NULL: not recorded)
);
CREATE INDEX IF NOT EXISTS videos_status_id ON videos (status, id);
CREATE INDEX IF NOT EXISTS videos_owner ON videos (owner);

-- One row per `run` process: who owns claims, and throughput for `status`.
CREATE TABLE IF NOT EXISTS runs (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    proc_start    TEXT,                    -- process start ticks: tells a reused pid apart
    state         TEXT NOT NULL,           -- running | finished | interrupted | crashed | failed
    device        TEXT,
    batch_size    INTEGER,
    num_workers   INTEGER,
    started_at    DOUBLE PRECISION NOT NULL,
    heartbeat_at  DOUBLE PRECISION NOT NULL,
    ended_at      DOUBLE PRECISION,
    videos_done   INTEGER NOT NULL DEFAULT 0,
    videos_failed INTEGER NOT NULL DEFAULT 0,
    frames_done   BIGINT NOT NULL DEFAULT 0,
    message       TEXT
);
