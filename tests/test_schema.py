"""schema.sql is the source of truth; the SQLAlchemy declarations must match it, on both backends."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import create_engine, inspect

from pipeline.manifest import Manifest, _with_driver, metadata
from tests.conftest import PG_URL, _fresh_pg_database


def test_declarations_match_schema_sql(backend: str, tmp_path: Path) -> None:
    url = _fresh_pg_database() if backend == "postgresql" else f"sqlite:///{tmp_path / 'm.sqlite'}"
    assert backend == "sqlite" or PG_URL
    m = Manifest(url)
    m.create_schema()
    m.create_schema()  # idempotent
    m.close()
    engine = create_engine(_with_driver(url))
    insp = inspect(engine)
    assert set(insp.get_table_names()) == set(metadata.tables)
    for name, table in metadata.tables.items():
        real = {c["name"]: c for c in insp.get_columns(name)}
        assert list(real) == [c.name for c in table.columns], name
        for col in table.columns:
            assert bool(real[col.name]["nullable"]) == bool(col.nullable) or col.primary_key, (name, col.name)
        pk = insp.get_pk_constraint(name)["constrained_columns"]
        assert pk == [c.name for c in table.primary_key.columns], name
    assert {"videos_status_id", "videos_owner"} <= {i["name"] for i in insp.get_indexes("videos")}
    engine.dispose()
