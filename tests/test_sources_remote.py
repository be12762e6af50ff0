"""Remote sources against real servers: moto's S3 server through s3fs, a Range-honouring HTTP server.

Each case checks what a user of a bucket or a web server would see: the same features as
the same files on local disk, every video exactly once after a SIGKILL and a rerun, the
failures with their reasons (403, 404, truncated), no block read twice, no secret stored
anywhere, and a run whose endpoint is down stopping with one line and charging nothing.
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from pipeline import commands
from pipeline.decoders import sample_frames
from pipeline.errors import PipelineError
from pipeline.manifest import open_manifest
from pipeline.reader import load_features
from pipeline.samples import Spec, make_video
from pipeline.scanner import scan as scan_source
from pipeline.settings import resolve
from pipeline.sources import open_video, remote, source_for
from tests.conftest import Job, cosine_rows, kill_group, model_args, wait_until
from tests.remote_servers import SECRET, http_server, s3_server

CLIPS = ["a.mp4", "sub/b.mkv", "sub/deeper/c.mp4", "d.mp4"]


def make_clips(folder: Path, names: list[str], frames: int = 12) -> None:
    for i, name in enumerate(names):
        make_video(folder / name, Spec(name, frames=frames + 3 * i, width=48, height=40))


def job_options(out: Path, tiny: dict[str, str], video_dir: str | None = None, **extra: object):
    """The settings a CLI call would build, for running the commands in this process."""
    args = dict(zip(("model", "pretrained"), model_args(tiny)[1::2]))
    return resolve({"output_dir": str(out), "video_dir": video_dir, "num_frames": 4, "batch_size": 2,
                    "num_workers": 1, "shard_size": 2, **args, **extra})


def extract_here(out: Path, tiny: dict[str, str], video_dir: str) -> dict[str, np.ndarray]:
    """scan and run in this process; features by path relative to `video_dir`."""
    commands.scan(job_options(out, tiny, video_dir))
    assert commands.run(job_options(out, tiny)) == 0
    return by_relative_name(out, video_dir)


def by_relative_name(out: Path, video_dir: str) -> dict[str, np.ndarray]:
    feats = load_features(out)
    root = video_dir.rstrip("/") + "/"
    return {p[len(root):]: f for p, f in zip(feats.paths, feats.features)}


def assert_same_features(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert sorted(got) == sorted(want)
    names = sorted(want)
    cos = cosine_rows(np.stack([got[n] for n in names]), np.stack([want[n] for n in names]))
    assert (cos >= 0.99999).all(), dict(zip(names, cos))


def failures(out: Path) -> dict[str, str]:
    manifest = open_manifest(out, None)
    try:
        return {p.rsplit("/", 1)[-1]: e for p, e in manifest.failures(None)}
    finally:
        manifest.close()


def assert_no_secret(folder: Path) -> None:
    """Not in the manifest, the logs, the shards, the exports: no file under the job holds it."""
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files
    for p in files:
        assert SECRET.encode() not in p.read_bytes(), p


@pytest.mark.slow
def test_s3_bucket_like_a_local_folder(tmp_path: Path, tiny_model: dict[str, str], monkeypatch) -> None:
    local = tmp_path / "local"
    make_clips(local, CLIPS)
    want = extract_here(tmp_path / "local_job", tiny_model, str(local))
    with s3_server(monkeypatch) as s3:
        client = s3.client()
        client.create_bucket(Bucket="vids")
        for name in CLIPS:
            client.upload_file(str(local / name), "vids", f"pre/{name}")
        client.upload_file(str(local / "a.mp4"), "vids", "pre/deny.mp4")
        client.upload_file(str(local / "a.mp4"), "vids", "pre/gone.mp4")
        client.upload_file(str(local / "a.mp4"), "vids", "other/outside.mp4")
        client.put_object(Bucket="vids", Key="pre/notes.txt", Body=b"not a video")
        # moto honours a bucket policy: GetObject on this one key is refused (403).
        client.put_bucket_policy(Bucket="vids", Policy=json.dumps({"Version": "2012-10-17", "Statement": [{
            "Effect": "Deny", "Principal": "*", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::vids/pre/deny.mp4"}]}))

        out = tmp_path / "s3_job"
        with pytest.raises(PipelineError, match=r"s3://\*\*\*@vids/pre/: credentials in a URL") as refused:
            commands.scan(job_options(out, tiny_model, f"s3://s2testkey:{SECRET}@vids/pre/"))
        assert SECRET not in str(refused.value)
        commands.scan(job_options(out, tiny_model, "s3://vids/pre/"))
        job = Job(out, None)
        assert job.query("SELECT count(*) FROM videos") == len(CLIPS) + 2  # notes.txt and other/ are not the prefix's videos
        client.delete_object(Bucket="vids", Key="pre/gone.mp4")  # deleted between scan and run

        # SIGKILL the run (its decode workers too) once it has committed something, then rerun.
        proc = job.start("run", "--batch-size", "1", "--shard-size", "1", "--num-workers", "1")
        assert wait_until(lambda: job.done() >= 1 or proc.poll() is not None, timeout=120, interval=0.05)
        kill_group(proc)
        assert job.done() < len(CLIPS), "the run finished before it could be killed"
        assert commands.run(job_options(out, tiny_model)) == 0
        job.check_consistent()
        got = by_relative_name(out, "s3://vids/pre/")
        assert_same_features(got, want)  # every video exactly once: load_features checks the shards
        assert job.query("SELECT count(*) FROM videos WHERE status='done'") == len(CLIPS)
        assert failures(out) == {"deny.mp4": "403 forbidden", "gone.mp4": "404 not found (deleted since the scan?)"}
        commands.export(job_options(out, tiny_model))

        # Rewritten in place with the same size: only the ETag says it changed.
        body = bytearray((local / "a.mp4").read_bytes())
        body[-1] ^= 0xFF
        client.put_object(Bucket="vids", Key="pre/a.mp4", Body=bytes(body))
        manifest = open_manifest(out, None)
        try:
            rescan = scan_source(manifest, "s3://vids/pre/", ("mp4", "mkv"))
        finally:
            manifest.close()
        assert (rescan.new, rescan.changed, rescan.vanished) == (0, 1, 1)  # a.mp4 changed, gone.mp4 vanished

        # One archive in the bucket (DFDC's parts): its members named s3://...zip::MEMBER, read in place.
        part = tmp_path / "part_0.zip"
        with zipfile.ZipFile(part, "w", zipfile.ZIP_STORED) as zf:
            for name in CLIPS[:2]:
                zf.write(local / name, name)
            zf.writestr("metadata.json", "{}")
        client.upload_file(str(part), "vids", "zips/part_0.zip")
        errors: list[str] = []
        members = [e.name for e in source_for("s3://vids/zips/part_0.zip").entries(("mp4", "mkv"), errors)]
        assert errors == [] and members == [f"s3://vids/zips/part_0.zip::{n}" for n in CLIPS[:2]]
        got, want_frames = sample_frames(open_video(members[1]), 4), sample_frames(str(local / CLIPS[1]), 4)
        assert got.indices == want_frames.indices and all(np.array_equal(x, y) for x, y in zip(got.frames, want_frames.frames))

        # A prefix of archives (DFDC's zip parts, webdataset's tar shards) beside a loose
        # video, scanned as one location: each archive is listed by its members, the
        # loose video by its URL, metadata.json skipped; the job's features equal the
        # local files'.
        shard = tmp_path / "000000.tar"
        with tarfile.open(shard, "w") as tf:
            for name in CLIPS[2:]:
                tf.add(local / name, f"000000/{name.replace('/', '_')}")
        client.upload_file(str(shard), "vids", "zips/shards/000000.tar")
        client.upload_file(str(local / "a.mp4"), "vids", "zips/loose.mp4")
        parts = tmp_path / "parts_job"
        commands.scan(job_options(parts, tiny_model, "s3://vids/zips/"))
        assert commands.run(job_options(parts, tiny_model)) == 0
        feats = load_features(parts)
        assert sorted(feats.paths) == sorted([*members, "s3://vids/zips/loose.mp4", *(
            f"s3://vids/zips/shards/000000.tar::000000/{n.replace('/', '_')}" for n in CLIPS[2:])])
        source_of = {**{m: m.rsplit("::", 1)[1] for m in members}, "s3://vids/zips/loose.mp4": "a.mp4",
                     **{f"s3://vids/zips/shards/000000.tar::000000/{n.replace('/', '_')}": n for n in CLIPS[2:]}}
        assert_same_features(dict(zip(feats.paths, feats.features)), {p: want[n] for p, n in source_of.items()})
    assert_no_secret(out)
    assert_no_secret(parts)


@pytest.mark.slow
@pytest.mark.parametrize("engines", [["--num-workers", "2"], ["--gpu", "cpu,cpu"]], ids=["one-engine", "two-engines"])
def test_endpoint_down_stops_the_run_and_charges_nothing(tmp_path: Path, tiny_model: dict[str, str], monkeypatch,
                                                         engines: list[str]) -> None:
    """One line, the same under several engines (whose parent once said only 'an engine
    stopped'), nothing charged, and the rerun finishes once the endpoint is back."""
    names = [f"v{i}.mp4" for i in range(5)]
    make_clips(tmp_path / "clips", names, frames=6)
    out = tmp_path / "job"
    with s3_server(monkeypatch) as s3:
        client = s3.client()
        client.create_bucket(Bucket="down")
        for n in names:
            client.upload_file(str(tmp_path / "clips" / n), "down", f"v/{n}")
        commands.scan(job_options(out, tiny_model, "s3://down/v/"))
        s3.stop()
        job = Job(out, None)
        proc = job.cli("run", *engines, check=False)
        assert proc.returncode == 1, proc.stderr
        errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            "error: s3://down: every video fails to open (connection refused); is the endpoint up? nothing was charged"
        ], proc.stderr
        assert job.query("SELECT count(*) FROM videos WHERE status='pending' AND attempts=0 AND error IS NULL") == 5
        assert job.query("SELECT max(claims) FROM videos") == 0
        s3.start()  # the endpoint is back: the rerun finishes
        assert commands.run(job_options(out, tiny_model)) == 0
        assert job.done() == 5


