"""README promises that had no test: each one checked through real runs.

`--gpu auto` without CUDA, QuickGELU for OpenAI tags, `--num-frames` other than 8, shard
size and shard names, `status` speed/ETA/table, the failure reasons users read (built
here with PyAV, not taken from ../shared), and a dead run on another host taken over
only once its lease has run out.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections import Counter
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from pipeline.reader import load_features
from pipeline.samples import Spec, frame_image, make_clips, make_video
from tests.conftest import Job, cli, kill_group, model_args, start_cli, status_json, wait_until
from tests.reference import assert_same_videos, definition_feature, load_open_clip, reference_feature, reference_video

RUN = ["--gpu", "cpu", "--num-workers", "1"]


def write_with_zeroed_packets(path: Path, codec: str, pix_fmt: str, frames: int, zero_from: int) -> Path:
    """An AVI whose packets from `zero_from` on keep their size and timestamps but hold only
    zero bytes: the container is intact and the damage is in the codec data, as on a disk
    with bad sectors. What a decoder makes of it depends on the codec (see the callers)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, pix_fmt
        stream.time_base = Fraction(1, 25)
        count = 0

        def mux(packets) -> None:
            nonlocal count
            for p in packets:
                if count >= zero_from:
                    q = av.Packet(bytes(p.size))
                    q.pts, q.dts, q.stream, q.is_keyframe = p.pts, p.dts, stream, p.is_keyframe
                    p = q
                out.mux(p)
                count += 1

        for i in range(frames):
            frame = av.VideoFrame.from_ndarray(frame_image(i, 64, 48), format="rgb24")
            frame.pts = i
            mux(stream.encode(frame))
        mux(stream.encode())
    return path


def write_audio_only(path: Path) -> Path:
    """An MP4 holding one AAC stream and no video at all."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        for i in range(8):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), dtype=np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for p in stream.encode(frame):
                out.mux(p)
        for p in stream.encode():
            out.mux(p)
    return path


# What each built file must fail with, word for word (the README's failure list).
BROKEN = {
    "audio_only.mp4": "no video stream",
    "mjpeg_zeroed_from_12.avi": "decode failed after 12 frames",  # MJPEG raises on the first bad packet
    "mpeg2_zeroed_from_4.avi": "damaged stream: only 4 of 20 packets decode to frames",  # MPEG-2 drops them silently
}


@pytest.fixture(scope="module")
def mixed_job(tmp_path_factory: pytest.TempPathFactory, tiny_model) -> dict:
    """Three good clips and the three broken files, run once with `--gpu auto`."""
    base = tmp_path_factory.mktemp("mixed")
    src = make_clips(base / "videos", 3, frames=6, vary=3)
    write_audio_only(src / "audio_only.mp4")
    write_with_zeroed_packets(src / "mjpeg_zeroed_from_12.avi", "mjpeg", "yuvj420p", 20, 12)
    write_with_zeroed_packets(src / "mpeg2_zeroed_from_4.avi", "mpeg2video", "yuv420p", 20, 4)
    out = base / "out"
    cli("scan", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny_model))
    proc = cli("run", "--output-dir", str(out), "--gpu", "auto", "--num-workers", "1", "--max-attempts", "1")
    return {"src": src, "out": out, "run_stderr": proc.stderr, "status": status_json(out)}


def test_gpu_auto_without_cuda_runs_on_the_cpu_with_one_warning(mixed_job: dict) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: --gpu auto takes device 0")
    lines = [line for line in mixed_job["run_stderr"].splitlines() if "CUDA" in line or "CPU" in line]
    assert len(lines) == 1 and "no CUDA GPU found: running on the CPU" in lines[0], mixed_job["run_stderr"]
    st = mixed_job["status"]
    assert [r["device"] for r in st["runs"]] == ["cpu"] and st["runs"][0]["state"] == "finished"
    assert st["done"] == 3


def test_failure_reasons_of_files_built_with_pyav(mixed_job: dict) -> None:
    """Each built file ends `failed` with the reason the README promises, through a real run."""
    st = mixed_job["status"]
    assert (st["done"], st["failed"], st["pending"], st["running"]) == (3, 3, 0, 0)
    reasons = {Path(f["path"]).name: f["error"] for f in st["failures"]}
    assert set(reasons) == set(BROKEN)
    for name, words in BROKEN.items():
        assert reasons[name].startswith(words), (name, reasons[name])


def test_status_watch_writes_snapshots_when_redirected(mixed_job: dict) -> None:
    """`status --watch > file` (nohup, a pipe, a log): rich's live display writes nothing
    where stdout is not a terminal, so the watch writes a dated snapshot each interval,
    flushed, so what was written is there even after a SIGTERM."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    seen = mixed_job["out"].parent / "watch.txt"
    with open(seen, "w") as sink:
        proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "status", "--output-dir", str(mixed_job["out"]),
                                 "--watch"], stdout=sink, stderr=subprocess.DEVNULL)
        try:
            assert wait_until(lambda: seen.read_text().count("\n--- ") >= 1, timeout=120, interval=0.2), seen.read_text()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    out = seen.read_text()
    plain = re.sub(r"[\u2500-\u257f]", " ", out)
    assert len(re.findall(r"^--- \d{4}-\d\d-\d\d \d\d:\d\d:\d\d$", out, re.M)) >= 2, out
    assert re.search(r"total\s+pending\s+running\s+done", plain), out


