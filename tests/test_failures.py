"""Bad videos end `failed` with their reason after bounded attempts; the run goes on."""

from __future__ import annotations

import pickle
import re
import sqlite3
from pathlib import Path

import numpy as np

from pipeline.preprocess import from_open_clip
from pipeline.samples import Spec, make_video
from tests.conftest import cli, model_args, status_json
from tests.reference import assert_same_videos, definition_feature, load_open_clip, reference_video

RUN = ["--gpu", "cpu", "--num-workers", "2", "--batch-size", "2"]


def test_attempts_are_bounded_and_retry_failed_works(tmp_path: Path, tiny_model) -> None:
    src = tmp_path / "v"
    make_video(src / "good.mp4", Spec("good.mp4", frames=12, width=64, height=48))
    make_video(src / "will_vanish.mp4", Spec("w.mp4", frames=12, width=64, height=48))
    good_mkv = make_video(tmp_path / "good.mkv", Spec("good.mkv", frames=40, width=64, height=48))
    data = good_mkv.read_bytes()
    (src / "truncated.mkv").write_bytes(data[: len(data) // 2])  # opens, then runs out mid-stream
    (src / "text.avi").write_text("hello")
    out = tmp_path / "out"
    cli("scan", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny_model))
    (src / "will_vanish.mp4").unlink()  # vanished between scan and run
    proc = cli("run", "--output-dir", str(out), *RUN, "--max-attempts", "3")
    st = status_json(out)
    assert (st["done"], st["failed"]) == (2, 2), st  # the truncated mkv still gives its decodable frames
    reasons = {Path(f["path"]).name: f["error"] for f in st["failures"]}
    assert "not found" in reasons["will_vanish.mp4"]
    assert "cannot open" in reasons["text.avi"]
    with sqlite3.connect(out / "manifest.sqlite") as c:
        attempts = dict(c.execute("SELECT path, attempts FROM videos WHERE status='failed'").fetchall())
    assert set(attempts.values()) == {3}
    assert "failed:" in proc.stderr

    make_video(src / "will_vanish.mp4", Spec("w.mp4", frames=12, width=64, height=48))  # it is back
    cli("run", "--output-dir", str(out), *RUN, "--retry-failed")
    st = status_json(out)
    assert (st["done"], st["failed"]) == (3, 1)
    assert [Path(f["path"]).name for f in st["failures"]] == ["text.avi"]


def _unescape(line: str) -> str:
    """Undo export's escaping of a path that held a line break (README: \\n, \\r, \\xHH,
    \\uHHHH, \\\\), written here apart from the product's own reader."""
    if not re.search(r"\\[nrxu]", line):
        return line
    simple = {"n": "\n", "r": "\r", "\\": "\\"}
    return re.sub(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|.)",
                  lambda m: simple.get(m.group(1)) or chr(int(m.group(1)[1:], 16)), line)


def test_video_paths_lines_read_back_and_older_files_still_do() -> None:
    """Every path is one line and reads back exactly; and a video_paths.txt written before
    the other line breaks were escaped (only \\n, \\r and backslashes, and only in paths
    that held them) reads back as it was written, backslash-x and -u paths included."""
    from pipeline.exports.npy import BREAKS, line_path, path_line

    def older(path: str) -> str:  # the writer before, as it was
        if not re.search(r"[\n\r]|\\[nr]", path):
            return path
        return path.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")

    paths = ["plain.mp4", "two\nlines.mp4", "back\\slash\r.mp4", "C:\\new\\x41.mp4", "a\\x41.mp4", "\\\\server\\u00e9",
             "tail\\", "\\\\x", "Interview\u2028part 1.mp4", "form\x0cfeed\x85.mp4", "text\\u2028of an escape.mp4",
             "both\\n\u2029.mp4"]
    for path in paths:
        line = path_line(path)
        assert line_path(line) == path and not any(c in line for c in BREAKS), (path, line)
        if not any(c in path for c in BREAKS[2:]) and "\\u2028" not in path:  # what the older writer could write
            assert line_path(older(path)) == path, path


def test_newline_in_a_file_name_keeps_export_aligned(tmp_path: Path, tiny_model) -> None:
    """Line i of video_paths.txt (escapes decoded) names the video whose feature is row i of
    features.npy, checked against each video's own reference feature, not against the
    reader the export is built on; features.pkl keeps the paths exactly, row for row."""
    src = tmp_path / "v"
    # Every kind of line break str.splitlines() (the README's loader) splits at, not only \\n.
    names = ["plain.mp4", "two\nlines.mp4", "back\\slash\r.mp4", "Interview\u2028part 1.mp4", "form\x0cfeed\x85.mp4"]
    for i, name in enumerate(names):
        make_video(src / name, Spec("x.mp4", frames=5 + i, width=48, height=32))
    out = tmp_path / "out"
    cli("extract", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny_model), *RUN)
    feats = np.load(out / "features.npy")
    lines = (out / "video_paths.txt").read_text(encoding="utf-8").splitlines()  # as the README loads it
    assert len(lines) == feats.shape[0] == len(names)
    decoded = [_unescape(line) for line in lines]
    assert sorted(decoded) == sorted(str(src / n) for n in names)
    model, preprocess = load_open_clip(tiny_model["model"], tiny_model["pretrained"])
    swscale = from_open_clip(preprocess).geometry.swscale
    resize = status_json(out)["settings"]["resize"]
    want = {p: definition_feature(reference_video(p, 8, swscale), resize, model, preprocess) for p in decoded}
    print(assert_same_videos(feats, np.stack([want[p] for p in decoded]), [repr(Path(p).name) for p in decoded]))
    cli("export", "--output-dir", str(out), "--format", "pkl")
    with open(out / "features.pkl", "rb") as fh:
        data = pickle.load(fh)
    assert sorted(data["video_paths"]) == sorted(decoded)
    assert_same_videos(data["features"], np.stack([want[p] for p in data["video_paths"]]),
                       [repr(Path(p).name) for p in data["video_paths"]])
    assert data["video_paths"] == decoded  # exact paths, in the npy export's order
    for i in range(len(decoded)):
        assert np.array_equal(data["features"][i], feats[i]), i


def test_empty_job_exports_empty_arrays(tmp_path: Path, tiny_model) -> None:
    src = tmp_path / "empty"
    src.mkdir()
    out = tmp_path / "out"
    proc = cli("extract", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny_model), *RUN)
    assert f"no videos found in {src}" in proc.stderr  # allowed, but said: most often a wrong path
    assert np.load(out / "features.npy").shape == (0, 512)
    assert (out / "video_paths.txt").read_text() == ""