def test_http_listing_ranges_and_failures(tmp_path: Path, tiny_model: dict[str, str]) -> None:
    root = tmp_path / "www"
    make_clips(root / "videos", CLIPS[:3])
    want = extract_here(tmp_path / "local_job", tiny_model, str(root / "videos"))
    make_clips(root / "videos", ["truncated.mp4", "gone.mp4", "reset.mp4"])
    (root / "videos" / "notes.txt").write_text("not a video")
    with http_server(root) as server:
        url = f"{server.url}/videos/"
        out = tmp_path / "http_job"
        commands.scan(job_options(out, tiny_model, url))  # the index pages' links, a HEAD each
        (root / "videos" / "gone.mp4").unlink()
        assert commands.run(job_options(out, tiny_model)) == 0
        got = by_relative_name(out, url)
        assert_same_features(got, want)
        assert failures(out) == {
            "truncated.mp4": "truncated object: the connection ended before the object did",
            "gone.mp4": "404 not found (deleted since the scan?)",
            "reset.mp4": "connection reset",  # an endpoint's reason, held, then charged once others open
        }


def test_block_cache_reads_nothing_twice_and_cache_dir_copies_once(tmp_path: Path, monkeypatch) -> None:
    root = tmp_path / "www"
    make_video(root / "long.mp4", Spec("long.mp4", frames=240, width=96, height=64, gop=60))
    size = (root / "long.mp4").stat().st_size
    monkeypatch.setattr(remote, "BLOCK_SIZE", 4096)  # small blocks: many of them, seeks across them
    monkeypatch.setattr(remote, "MAX_BLOCKS", size // 4096 + 1)  # room for all: any re-read is the cache's fault
    with http_server(root) as server:
        url = f"{server.url}/long.mp4"
        f = open_video(url)
        local = sample_frames(str(root / "long.mp4"), 4)
        got = sample_frames(f, 4)
        assert got.indices == local.indices and all(np.array_equal(a, b) for a, b in zip(got.frames, local.frames))
        ranges = [(a, b) for _p, a, b in server.requests]
        assert len(ranges) == len(set(ranges)), "a block was fetched twice"
        assert f.cache.cache_info().hits > 0  # the decoder came back to blocks the cache held
        assert sum(b - a for a, b in ranges) <= size

        server.requests.clear()
        remote.set_cache_dir(str(tmp_path / "copies"))
        try:
            first, second = open_video(url), open_video(url)
        finally:
            remote.set_cache_dir(None)
        assert first == second and Path(first).read_bytes() == (root / "long.mp4").read_bytes()
        assert len(server.requests) == 1  # copied once, whole; the second open reused it
        assert not list((tmp_path / "copies").glob(".*part"))


def test_urls_with_credentials_are_refused_and_masked() -> None:
    for url in (f"s3://AKIAXX:{SECRET}@bucket/p/", f"https://user:{SECRET}@host/v/",
                f"https://host/v/?X-Amz-Signature={SECRET}"):
        with pytest.raises(PipelineError, match="credentials in a URL") as e:
            source_for(url)
        assert SECRET not in str(e.value)
    with pytest.raises(OSError) as e:
        remote.RemoteStore.stat(f"https://host/a.mp4?sig={SECRET}")
    assert SECRET not in str(e.value)


def test_a_store_whose_package_is_missing_is_one_line() -> None:
    with pytest.raises(PipelineError, match=r"gs://b/p/: reading gs:// URLs needs the gcsfs package \(pip install gcsfs\)"):
        source_for("gs://b/p/")
    with pytest.raises(PipelineError, match=r"needs the adlfs package"):
        source_for("az://container/p/")