def test_status_shows_speed_eta_and_the_table(mixed_job: dict, tiny_model) -> None:
    """After a run: its speed, ETA 'done'. New videos pending: an ETA that is a time,
    consistent with that speed. Runs last: it adds videos to the shared job."""
    out, src = mixed_job["out"], mixed_job["src"]
    env = dict(os.environ, COLUMNS="200")

    def plain() -> str:
        """The plain `status` output, table borders (box-drawing characters) turned to spaces."""
        return re.sub(r"[\u2500-\u257f]", " ", cli("status", "--output-dir", str(out), env=env).stdout)

    st = status_json(out)
    run = st["runs"][-1]
    expected_rate = run["videos_done"] / (run["ended_at"] - run["started_at"])
    assert st["videos_per_s"] > 0 and st["videos_per_s"] == pytest.approx(expected_rate, rel=1e-2, abs=1e-3)
    assert st["frames_per_s"] == pytest.approx(st["videos_per_s"] * 8, rel=1e-2, abs=0.1)
    assert st["eta_s"] == 0.0
    text = plain()
    assert re.search(r"total\s+pending\s+running\s+done\s+failed\s+missing", text), text
    assert re.search(r"\b6\s+0\s+0\s+3\s+3\s+0\b", text), text
    assert f"{st['videos_per_s']:.2f} videos/s" in text and "(last run)" in text
    assert re.search(r"ETA\s+done", text), text

    make_clips(src / "more", 4, frames=5, vary=2)  # four new videos, not yet run
    cli("scan", "--video-dir", str(src), "--output-dir", str(out))
    st = status_json(out)
    assert st["pending"] == 4
    assert st["eta_s"] == pytest.approx(4 / st["videos_per_s"], rel=1e-2, abs=0.1)
    eta = int(st["eta_s"])
    text = plain()
    assert re.search(rf"ETA\s+{eta // 3600}:{eta % 3600 // 60:02d}:{eta % 60:02d}\b", text), text
    assert re.search(r"\b10\s+4\s+0\s+3\s+3\s+0\b", text), text
    assert "failures (3)" in text and "decode failed after 12 frames" in text


