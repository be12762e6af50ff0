"""`verify`: a good job passes; a truncated shard, a NaN, a sidecar that disagrees and a changed
checkpoint are each caught in a line naming the shard or video, with a non-zero exit; nothing
is written. The job is real (tiny clips, the tiny CLIP through open_clip) and each test breaks
its own copy of it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from pipeline.samples import make_clips, make_tiny_clip
from tests.conftest import cli
from tests.test_cli import main_in_process, one_line_error  # noqa: F401 - main_in_process is a fixture


@pytest.fixture(scope="module")
def good_job(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Five clips in shards of two, with the job's own checkpoint file (one test changes it)."""
    root = tmp_path_factory.mktemp("verify")
    model = make_tiny_clip(root / "model")
    videos = make_clips(root / "videos", 5, width=32, height=24, frames=4, vary=2)
    out = root / "job"
    cli("extract", "--video-dir", str(videos), "--output-dir", str(out), "--model", model["model"],  # one process
        "--pretrained", model["pretrained"], "--num-frames", "2", "--gpu", "cpu", "--num-workers", "1", "--shard-size", "2")
    return {"out": out, "checkpoint": Path(model["pretrained"]), "root": root}


def copy_of(good_job: dict[str, Path], tmp_path: Path) -> Path:
    out = tmp_path / "job"
    shutil.copytree(good_job["out"], out)
    return out


def shards(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("*-?????.npy"))


def state(out: Path) -> tuple[list[str], dict[str, str]]:
    """The manifest's content and every file's hash: what verify must leave as it was."""
    with sqlite3.connect(out / "manifest.sqlite") as c:
        dump = list(c.iterdump())
    files = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(out.rglob("*")) if p.is_file() and "manifest.sqlite" not in p.name}
    return dump, files


def problems(call, out: Path) -> list[str]:
    proc = call("verify", "--output-dir", str(out))
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stdout.splitlines()


def test_a_good_job_passes_and_nothing_is_written(good_job, main_in_process) -> None:
    out = good_job["out"]
    before = state(out)
    proc = cli("verify", "--output-dir", str(out))  # a real process: exit 0, no problem lines
    assert proc.stdout == "" and "5 done videos in 3 shards, 512-d: all hold" in proc.stderr
    report = json.loads(main_in_process("verify", "--output-dir", str(out), "--json").stdout)
    assert report["ok"] and report["problems"] == [] and report["warnings"] == []
    assert report["done"] == 5 and report["shards"] == 3
    fp = report["fingerprint"]
    assert fp["weights"] == "sha256:" + hashlib.sha256(good_job["checkpoint"].read_bytes()).hexdigest()
    assert fp["preprocessing"]["num_frames"] == 2 and fp["architecture"] == "tiny-clip"
    for side in (out / "shards").glob("*.json"):  # every shard says what made it
        assert json.loads(side.read_text())["fingerprint"] == fp
    assert state(out) == before


def test_a_truncated_shard(good_job, tmp_path, main_in_process) -> None:
    out = copy_of(good_job, tmp_path)
    shard = shards(out)[1]
    shard.write_bytes(shard.read_bytes()[:-1000])
    lines = problems(main_in_process, out)
    assert len(lines) == 1 and lines[0].startswith(f"shard {shard.name}: unreadable") and "2 done videos" in lines[0]


def test_a_nan_written_into_a_shard(good_job, tmp_path, main_in_process) -> None:
    out = copy_of(good_job, tmp_path)
    shard = shards(out)[0]
    data = np.load(shard)
    data[1, 7] = np.nan
    data[0] *= 1.01  # and one feature no longer of unit norm
    np.save(shard, data)
    side = json.loads(shard.with_suffix(".json").read_text())["videos"]
    lines = problems(main_in_process, out)
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"video {side[0]['path']} (shard {shard.stem}, row 0)") and "norm 1.01" in lines[0]
    assert lines[1].startswith(f"video {side[1]['path']} (shard {shard.stem}, row 1)") and "NaN or Inf" in lines[1]


def test_a_sidecar_that_disagrees(good_job, tmp_path, main_in_process) -> None:
    out = copy_of(good_job, tmp_path)
    first, second = (s.with_suffix(".json") for s in shards(out)[:2])
    side = json.loads(first.read_text())
    side["videos"].reverse()  # rows swapped: each names the other's video
    first.write_text(json.dumps(side))
    side = json.loads(second.read_text())
    side["videos"].append({"id": 99, "path": "extra.mp4", "index": 2})  # a row the shard does not hold
    side["fingerprint"]["weights"] = "sha256:" + "0" * 64  # and made with other weights
    side["fingerprint"]["digest"] = "0" * 16
    second.write_text(json.dumps(side))
    lines = problems(main_in_process, out)
    assert len(lines) == 4, lines
    assert all(f"the sidecar of {first.stem} says row" in line for line in lines[:2])
    assert lines[2] == f"shard {second.stem}: sidecar lists 3 videos, the shard holds 2 rows"
    assert lines[3].startswith(f"shard {second.stem}: made with another model than the job's (weights differ")


