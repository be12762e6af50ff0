"""After the run: parquet export, the faiss index, text and video search, near-duplicates.

One job of seven tiny clips (five distinct pictures, a re-encode of one of them, and a
file name with a line break), extracted once for the module with the tiny random CLIP
(--save-frames, so the parquet export's per-frame column is checked too).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pipeline.samples import Spec, make_video
from tests.conftest import Job, cli, model_args
from tests.test_cli import main_in_process  # noqa: F401 - the fixture: real parsing, no torch import per call

RUN = ["--gpu", "cpu", "--num-workers", "2", "--batch-size", "4"]
DISTINCT = 5
# Figures with the tiny random CLIP (the test prints them): distinct clips 0.986-0.997 apart,
# the re-encode 0.9999+ from its original; 0.999 separates the two with margin either side.
THRESHOLD = 0.999
SIZE = dict(frames=12, width=64, height=48)


def blocks(seed: int):
    """A clip's pictures: a seeded grid of coloured blocks sliding right, one per seed."""
    grid = np.random.default_rng(seed).integers(0, 256, (6, 8, 3)).astype(np.uint8)

    def picture(i: int, width: int, height: int) -> np.ndarray:
        img = np.kron(grid, np.ones((height // 6 + 1, width // 8 + 1, 1), np.uint8))[:height, :width]
        return np.ascontiguousarray(np.roll(img, i, axis=1))

    return picture


def reencode(src: Path, dst: Path, crf: int) -> Path:
    """The same clip decoded and encoded again with PyAV at another quality (a re-upload)."""
    import av

    with av.open(str(src)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    h, w = frames[0].shape[:2]
    return make_video(dst, Spec("x.mp4", frames=len(frames), width=w, height=h, options=(("crf", str(crf)),)),
                      lambda i, _w, _h: frames[i])


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, tiny_model: dict[str, str]) -> Job:
    root = tmp_path_factory.mktemp("search")
    videos = root / "videos"
    for k in range(DISTINCT):
        make_video(videos / f"clip{k}.mp4", Spec("x.mp4", **SIZE), blocks(k))
    reencode(videos / "clip0.mp4", videos / "clip0_crf40.mp4", 40)
    make_video(videos / "two\nlines.mp4", Spec("x.mp4", **SIZE), blocks(99))
    j = Job(root / "job", None)
    j.cli("extract", "--video-dir", str(videos), *model_args(tiny_model), "--save-frames", *RUN)
    j.videos = videos  # type: ignore[attr-defined]
    return j


def _json(result) -> dict:  # noqa: ANN001 - main_in_process's namespace
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _same_hits(a: list[dict], b: list[dict]) -> bool:
    """The same videos in the same order, scores equal up to float32 rounding (faiss vs numpy)."""
    return [h["path"] for h in a] == [h["path"] for h in b] and np.allclose([h["score"] for h in a], [h["score"] for h in b], atol=1e-5)


def test_parquet_round_trips_the_npy_export(job: Job, tiny_model: dict[str, str], tmp_path: Path, main_in_process) -> None:
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.exports.job import frame_indices
    from pipeline.exports.npy import NpyExport
    from pipeline.exports.parquet import ParquetExport
    from pipeline.reader import load_features
    from pipeline.samplers import sample_indices

    assert main_in_process("export", *job.args, "--format", "parquet").returncode == 0
    want, want_paths = NpyExport.read(job.out)
    got, paths = ParquetExport.read(job.out)
    assert paths == want_paths and any("\n" in p for p in paths)
    assert got.dtype == np.float32 and np.array_equal(got, want)

    table = pq.read_table(job.out / "features.parquet")
    kind = table.schema.field("feature").type
    assert pa.types.is_fixed_size_list(kind) and kind.list_size == 512 and kind.value_type == pa.float32()
    assert table.num_rows == len(paths)
    frames = dict(zip(paths, table.column("stream_frames").to_pylist()))
    assert frames[str(job.videos / "clip1.mp4")] == SIZE["frames"]  # type: ignore[attr-defined]
    for n, indices in zip(table.column("stream_frames").to_pylist(), table.column("frame_indices").to_pylist()):
        assert indices == sample_indices(n, 8)  # exact sampling's frames; keyframe sampling's are not stored:
    assert frame_indices({"sampling": "keyframes", "num_frames": "8"}, 12) is None
    per_frame = np.asarray(table.column("frame_features").to_pylist(), dtype=np.float32)
    assert per_frame.shape == (len(paths), 8, 512)
    assert np.array_equal(per_frame, load_features(job.out, frames=True).frames)
    df = pd.read_parquet(job.out / "features.parquet")
    assert list(df["path"]) == want_paths
    assert np.array_equal(np.stack(df["feature"].to_numpy()).astype(np.float32), want)
    assert set(df["model"]) == {tiny_model["model"]} and set(df["pretrained"]) == {tiny_model["pretrained"]}
    assert json.loads(table.schema.metadata[b"pipeline.job"])["num_frames"] == "8"
    # The other readers users open it with (pinned in requirements.txt, so checked everywhere).
    import datasets
    import duckdb
    import polars as pl

    assert pl.read_parquet(job.out / "features.parquet")["path"].to_list() == want_paths
    assert duckdb.sql(f"SELECT count(*) FROM '{job.out / 'features.parquet'}'").fetchall() == [(len(paths),)]
    ds = datasets.load_dataset("parquet", data_files=str(job.out / "features.parquet"), split="train",
                               cache_dir=str(tmp_path / "hf-datasets"))
    assert ds["path"] == want_paths
    assert np.array_equal(np.asarray(ds["feature"], dtype=np.float32), want)


def test_parquet_frame_times_are_the_frames_pts_in_seconds(job: Job, tmp_path: Path, main_in_process) -> None:
    """frame_times equal a full PyAV decode's pts x time_base at frame_indices; a job whose
    shards were written before times were recorded (sidecar entries without "times") exports null."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.reference import frame_times

    assert main_in_process("export", *job.args, "--format", "parquet").returncode == 0
    table = pq.read_table(job.out / "features.parquet")
    assert table.schema.field("frame_times").type == pa.list_(pa.float64())
    rows = zip(table.column("path").to_pylist(), table.column("frame_indices").to_pylist(), table.column("frame_times").to_pylist())
    for path, indices, times in rows:
        want = frame_times(path)
        assert times is not None and len(times) == len(indices) == 8, path
        assert np.allclose(times, [want[i] for i in indices], rtol=0, atol=1e-6), (path, times, indices)
        assert times[-1] > times[0]  # real times, not a constant

    old = tmp_path / "old"
    shutil.copytree(job.out, old)
    for side in (old / "shards").glob("*.json"):
        data = json.loads(side.read_text())
        for entry in data["videos"]:
            entry.pop("times")  # every entry of a new shard has them
        side.write_text(json.dumps(data))
    assert main_in_process("export", "--output-dir", str(old), "--format", "parquet").returncode == 0
    before = pq.read_table(old / "features.parquet")
    assert before.column("frame_times").null_count == before.num_rows > 0
    assert before.column("frame_indices").to_pylist() == table.column("frame_indices").to_pylist()


def test_parquet_keeps_per_frame_features_of_save_frames_jobs(tmp_path: Path) -> None:
    """A --save-frames job's rows carry their frames (num_frames x dim), in row groups per write."""
    import pyarrow.parquet as pq

    from pipeline.exports import RowFacts
    from pipeline.exports.parquet import ParquetExport

    rng = np.random.default_rng(0)
    frames = rng.standard_normal((5, 3, 4)).astype(np.float32)
    writer = ParquetExport(tmp_path, 5, 4, {"model": "m", "pretrained": "p", "num_frames": "3", "save_frames": "true"})
    writer.write(["a", "b"], frames[:2].mean(1), RowFacts([10, 11], [[0, 4, 9], [0, 5, 10]], frames[:2]))
    writer.write(["c", "d", "e"], frames[2:].mean(1), RowFacts([3, 3, 3], [[0, 1, 2]] * 3, frames[2:]))
    writer.close()
    f = pq.ParquetFile(tmp_path / "features.parquet")
    assert f.metadata.num_row_groups == 2
    got = f.read().column("frame_features").to_pylist()
    assert np.array_equal(np.asarray(got, dtype=np.float32), frames)


def test_search_video_ranks_itself_first(job: Job, tmp_path: Path, main_in_process) -> None:
    videos: Path = job.videos  # type: ignore[attr-defined]
    for name in ("clip2.mp4", "two\nlines.mp4"):
        hits = _json(main_in_process("search", *job.args, "--video", name, "--json", "--top-k", "3"))["hits"]
        assert hits[0]["path"] == str(videos / name) and hits[0]["score"] == pytest.approx(1.0, abs=1e-5)
    # A file the job has not seen: decoded and encoded with the job's settings.
    new = shutil.copy(videos / "clip3.mp4", tmp_path / "uploaded.mp4")
    answer = _json(main_in_process("search", *job.args, "--video", str(new), "--json"))
    assert answer["hits"][0]["path"] == str(videos / "clip3.mp4")
    assert answer["hits"][0]["score"] > 0.9999
    assert len(answer["hits"]) == DISTINCT + 2


def test_text_search_is_the_brute_force_ranking_of_encode_text(job: Job, tiny_model: dict[str, str], main_in_process) -> None:
    """The job's model's text tower, computed here with open_clip itself on the checkpoint."""
    import open_clip
    import torch

    from pipeline.exports.npy import NpyExport
    from tests.reference import load_open_clip

    text = "a person talking to the camera"
    model, _ = load_open_clip(tiny_model["model"], tiny_model["pretrained"])
    with torch.no_grad():
        t = model.encode_text(open_clip.get_tokenizer(Path(tiny_model["model"]).stem)([text]))[0].numpy()
    feats, paths = NpyExport.read(job.out)
    scores = feats @ (t / np.linalg.norm(t))
    order = np.argsort(-scores, kind="stable")
    shutil.rmtree(job.out / "index", ignore_errors=True)
    brute = _json(main_in_process("search", *job.args, "--text", text, "--json", "--top-k", "100"))
    assert brute["method"] == "brute force"
    assert [h["path"] for h in brute["hits"]] == [paths[i] for i in order]
    assert np.allclose([h["score"] for h in brute["hits"]], scores[order], atol=1e-5)
    # The same answer from the exact index.
    assert _json(main_in_process("index", *job.args, "--json"))["kind"] == "flat"
    indexed = _json(main_in_process("search", *job.args, "--text", text, "--json", "--top-k", "100"))
    assert indexed["method"] == "index (flat)"
    assert [h["path"] for h in indexed["hits"]] == [h["path"] for h in brute["hits"]]
    assert np.allclose([h["score"] for h in indexed["hits"]], scores[order], atol=1e-5)


def test_a_model_without_text_tower_is_a_one_line_error() -> None:
    """The Model interface's default: a family or checkpoint with an image tower only."""
    from pipeline.errors import PipelineError
    from pipeline.models import Model

    class VisionOnly(Model):
        dim = 4

        def encode(self, pixels):  # noqa: ANN001, ANN201 - the interface's
            return pixels

    with pytest.raises(PipelineError, match="no text tower"):
        VisionOnly().encode_text(["a dog"])


def test_dedup_finds_the_re_encode_and_no_distinct_pair(job: Job, tmp_path: Path, main_in_process, capsys) -> None:
    from pipeline.exports.npy import NpyExport

    videos: Path = job.videos  # type: ignore[attr-defined]
    feats, paths = NpyExport.read(job.out)
    sims = feats @ feats.T
    copy = (paths.index(str(videos / "clip0.mp4")), paths.index(str(videos / "clip0_crf40.mp4")))
    others = [sims[i, j] for i in range(len(paths)) for j in range(i + 1, len(paths)) if (i, j) != tuple(sorted(copy))]
    with capsys.disabled():  # the figures THRESHOLD is picked from
        print(f"\nre-encode cosine {sims[copy]:.6f}; distinct pairs {min(others):.6f}..{max(others):.6f}")
    assert sims[copy] >= THRESHOLD > max(others)
    out = tmp_path / "dups.json"
    data = _json(main_in_process("dedup", *job.args, "--threshold", str(THRESHOLD), "--out", str(out), "--json"))
    assert [g["videos"] for g in data["groups"]] == [[str(videos / "clip0.mp4"), str(videos / "clip0_crf40.mp4")]]
    assert data["pairs"] == 1 and data["groups"][0]["pairs"][0]["similarity"] >= THRESHOLD
    assert json.loads(out.read_text()) == data
    csv_out = tmp_path / "dups.csv"
    assert main_in_process("dedup", *job.args, "--threshold", str(THRESHOLD), "--out", str(csv_out)).returncode == 0
    lines = csv_out.read_text().splitlines()
    assert lines[0] == "group,a,b,similarity" and len(lines) == 2


def test_ivf_recall_on_a_clustered_synthetic_set() -> None:
    """20,000 x 64 unit vectors around 200 centres; queries held out from the nprobe choice."""
    from pipeline.index import build_ivf, choose_nprobe, exact_top, ivf_lists, recall_at

    rng = np.random.default_rng(0)
    centres = rng.standard_normal((200, 64)).astype(np.float32)

    def draw(n: int) -> np.ndarray:
        x = centres[rng.integers(0, len(centres), n)] + 0.35 * rng.standard_normal((n, 64)).astype(np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    data, queries = draw(20_000), draw(300)
    index, trained = build_ivf(data)
    assert index.nlist == ivf_lists(20_000) and trained == min(len(data), 64 * index.nlist)
    nprobe, chosen_recall = choose_nprobe(index, data)
    index.nprobe = nprobe
    _, truth = exact_top(data, queries, 10)
    _, found = index.search(queries, 10)
    recall = recall_at(found, truth)
    print(f"nlist {index.nlist}, nprobe {nprobe}: recall@10 {chosen_recall:.3f} (choice), {recall:.3f} (held out)")
    assert recall >= 0.95 and nprobe < index.nlist


@pytest.mark.slow  # one more extract (scan, run, export) in a subprocess
def test_index_is_extended_when_more_rows_are_done(job: Job, tmp_path: Path, tiny_model: dict[str, str], main_in_process) -> None:
    """A copy of the job gets one more video: the index is stale (a warning, brute force) until
    `index` extends it; `--ivf-min` below the size gives an IVF index with the same answers."""
    copy = Job(tmp_path / "job", None)
    shutil.copytree(job.out, copy.out)
    shutil.rmtree(copy.out / "index", ignore_errors=True)
    first = _json(main_in_process("index", *copy.args, "--json"))
    assert (first["kind"], first["count"], first["action"]) == ("flat", DISTINCT + 2, "built")
    late = tmp_path / "late"
    make_video(late / "late.mp4", Spec("x.mp4", **SIZE), blocks(7))
    copy.cli("extract", "--video-dir", str(late), *model_args(tiny_model), *RUN)

    stale = main_in_process("search", *copy.args, "--video", "late.mp4", "--json")
    answer = _json(stale)
    assert answer["method"] == "brute force" and "older than the done rows" in stale.stderr
    assert answer["hits"][0]["path"] == str(late / "late.mp4")
    again = _json(main_in_process("index", *copy.args, "--json"))
    assert (again["count"], again["action"]) == (DISTINCT + 3, "extended")
    now = _json(main_in_process("search", *copy.args, "--video", "late.mp4", "--json"))
    assert now["method"] == "index (flat)" and _same_hits(now["hits"], answer["hits"])
    assert _json(main_in_process("index", *copy.args, "--json"))["action"] == "unchanged"
    ivf = _json(main_in_process("index", *copy.args, "--ivf-min", "2", "--json"))
    assert ivf["kind"] == "ivf" and ivf["recall_at_10"] == 1.0
    by_ivf = _json(main_in_process("search", *copy.args, "--video", "late.mp4", "--json"))
    assert by_ivf["method"].startswith("index (ivf") and _same_hits(by_ivf["hits"], answer["hits"])


def _dump(job: Job) -> list[str]:
    """The manifest's content (SQLite's own file header changes when a reader checkpoints its WAL)."""
    import sqlite3

    with sqlite3.connect(job.out / "manifest.sqlite") as c:
        return list(c.iterdump())


def test_bad_input_is_one_line_and_changes_nothing(tmp_path: Path, tiny_model: dict[str, str], main_in_process) -> None:
    videos = tmp_path / "v"
    make_video(videos / "a.mp4", Spec("x.mp4", **SIZE), blocks(1))
    job = Job(tmp_path / "job", None)
    assert main_in_process("scan", "--video-dir", str(videos), *job.args, *model_args(tiny_model)).returncode == 0
    before = _dump(job)
    for argv, words in [
        (("search", "--text", "a dog"), "no video is done yet"),
        (("search", "--video", "a.mp4"), "no video is done yet"),
        (("index",), "no video is done yet"),
        (("dedup",), "no video is done yet"),
        (("dedup", "--out", str(tmp_path / "x.txt")), "must end in .csv or .json"),
        (("search",), "one of --text"),
        (("search", "--bogus"), "No such option"),
        (("search", "--video", "a.mp4", "--top-k", "0"), "top_k must be at least 1"),
        (("index", "--ivf-min", "0"), "ivf_min must be at least 1"),
        (("dedup", "--threshold", "2"), "between -1 and 1"),
    ]:
        r = main_in_process(*argv, *job.args)
        assert r.returncode != 0 and r.stderr.startswith("error:") and words in r.stderr, (argv, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert _dump(job) == before
    assert not (job.out / "index").exists() and not list(tmp_path.glob("x.txt"))