def test_openai_tags_build_quickgelu_and_others_do_not() -> None:
    """OpenAI's weights were trained with QuickGELU: the kwargs check_weights resolves for
    an OpenAI tag must make open_clip build QuickGELU activations, and only for it."""
    import open_clip

    from pipeline.models import check_weights
    from pipeline.settings import JobSettings

    def activations(kwargs: dict) -> Counter:
        model = open_clip.create_model("ViT-B-32", pretrained=None, **kwargs)  # no weights: no download
        return Counter(type(m).__name__ for m in model.visual.modules() if type(m).__name__ in ("QuickGELU", "GELU"))

    name, pretrained, kwargs = check_weights(JobSettings(model="ViT-B-32", pretrained="openai"))
    assert (name, pretrained, kwargs) == ("ViT-B-32", "openai", {"force_quick_gelu": True})
    openai = activations(kwargs)
    assert openai["QuickGELU"] == 12 and openai["GELU"] == 0, openai  # one per residual block

    name, pretrained, kwargs = check_weights(JobSettings(model="ViT-B-32", pretrained="laion2b_s34b_b79k"))
    assert kwargs == {}
    laion = activations(kwargs)
    assert laion["GELU"] == 12 and laion["QuickGELU"] == 0, laion


@pytest.mark.parametrize("k", [1, 3])
def test_num_frames_other_than_8(tmp_path: Path, tiny_model, k: int) -> None:
    """A job of k frames per video: per-frame features [N, k, D], each the model on the frame
    at round(linspace(0, n-1, k)) by an independent full decode (a 2-frame clip repeats)."""
    src = tmp_path / "v"
    for i, frames in enumerate((2, 7, 12)):  # pictures offset per clip, so even frame 0 differs
        make_video(src / f"c{i}.mp4", Spec(f"c{i}.mp4", frames=frames, width=64, height=48),
                   picture=lambda j, w, h, i=i: frame_image(j + 40 * i, w, h))
    out = tmp_path / "out"
    cli("scan", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny_model),
        "--num-frames", str(k), "--save-frames", "--resize", "pil")
    cli("run", "--output-dir", str(out), *RUN)
    got = load_features(out, frames=True)
    assert got.frames is not None and got.frames.shape == (3, k, 512)
    model, preprocess = load_open_clip(tiny_model["model"], tiny_model["pretrained"])
    want_videos, want_frames = [], []
    for path in got.paths:
        ref = reference_video(path, k)
        want_videos.append(definition_feature(ref, "pil", model, preprocess))
        import torch

        with torch.no_grad():
            pixels = reference_feature(ref.frames, model, preprocess)[1]
            want_frames.append(torch.nn.functional.normalize(model.encode_image(pixels), dim=-1).numpy())
    assert_same_videos(got.features, np.stack(want_videos), got.paths)
    for path, have, want in zip(got.paths, got.frames, want_frames):
        assert np.allclose(have, want, atol=1e-5), (path, float(np.abs(have - want).max()))
        assert np.allclose(got.features[got.paths.index(path)], want.mean(0) / np.linalg.norm(want.mean(0)), atol=1e-5)


def test_shards_hold_at_most_shard_size_rows_and_name_host_pid_tag(tmp_path: Path, tiny_model) -> None:
    src = make_clips(tmp_path / "v", 10, width=32, height=32, frames=3, vary=3)
    out = tmp_path / "out"
    cli("scan", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny_model))
    proc = start_cli("run", "--output-dir", str(out), *RUN, "--shard-size", "3", log=tmp_path / "run.log")
    assert proc.wait(timeout=300) == 0, (tmp_path / "run.log").read_text()
    (run,) = status_json(out)["runs"]
    host = socket.gethostname()
    safe_host = re.sub(r"[^A-Za-z0-9.]+", "_", host).strip("._")[:40] or "host"
    job = Job(out, None)
    assert (job.query(f"SELECT host FROM runs WHERE id='{run['id']}'"),
            job.query(f"SELECT pid FROM runs WHERE id='{run['id']}'")) == (host, proc.pid)
    name = re.compile(rf"{re.escape(safe_host)}-{proc.pid}-([0-9a-f]{{6}})-(\d{{5}})")
    sizes, seen, tags = [], Counter(), set()
    for side in sorted((out / "shards").glob("*.json")):
        shard = json.loads(side.read_text())
        m = name.fullmatch(shard["shard"])
        assert m and side.stem == shard["shard"] and shard["shard"].startswith(run["id"]), shard["shard"]
        tags.add(m.group(1))
        rows = np.load(out / "shards" / f"{shard['shard']}.npy").shape[0]
        assert rows == len(shard["videos"])
        sizes.append(rows)
        seen.update(v["id"] for v in shard["videos"])
    assert len(tags) == 1 and len(seen) == 10 and max(seen.values()) == 1
    assert max(sizes) <= 3 and sum(sizes) == 10, sizes


