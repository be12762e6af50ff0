"""parquet: features.parquet, one row per done video, streamed a row group per write.

Columns: `path` (the path as the job names it), `feature` (fixed-size list of float32,
the job's dim), `stream_frames` (frames the decoder counted in the stream), `frame_indices`
(the display indices the feature was made from, where the job's sampling fixes them:
exact sampling; null for keyframe sampling, whose choice is not stored), `frame_times`
(each sampled frame's presentation time in seconds, pts x time_base as the decoder saw it,
in the feature's frame order; null for videos whose shard was written before runs recorded
times, and an element is null where the frame had no pts), `model` and `pretrained` (as
the job records them), and for `--save-frames` jobs `frame_features` (num_frames x dim). A path that is not valid UTF-8 (a file name's
raw bytes) is also kept exactly in `path_bytes` (null for every other row). The job's
settings are in the file's key-value metadata (`pipeline.job`, JSON).

Written to a temporary name and renamed on close, as the other formats: a reader sees
the old export or the new one. Memory is one write's rows, whatever the job's size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.exports.base import Exporter, RowFacts
from pipeline.writer import fsync_dir

FILE = "features.parquet"


def _fixed(values: np.ndarray, width: int) -> Any:
    """A [n, width] float32 array as a fixed-size list column, without copying its values."""
    import pyarrow as pa

    flat = pa.array(np.ascontiguousarray(values, dtype=np.float32).reshape(-1), type=pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width)


class ParquetExport(Exporter):
    name = "parquet"
    help = "features.parquet (pandas, pyarrow, polars, DuckDB, datasets)"
    keeps_facts = True

    def __init__(self, out: Path, count: int, dim: int, job: dict[str, str] | None = None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        super().__init__(out, count, dim, job)
        self.frames_per_video = int(self.job.get("num_frames", 0) or 0) if self.job.get("save_frames") == "true" else 0
        columns = [
            pa.field("path", pa.string()),
            pa.field("feature", pa.list_(pa.float32(), dim)),
            pa.field("stream_frames", pa.int64()),
            pa.field("frame_indices", pa.list_(pa.int64())),
            pa.field("frame_times", pa.list_(pa.float64())),
            pa.field("model", pa.string()),
            pa.field("pretrained", pa.string()),
            pa.field("path_bytes", pa.binary()),
        ]
        if self.frames_per_video:
            columns.append(pa.field("frame_features", pa.list_(pa.list_(pa.float32(), dim), self.frames_per_video)))
        meta = {"pipeline.job": json.dumps(self.job, ensure_ascii=False), "pipeline.rows": str(count)}
        self.schema = pa.schema(columns, metadata=meta)
        self.tmp = out / f"{FILE}.tmp"
        self.written = 0
        # Dictionary pages only for the job-wide strings, statistics only for scalar columns: on
        # a float column both are work per value for nothing (features are unique, unordered).
        self._writer = pq.ParquetWriter(self.tmp, self.schema, compression="zstd", use_dictionary=["model", "pretrained"],
                                        write_statistics=["path", "stream_frames", "model", "pretrained"])

    def write(self, paths: list[str], features: np.ndarray, facts: RowFacts | None = None) -> None:
        import pyarrow as pa

        n = len(paths)
        if self.written + n > self.count:
            raise ValueError(f"more rows written than the {self.count} announced")
        facts = facts or RowFacts()
        text, raw = [], []
        for p in paths:
            try:
                text.append(p.encode("utf-8").decode("utf-8"))
                raw.append(None)
            except UnicodeEncodeError:  # undecodable bytes of a file name (surrogateescape)
                b = p.encode("utf-8", "surrogateescape")
                text.append(b.decode("utf-8", "replace"))
                raw.append(b)
        arrays = [
            pa.array(text, pa.string()),
            _fixed(features, self.dim),
            pa.array(facts.stream_frames if facts.stream_frames is not None else [None] * n, pa.int64()),
            pa.array(facts.frame_indices if facts.frame_indices is not None else [None] * n, pa.list_(pa.int64())),
            pa.array(facts.frame_times if facts.frame_times is not None else [None] * n, pa.list_(pa.float64())),
            pa.array([self.job.get("model")] * n, pa.string()),
            pa.array([self.job.get("pretrained")] * n, pa.string()),
            pa.array(raw, pa.binary()),
        ]
        if self.frames_per_video:
            if facts.frames is None:
                raise ValueError("a save_frames job's export needs its per-frame features")
            k = self.frames_per_video
            inner = _fixed(np.asarray(facts.frames).reshape(n * k, self.dim), self.dim)
            arrays.append(pa.FixedSizeListArray.from_arrays(inner, k))
        self._writer.write_table(pa.Table.from_arrays(arrays, schema=self.schema), row_group_size=max(n, 1))
        self.written += n

    def close(self) -> list[Path]:
        self._writer.close()
        if self.written != self.count:
            self.abort()
            raise ValueError(f"{self.written} rows written of the {self.count} announced")
        try:
            with open(self.tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(self.tmp, self.out / FILE)
            fsync_dir(self.out)
        except BaseException:
            self.abort()
            raise
        return [self.out / FILE]

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # noqa: BLE001 - already closed, or the disk that failed it
            pass
        self.tmp.unlink(missing_ok=True)

    @classmethod
    def read(cls, out: Path) -> tuple[np.ndarray, list[str]]:
        import pyarrow.parquet as pq

        table = pq.read_table(out / FILE, columns=["path", "feature", "path_bytes"])
        feature = table.column("feature").combine_chunks()
        dim = feature.type.list_size
        values = feature.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
        paths = [
            raw.decode("utf-8", "surrogateescape") if raw is not None else text
            for text, raw in zip(table.column("path").to_pylist(), table.column("path_bytes").to_pylist())
        ]
        return values.reshape(len(paths), dim), paths
