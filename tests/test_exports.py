"""Every export format round-trips the same features and paths, whatever the paths hold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.exports import FORMATS

PATHS = [
    "/data/plain.mp4",
    "/data/two\nlines.mp4",
    "/data/back\\slash\r.mp4",
    "/data/literal \\n and \\r, no line break.mp4",  # looks like an escape: must read back as written
    "/data/a\\\\nb.mp4",
    "/data/ünïcödé 视频.mp4",
    "/data/trailing backslash\\",
]


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_format_round_trips_features_and_paths(tmp_path: Path, fmt: str) -> None:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((len(PATHS), 16)).astype(np.float32)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    kind = FORMATS.load(fmt)
    writer = kind(tmp_path, len(PATHS), 16)
    writer.write(PATHS[:3], feats[:3])  # in pieces, as a large job is written
    writer.write(PATHS[3:], feats[3:])
    written = writer.close()
    assert written and all(p.is_file() for p in written)
    got, paths = kind.read(tmp_path)
    assert paths == PATHS
    assert got.dtype == np.float32 and np.array_equal(got, feats)


@pytest.mark.parametrize("fmt", FORMATS.names())
def test_format_refuses_a_short_write(tmp_path: Path, fmt: str) -> None:
    writer = FORMATS.load(fmt)(tmp_path, 3, 4)
    writer.write(["/a.mp4"], np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError):
        writer.close()
    assert not list(tmp_path.iterdir()), "a partial export was written"