def test_a_job_from_before_fingerprints_passes_with_a_warning(good_job, tmp_path, main_in_process) -> None:
    out = copy_of(good_job, tmp_path)
    with sqlite3.connect(out / "manifest.sqlite") as c:
        c.execute("DELETE FROM job_settings WHERE key='model_fingerprint'")
    for side in (out / "shards").glob("*.json"):
        data = json.loads(side.read_text())
        del data["fingerprint"]
        side.write_text(json.dumps(data))
    proc = main_in_process("verify", "--output-dir", str(out))
    assert proc.returncode == 0 and proc.stdout == ""
    assert "warning: the job's model fingerprint is unknown" in proc.stderr
    assert "warning: 3 of 3 shards were written before fingerprints" in proc.stderr
    # A run with nothing to do loads no model (docs/design/startup.md): the job stays unknown.
    cli("run", "--output-dir", str(out), "--gpu", "cpu", "--num-workers", "1")
    report = json.loads(main_in_process("verify", "--output-dir", str(out), "--json").stdout)
    assert report["ok"] and report["fingerprint"] is None
    # The next run that loads the model (a new video) records it, and its shard carries it.
    more = make_clips(tmp_path / "more", 1, width=32, height=24, frames=4, vary=2)
    cli("scan", "--video-dir", str(more), "--output-dir", str(out))
    cli("run", "--output-dir", str(out), "--gpu", "cpu", "--num-workers", "1")
    report = json.loads(main_in_process("verify", "--output-dir", str(out), "--json").stdout)
    assert report["ok"] and report["fingerprint"]["weights"].startswith("sha256:")
    assert report["warnings"] == ["3 of 4 shards were written before fingerprints were recorded: "
                                  "the model they were made with cannot be checked"]


def test_a_job_whose_checkpoint_changed(good_job, tmp_path, main_in_process) -> None:
    """Verify says so, and a later run with work to do is refused instead of mixing two models' features."""
    out, checkpoint = good_job["out"], good_job["checkpoint"]
    original = checkpoint.read_bytes()
    other = make_tiny_clip(good_job["root"] / "other", seed=99)
    more = copy_of(good_job, tmp_path)  # the same job with one more video to do
    cli("scan", "--video-dir", str(make_clips(tmp_path / "more", 1, width=32, height=24, frames=4)), "--output-dir", str(more))
    try:
        shutil.copyfile(other["pretrained"], checkpoint)
        lines = problems(main_in_process, out)
        assert len(lines) == 1 and lines[0].startswith(f"checkpoint {checkpoint} changed since the features were made")
        refused = one_line_error(main_in_process("run", "--output-dir", str(more), "--gpu", "cpu"))
        assert "the model no longer matches this job's features: weights differ" in refused
        # A search would encode its query with the other weights and rank the job's videos by nonsense.
        for query in (["--text", "a face"], ["--video", str(next((tmp_path / "more").glob("*.mp4")))]):
            refused = one_line_error(main_in_process("search", "--output-dir", str(out), *query))
            assert "the model no longer matches this job's features: weights differ" in refused, query
    finally:
        checkpoint.write_bytes(original)
    assert main_in_process("verify", "--output-dir", str(out)).returncode == 0


def test_nothing_done_yet(tmp_path, tiny_model, main_in_process) -> None:
    videos = make_clips(tmp_path / "v", 1, width=32, height=24, frames=3)
    out = tmp_path / "job"
    assert main_in_process("scan", "--video-dir", str(videos), "--output-dir", str(out), "--model",
                           tiny_model["model"], "--pretrained", tiny_model["pretrained"]).returncode == 0
    assert "nothing to verify" in one_line_error(main_in_process("verify", "--output-dir", str(out)))


def test_a_run_start_trusts_the_remembered_hash_only_while_the_file_is_untouched(
        good_job, tmp_path, main_in_process, monkeypatch) -> None:
    """A run start hashes the checkpoint once and remembers it in this host's cache with the
    file's stamp (a ViT-L checkpoint is 1.7 GB, on every restart); while path, inode, size,
    mtime and ctime are the same the file is not read again, and verify reads it anyway.
    Other weights of the same size written over it, its mtime put back, change its ctime:
    the next run is refused as before."""
    from pipeline import fingerprint
    from pipeline.errors import PipelineError
    from pipeline.manifest import open_manifest

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "_HASHES", {})  # as in a new process
    checkpoint, original = good_job["checkpoint"], good_job["checkpoint"].read_bytes()
    more = copy_of(good_job, tmp_path)
    cli("scan", "--video-dir", str(make_clips(tmp_path / "more", 1, width=32, height=24, frames=4)), "--output-dir", str(more))
    assert main_in_process("run", "--output-dir", str(more), "--gpu", "cpu").returncode == 0
    cached = json.loads(fingerprint.hash_cache_path().read_text())[str(checkpoint.resolve())]
    assert cached["sha256"] == hashlib.sha256(original).hexdigest()

    opened: list[Path] = []

    def watched_open(path, *args, **kw):
        opened.append(Path(path).resolve())
        return open(path, *args, **kw)

    manifest = open_manifest(more, None)
    try:
        job = manifest.job()
        monkeypatch.setattr(fingerprint, "_HASHES", {})  # a new process: only the cache file knows
        monkeypatch.setattr(fingerprint, "open", watched_open, raising=False)  # the module's file reads
        fingerprint.refuse_changed_model(manifest, job)
        assert checkpoint.resolve() not in opened, "a run start read the unchanged checkpoint again"
        fp = fingerprint.stored(manifest)
        assert fingerprint.check_current(fp, job) == [] and checkpoint.resolve() in opened  # verify reads it

        other = Path(make_tiny_clip(good_job["root"] / "same-size", seed=7)["pretrained"]).read_bytes()
        assert len(other) == len(original) and other != original
        st = checkpoint.stat()
        try:
            checkpoint.write_bytes(other)
            os.utime(checkpoint, ns=(st.st_atime_ns, st.st_mtime_ns))  # size and mtime as they were
            with pytest.raises(PipelineError, match="weights differ"):
                fingerprint.refuse_changed_model(manifest, job)
        finally:
            checkpoint.write_bytes(original)
    finally:
        manifest.close()
    assert main_in_process("verify", "--output-dir", str(good_job["out"])).returncode == 0
