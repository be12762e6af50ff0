"""`cli.py tune`: its recommendation on this machine against a small grid of real runs.

tune measures a sample of a real job (real decoder, real Encoder and model load) and
writes a config; the test then runs the job for real at each point of a grid
(num_workers x batch_size) and at tune's recommendation, each on a fresh copy of the
same scanned job, interleaved and best of two (the machine is shared and noisy), and
holds the recommendation to within 15% of the grid's best. The config it wrote must be
what `run --config` takes, through the real CLI.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from pipeline.samples import Spec, make_video
from pipeline.settings import available_cores, resolve
from pipeline.tune import Measured, job_time, recommend, start_time
from tests.conftest import cli, model_args, status_json

GRID = [(w, b) for w in (1, 2) for b in (8, 32)]


def _measured(**kw) -> Measured:
    base = dict(device="cuda:0", engines=1, cores=16, num_frames=8, sampled=32, failed=0,
                decode_cpu_s={"cpu": 0.30}, decode_wall_s={"cpu": 0.31}, encode_fps={16: 2000.0, 64: 4000.0, 256: 4100.0},
                startup_s=5.0, total_videos=10_000)
    return Measured(**{**base, **kw})


def test_workers_are_enough_to_feed_the_encoder_and_no_more() -> None:
    """On a GPU encoding 500 videos/s, 16 cores at 0.3 CPU s a video decode 53/s: every core
    is a decoder; with a slow model (49 videos/s) 15 workers feed it and a core is left over,
    and of two batch sizes that encode alike the smaller wins (a shorter tail, less memory)."""
    fast = recommend(_measured(), "0")
    assert (fast.num_workers, fast.decoder, fast.limit) == (16, "cpu", "decode")
    assert fast.videos_per_s == pytest.approx(16 / 0.30, rel=0.01)
    slow = recommend(_measured(encode_fps={16: 300.0, 64: 390.0, 256: 400.0}), "0")
    assert slow.limit == "encode" and slow.num_workers == 15 and slow.batch_size == 64
    assert slow.decode_threads == 1


def test_nvdec_only_where_it_measured_faster() -> None:
    """torchcodec #536: CUDA decoding can be slower than the CPU for some files, so the
    decoder is chosen by what was measured, not assumed."""
    quick = recommend(_measured(decode_cpu_s={"cpu": 0.30, "nvdec": 0.05}, decode_wall_s={"cpu": 0.31, "nvdec": 0.08}), "0")
    assert quick.decoder == "nvdec"
    slow = recommend(_measured(decode_cpu_s={"cpu": 0.30, "nvdec": 0.10}, decode_wall_s={"cpu": 0.31, "nvdec": 0.60}), "0")
    assert slow.decoder == "cpu"


def test_on_the_cpu_decoders_and_encoder_share_the_cores() -> None:
    """Two cores, 0.05 CPU s to decode a video, 400 frames/s per encoder thread (0.02 s a video)."""
    m = _measured(device="cpu", cores=2, encode_fps={8: 400.0, 32: 400.0}, decode_cpu_s={"cpu": 0.05},
                  decode_wall_s={"cpu": 0.09}, total_videos=1000)
    # One decoder: 20 videos/s, and it limits (the encoder's thread does 50/s).
    seconds, limit = job_time(m, "cpu", 1, 8)
    assert limit == "decode" and seconds == pytest.approx(1000 * 0.05 + 8 * 0.02, rel=0.01)
    # Two decoders would do 40/s, but with the encoder they need 0.07 CPU s a video of 2 cores: 28.6/s.
    seconds, limit = job_time(m, "cpu", 2, 8)
    assert limit == "cores" and seconds == pytest.approx(1000 * 0.07 / 2 + 8 * 0.02, rel=0.01)
    assert recommend(m, "cpu").num_workers == 2
    # A slow encoder thread limits however many decoders there are.
    slow = replace(m, encode_fps={8: 100.0, 32: 100.0})
    assert [job_time(slow, "cpu", w, 8)[1] for w in (1, 2)] == ["encode", "encode"]
    assert recommend(slow, "cpu").num_workers == 1
    # The workers start while the model loads, each on its own core: a second worker's
    # start is hidden behind the load (5 s) but for what the cores cannot run at once,
    # (5 + 2 x 3) / 2 = 5.5 s against 5 s. On a 32-video job that eats what the second
    # worker saves (8.86 s against 8.88 s: within 3%, a tie, and ties go to fewer
    # workers); on 10,000 videos the second worker wins outright.
    small = replace(m, total_videos=32, decode_cpu_s={"cpu": 0.1}, encode_fps={8: 94.0, 32: 73.0}, worker_start_s=3.0)
    assert (start_time(small, 1), start_time(small, 2)) == (5.0, 5.5)
    one, two = (job_time(small, "cpu", w, 8)[0] + start_time(small, w) for w in (1, 2))
    assert two < one < two * 1.03
    assert recommend(small, "cpu").num_workers == 1
    assert recommend(replace(small, total_videos=10_000), "cpu").num_workers == 2
    # Where a worker's start outlasts the load it sets the start-up, and a second worker
    # adds what the two cores cannot overlap: (0.5 + 2 x 4) / 2 = 4.25 s against 4 s.
    slow_start = replace(small, startup_s=0.5, worker_start_s=4.0)
    assert (start_time(slow_start, 1), start_time(slow_start, 2)) == (4.0, 4.25)


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """32 videos: 4 distinct 360p clips whose exact frames cost ~0.1 s each, linked 8 times."""
    root = tmp_path_factory.mktemp("tune")
    folder = root / "videos"
    folder.mkdir()
    for i in range(4):
        clip = make_video(root / "distinct" / f"c{i}.mp4", Spec("c.mp4", 120 + 10 * i, 640, 360, gop=250))
        for r in range(8):
            (folder / f"r{r}_c{i}.mp4").symlink_to(clip)
    return folder


def _fresh(template: Path, where: Path) -> Path:
    shutil.rmtree(where, ignore_errors=True)
    shutil.copytree(template, where)
    return where


def _rate(template: Path, where: Path, flags: dict, config: Path | None = None) -> float:
    """A real run (the engine and its decode processes, as `cli.py run` runs them, in this
    process so torch is imported once) on a fresh copy of the job: videos/s from its summary.
    Every setting is measured this same way (a CLI run's figure differs by its process)."""
    from pipeline.executors import run

    s = run(resolve({"output_dir": str(_fresh(template, where)), "gpu": "cpu", **flags}, str(config) if config else None))
    assert (s.state, s.done, s.failed) == ("finished", 32, 0)
    return s.done / s.seconds




@pytest.mark.slow
def test_recommendation_is_within_15_percent_of_the_best_of_a_grid(tmp_path: Path, videos: Path, tiny_model) -> None:
    template = tmp_path / "job"
    cli("scan", "--video-dir", str(videos), "--output-dir", str(template), *model_args(tiny_model))
    out = cli("tune", "--output-dir", str(template), "--gpu", "cpu", "--sample", "8")
    tuned = template / "tuned.yaml"
    assert f"wrote {tuned}" in out.stderr and "recommended: --num-workers" in out.stderr
    config = yaml.safe_load(tuned.read_text())
    rec = config["extraction"]
    assert config["device"]["gpu"] == "cpu" and rec["decoder"] == "cpu"
    assert status_json(template)["pending"] == 32  # tune measures; it does not process the job

    best: dict[str, float] = {}
    for rnd in range(2):  # interleaved, best of two: the machine's noise hits every setting alike
        for w, b in GRID:
            key = f"w{w}_b{b}"
            best[key] = max(best.get(key, 0.0), _rate(template, tmp_path / f"{key}_{rnd}", {"num_workers": w, "batch_size": b}))
        best["tuned"] = max(best.get("tuned", 0.0), _rate(template, tmp_path / f"tuned_{rnd}", {}, tuned))
    grid_best = max(v for k, v in best.items() if k != "tuned")
    # A recommendation that is a point of the grid (the grid's runs take the default
    # threads, cores / workers) is one setting measured four times: its figure is the best
    # of all four, as every other setting's is the best of its runs. Two runs of one
    # setting differed by 17% in a loaded CI run; pooling them keeps that noise out.
    same = f"w{rec['num_workers']}_b{rec['batch_size']}"
    if same in best and rec["decode_threads"] == max(1, available_cores() // rec["num_workers"]):
        best["tuned"] = max(best["tuned"], best[same])
    print(f"tune recommended {rec}; best videos/s of two: {best}")
    assert best["tuned"] >= 0.85 * grid_best, (rec, best)

    # The file is what `run --config` takes, through the real CLI.
    job = _fresh(template, tmp_path / "cli")
    proc = cli("run", "--config", str(tuned), "--output-dir", str(job))
    assert re.search(rf"{rec['num_workers']} decode workers x {rec['decode_threads']} FFmpeg threads",
                     next((job / "logs").glob("run-*.log")).read_text()), proc.stderr
    assert (status_json(job)["done"], status_json(job)["failed"]) == (32, 0)


def test_bad_input_is_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from cli import main

    assert main(["tune", "--output-dir", str(tmp_path / "nothing"), "--gpu", "cpu"]) == 1
    assert capsys.readouterr().err.strip() == (
        f"error: tune needs --video-dir DIR, or --output-dir of an existing job (none in {tmp_path / 'nothing'})")
    assert main(["tune", "--video-dir", str(tmp_path), "--gpu", "cpu", "--sample", "0"]) == 1
    assert capsys.readouterr().err.strip() == "error: sample must be at least 1, got 0"


def test_tune_before_the_scan_writes_a_config_for_that_job(tmp_path: Path, tiny_model) -> None:
    """`tune --video-dir D --output-dir OUT` before any scan: the config goes to OUT/tuned.yaml
    and names OUT, so after `scan --output-dir OUT` the hint it prints runs that job (it once
    wrote ./tuned.yaml without an output dir: the hint then ran ./features)."""
    videos = tmp_path / "v"
    for i in range(3):
        make_video(videos / f"c{i}.mp4", Spec("c.mp4", frames=6 + i, width=48, height=32))
    out = tmp_path / "job"
    proc = cli("tune", "--video-dir", str(videos), "--output-dir", str(out), *model_args(tiny_model),
               "--gpu", "cpu", "--sample", "3", cwd=tmp_path)
    config = out / "tuned.yaml"
    assert f"use: cli.py run --config {config}" in proc.stderr + proc.stdout, proc.stderr
    assert yaml.safe_load(config.read_text())["output"]["output_dir"] == str(out)
    assert not (tmp_path / "tuned.yaml").exists()
    cli("scan", "--video-dir", str(videos), "--output-dir", str(out), *model_args(tiny_model))
    cli("run", "--config", str(config), cwd=tmp_path)
    assert status_json(out)["done"] == 3
