"""Export formats: how a job's committed features are written for users (`export --format`).

Every format is a class registered in FORMATS, with one constructor, `write` and `close`
(as img2dataset's writers), and a `read` that gives back what was written, so one
contract test holds every format to the same round trip (tests/test_exports.py). A new
format is one module here and one line in FORMATS (docs/design/extending.md).
"""

from __future__ import annotations

from pipeline.exports.base import Exporter, RowFacts
from pipeline.registry import Registry

__all__ = ["FORMATS", "Exporter", "RowFacts"]

FORMATS = Registry("format", {
    "npy": "pipeline.exports.npy:NpyExport",
    "pkl": "pipeline.exports.pkl:PklExport",
    "parquet": "pipeline.exports.parquet:ParquetExport",
})