@pytest.mark.slow
def test_dead_run_on_another_host_is_taken_over_only_after_its_lease(tmp_path: Path, new_job) -> None:
    """A run SIGKILLed on 'another host' (its runs.host rewritten, so no pid check can tell
    it is dead): the next run must leave its rows alone while their lease is valid, and
    they are taken once it has run out; every video ends done exactly once.

    Time is moved, not waited for: the dead run's last heartbeat and its rows' lease (what
    the reaper compares with the clock) are put 10 minutes ahead while the second run
    works, so a slow start-up on a busy machine cannot outlast them, then a lease ago."""
    n, lease = 16, 40
    job = new_job(make_clips(tmp_path / "v", n, width=32, height=32, frames=4, vary=3))
    args = [*RUN, "--batch-size", "2", "--shard-size", "2", "--lease-seconds", str(lease)]
    dead = job.start("run", *args, log=tmp_path / "dead.log")
    assert wait_until(lambda: job.done() > 0 or dead.poll() is not None, timeout=120, interval=0.05)
    kill_group(dead)
    (dead_id,) = [r["id"] for r in job.status()["runs"]]
    held = job.query(f"SELECT count(*) FROM videos WHERE owner='{dead_id}' AND status='running'")
    assert held and held > 0, "the run was killed holding no claim: nothing to take over"
    execute(job, f"UPDATE runs SET host='another-host.example' WHERE id='{dead_id}'")

    def last_heard(at: float) -> None:
        """The dead run's last heartbeat at `at`, and so its rows' lease until `at + lease`."""
        execute(job, f"UPDATE runs SET heartbeat_at={at} WHERE id='{dead_id}'")
        execute(job, f"UPDATE videos SET lease_until={at + lease} WHERE owner='{dead_id}' AND status='running'")

    last_heard(time.time() + 600 - lease)
    committed_by_dead = job.query(f"SELECT videos_done FROM runs WHERE id='{dead_id}'") or 0

    def held_by_dead() -> int:
        return job.query(f"SELECT count(*) FROM videos WHERE owner='{dead_id}' AND status='running'") or 0

    # With the lease valid, the second run does everything else (nothing, if the dead run
    # had claimed every row left) and leaves the dead run's rows alone.
    job.cli("run", *args)
    assert held_by_dead() == held
    assert job.query(f"SELECT state FROM runs WHERE id='{dead_id}'") == "running"
    st = job.status()
    assert (st["done"], st["running"]) == (n - held, held), st
    assert committed_by_dead + held <= n
    # Once the lease has run out, the next run takes them.
    last_heard(time.time() - lease - 1)
    job.cli("run", *args)
    assert held_by_dead() == 0
    st = job.status()
    assert (st["done"], st["pending"], st["running"], st["failed"]) == (n, 0, 0, 0)
    assert job.query(f"SELECT state FROM runs WHERE id='{dead_id}'") == "crashed"
    committed = load_features(job.out, job.db)
    assert len(committed.paths) == len(set(committed.paths)) == n
    assert sum(r["videos_done"] for r in st["runs"]) == n, st["runs"]
    job.check_consistent()


def execute(job: Job, sql: str) -> None:
    """One statement on the job's manifest, committed (Job.query only reads)."""
    from sqlalchemy import create_engine

    from pipeline.manifest import _with_driver

    engine = create_engine(_with_driver(job.url))
    try:
        with engine.begin() as c:
            c.exec_driver_sql(sql)
    finally:
        engine.dispose()
