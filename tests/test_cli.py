"""Command lines and configs: one-line errors, flags from a config file, fixed job settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import cli, model_args, status_json


def one_line_error(proc) -> str:
    assert proc.returncode != 0, proc
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, got:\n{err}"
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", "--bogus"], "No such option"),
        (["scan", "--num-frames", "many"], "--num-frames"),
        (["frobnicate"], "No such command"),
        (["scan", "--output-dir", "{tmp}/j"], "needs --video-dir"),
        (["scan", "--video-dir", "{tmp}/nowhere", "--output-dir", "{tmp}/j"], "video directory not found"),
        (["scan", "--video-dir", "{tmp}", "--num-frames", "0", "--output-dir", "{tmp}/j"], "num_frames"),
        (["scan", "--video-dir", "{tmp}", "--model", "ViT-Nope", "--output-dir", "{tmp}/j"], "unknown model"),
        (["scan", "--video-dir", "{tmp}", "--pretrained", "no-such-tag", "--output-dir", "{tmp}/j"], "neither a local file"),
        (["scan", "--video-dir", "{tmp}", "--pretrained", "{tmp}/missing.pt", "--output-dir", "{tmp}/j"], "not found"),
        (["run", "--output-dir", "{tmp}/nojob"], "no job in"),
        (["status", "--output-dir", "{tmp}/nojob"], "no job in"),
        (["export", "--output-dir", "{tmp}/nojob"], "no job in"),
        (["scan", "--video-dir", "{tmp}", "--config", "{tmp}/missing.yaml"], "config file not found"),
        (["run", "--batch-size", "0", "--output-dir", "{tmp}/j"], "batch_size"),
        (["scan", "--video-dir", "{tmp}", "--sampling", "sometimes", "--output-dir", "{tmp}/j"], "sampling must be one of"),
        (["scan", "--video-dir", "{tmp}", "--resize", "magic", "--output-dir", "{tmp}/j"], "resize must be one of"),
        (["run", "--decoder", "gpu-ish", "--output-dir", "{tmp}/j"], "decoder must be one of"),
        (["run", "--decode-threads", "64", "--num-workers", "2", "--output-dir", "{tmp}/j"], "more than the"),
    ],
)
def test_bad_command_lines_get_one_line(tmp_path: Path, args: list[str], words: str) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    line = one_line_error(cli(*args, check=False))
    assert words in line
    if "{tmp}/j" in " ".join(args):
        assert not (tmp_path / "j" / "manifest.sqlite").exists(), "a refused command created a job"


def test_bad_configs(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    for text, words in (("num_frames: [1, 2\n", "not valid YAML"), ("colour: blue\n", "unknown option 'colour'"),
                        ("- a\n- b\n", "must be a mapping"), ("batch_size: lots\n", "batch_size")):
        bad.write_text(text)
        assert words in one_line_error(cli("scan", "--video-dir", str(tmp_path), "--config", str(bad), check=False))


def test_config_file_and_cli_precedence(tmp_path: Path, corpus: Path, tiny_model) -> None:
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"video-dir: {corpus}\noutput_dir: {tmp_path / 'out'}\nmodel: {tiny_model['model']}\n"
        f"pretrained: {tiny_model['pretrained']}\nnum_frames: 4\nsave_frames: true\n"
    )
    cli("scan", "--config", str(cfg), "--num_frames", "6")  # the flag wins over the file
    s = status_json(tmp_path / "out")["settings"]
    assert (s["num_frames"], s["save_frames"], s["model"]) == ("6", "true", tiny_model["model"])


def job_state(out: Path) -> tuple[dict[str, str], list[tuple[str, str]], int]:
    """The manifest's settings, its videos (path, status) and how many runs it has seen."""
    import sqlite3

    with sqlite3.connect(out / "manifest.sqlite") as c:
        settings = dict(c.execute("SELECT key, value FROM job_settings"))
        videos = sorted(c.execute("SELECT path, status FROM videos"))
        runs = c.execute("SELECT count(*) FROM runs").fetchone()[0]
    return settings, videos, runs


@pytest.fixture
def main_in_process(capsys: pytest.CaptureFixture[str]):
    """cli.main(argv) in this process: the real parsing and error printing, without paying
    a torch import (seconds on a busy machine) for each of many refused commands."""
    import importlib
    import logging
    import types

    entry = importlib.import_module("cli")
    root = logging.getLogger()
    handlers, level, raise_exc = list(root.handlers), root.level, logging.raiseExceptions

    def call(*argv: str) -> types.SimpleNamespace:
        capsys.readouterr()
        code = entry.main(list(argv))
        captured = capsys.readouterr()
        return types.SimpleNamespace(returncode=code, stdout=captured.out, stderr=captured.err)

    yield call
    for h in root.handlers[:]:  # start_log's handlers: leave pytest's logging as it was
        if h not in handlers:
            root.removeHandler(h)
            h.close()
    root.setLevel(level)
    logging.raiseExceptions = raise_exc


# Every job setting, with a value other than the job's and the flag that asks for it.
OTHER_JOB_SETTINGS = [
    ("model", "ViT-B-16", ["--model", "ViT-B-16"]),
    ("pretrained", "none", ["--pretrained", "none"]),
    ("num_frames", "4", ["--num-frames", "4"]),
    ("sampling", "keyframes", ["--sampling", "keyframes"]),
    ("resize", "pil", ["--resize", "pil"]),
    ("save_frames", "true", ["--save-frames"]),
]


def test_job_settings_are_fixed_by_the_first_scan(tmp_path: Path, tiny_model, main_in_process) -> None:
    """Each job setting, asked differently on scan or on run, is refused in one line naming
    it, before anything changes: no setting rewritten, no file registered, no run started."""
    from pipeline.samples import Spec, make_video
    from pipeline.settings import JobSettings

    src, out = tmp_path / "v", tmp_path / "out"
    make_video(src / "a.mp4", Spec("a.mp4", frames=3, width=32, height=32))
    cli("scan", "--video-dir", str(src), "--output-dir", str(out), *model_args(tiny_model))
    make_video(src / "b.mp4", Spec("b.mp4", frames=3, width=32, height=32))  # a refused scan must not add it
    created = job_state(out)
    settings = created[0]
    assert {k for k, _, _ in OTHER_JOB_SETTINGS} == set(JobSettings().as_strings()), "a job setting is untested"

    def refused(command: str, key: str, value: str, flags: list[str], call=main_in_process) -> None:
        args = ["--video-dir", str(src)] if command == "scan" else ["--gpu", "cpu"]
        line = one_line_error(call(command, "--output-dir", str(out), *args, *flags))
        assert f"this job was created with {key}={settings[key]}, not {value}" in line, (command, line)
        assert job_state(out) == created, f"{command} {flags} changed the job before refusing"

    for key, value, flags in OTHER_JOB_SETTINGS:
        assert settings[key] != value
        for command in ("scan", "run"):
            refused(command, key, value, flags)
    # And from a real process, as users get it: one line on stderr, exit 1.
    refused("run", *OTHER_JOB_SETTINGS[5], call=lambda *a: cli(*a, check=False))

    # The same values spelled out are no change; a relative spelling of the same checkpoint is the same setting.
    rel = os.path.relpath(tiny_model["pretrained"], tmp_path)
    same = ["--model", tiny_model["model"], "--pretrained", rel, "--num-frames", "8", "--sampling", "exact",
            "--resize", "swscale", "--no-save-frames"]
    cli("scan", "--video-dir", str(src), "--output-dir", str(out), *same, cwd=tmp_path)
    assert job_state(out)[0] == settings and len(job_state(out)[1]) == 2  # b.mp4 registered at last
    # Run-time settings may change freely: a different batch size and worker count run.
    cli("run", "--output-dir", str(out), "--gpu", "cpu", "--num-workers", "1", "--batch-size", "3")
    assert [status for _, status in job_state(out)[1]] == ["done", "done"]


def test_gpu_that_is_not_there(tmp_path: Path, corpus: Path, tiny_model) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out = str(tmp_path / "out")
    cli("scan", "--video-dir", str(corpus), "--output-dir", out, *model_args(tiny_model))
    assert "no CUDA GPU" in one_line_error(cli("run", "--output-dir", out, "--gpu", "0", check=False))
    assert "--gpu must be" in one_line_error(cli("run", "--output-dir", out, "--gpu", "tpu", check=False))
    line = one_line_error(cli("run", "--output-dir", out, "--gpu", "cpu", "--decoder", "nvdec", check=False))
    assert "--decoder nvdec needs a CUDA GPU" in line
    st = status_json(tmp_path / "out")
    assert st["pending"] == st["total"] and st["running"] == 0  # refused before claiming anything


def test_decode_threads_fill_the_cores_workers_leave() -> None:
    from pipeline.settings import RunSettings

    assert RunSettings(cores=16).threads_per_worker() == 1  # one worker per core by default
    assert RunSettings(cores=16, num_workers=4).threads_per_worker() == 4
    assert RunSettings(cores=16, num_workers=3).threads_per_worker() == 5  # never above the cores
    assert RunSettings(cores=2, num_workers=8).threads_per_worker() == 1
    assert RunSettings(cores=16, num_workers=2, decode_threads=3).threads_per_worker() == 3
    assert RunSettings().core_count() == len(os.sched_getaffinity(0))


def test_pretrained_tag_offline_says_so_in_one_line(tmp_path: Path) -> None:
    """No hub and no cached weights: the product's own probe finds the hub unreachable and
    `run` says so in one line within seconds, instead of retrying for a minute.

    The hub is pointed (HF_ENDPOINT, as a user behind a mirror would) at a port on
    127.0.0.1 that refuses connections, so this holds with or without internet.
    """
    import socket
    import time

    from pipeline.samples import Spec, make_video

    make_video(tmp_path / "v" / "a.mp4", Spec("a.mp4", frames=3, width=32, height=32))
    out = tmp_path / "out"
    cli("scan", "--video-dir", str(tmp_path / "v"), "--output-dir", str(out))  # defaults: ViT-B-32, openai
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused, the port stays ours
        env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
        env.update(HF_ENDPOINT=f"http://127.0.0.1:{closed.getsockname()[1]}", HF_HOME=str(tmp_path / "hf"),
                   XDG_CACHE_HOME=str(tmp_path / "cache"))
        started = time.monotonic()
        proc = cli("run", "--output-dir", str(out), "--gpu", "cpu", check=False, env=env)
        seconds = time.monotonic() - started
    print(f"offline run refused in {seconds:.1f} s")
    line = one_line_error(proc)
    assert "cannot get pretrained weights 'openai'" in line and "--pretrained none" in line
    (log,) = (out / "logs").glob("run-*.log")
    assert "model hub unreachable" in log.read_text(), "the reachability probe did not decide"
    assert seconds < 30, f"{seconds:.1f} s to say the weights cannot be had"


def test_help_mentions_pickle_trust() -> None:
    out = cli("export", "--help").stdout
    assert "trusted" in out


def test_jobs_from_before_a_setting_existed_keep_their_definition() -> None:
    """A manifest written before `resize` existed used PIL: it must not switch to swscale midway."""
    from pipeline.settings import JobSettings

    old = JobSettings.from_strings({"model": "ViT-B-32", "pretrained": "openai", "num_frames": "8"})
    assert old.resize == "pil"
    assert JobSettings.from_strings(JobSettings().as_strings()).resize == "swscale"  # new jobs record it


def test_keyframe_sampling_and_pil_resize_reach_the_workers(tmp_path: Path, corpus: Path, tiny_model) -> None:
    """Job settings chosen at scan time are what the decode workers do: each feature equals
    the model applied to that video's nearest keyframes, resized by PIL."""
    import numpy as np
    import torch

    from pipeline.decoders import sample_frames
    from pipeline.encoder import Encoder
    from pipeline.models import load_model
    from pipeline.reader import load_features
    from pipeline.settings import JobSettings

    out = tmp_path / "out"
    cli("scan", "--video-dir", str(corpus), "--output-dir", str(out), *model_args(tiny_model),
        "--sampling", "keyframes", "--resize", "pil")
    cli("run", "--output-dir", str(out), "--gpu", "cpu", "--num-workers", "1")
    settings = status_json(out)["settings"]
    assert (settings["sampling"], settings["resize"]) == ("keyframes", "pil")
    got = load_features(out)
    assert len(got.paths) == 6
    loaded = load_model(JobSettings(model=tiny_model["model"], pretrained=tiny_model["pretrained"]), torch.device("cpu"))
    enc = Encoder(loaded, torch.device("cpu"), cpu_threads=1)
    convert = loaded.preprocess.geometry.converter("pil")
    for path, feat in zip(got.paths, got.features):
        crops = np.stack(sample_frames(path, 8, convert, sampling="keyframes").frames)
        assert np.allclose(enc.encode(crops, 8).videos[0], feat, atol=1e-5), path
