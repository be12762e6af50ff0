"""Issue 11's reporting: where nvdec really decoded, which device a run uses and why the GPU
was not used, and a local OpenAI checkpoint built without QuickGELU.

This machine has no GPU, so the GPU side runs only under @pytest.mark.gpu; the rest uses
the real software decoder, a real run, the real manifest, and a fake `nvidia-smi`
executable on PATH for the driver's side.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import warnings
from pathlib import Path

import pytest

from pipeline.samples import make_clips
from tests.conftest import cli, model_args

FAKE_SMI = """#!/bin/sh
# A driver that sees an H200 but only supports CUDA 12.2.
case "$1" in
  --query-gpu=*) echo "NVIDIA H200, 535.104.05"; exit 0 ;;
esac
echo "| NVIDIA-SMI 535.104.05             Driver Version: 535.104.05   CUDA Version: 12.2     |"
"""


def fake_nvidia_smi(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / "nvidia-smi"
    exe.write_text(FAKE_SMI)
    exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return folder


# --- nvdec: which frames came from the GPU ----------------------------------------------

def test_pixel_formats_tell_gpu_frames_from_software_ones() -> None:
    from pipeline.decoders import decoded_on

    for fmt in ("nv12", "p010le", "p016le", "cuda"):
        assert decoded_on(fmt) == "gpu", fmt
    for fmt in ("yuv420p", "yuvj420p", "yuv420p10le", "yuv444p", "rgb24", None):
        assert decoded_on(fmt) == "cpu", fmt


@pytest.mark.parametrize("decoder", ["cpu", "nvdec"])
def test_software_decoding_reports_cpu(decoder: str, tmp_path: Path) -> None:
    """The real decoders on a real clip: software frames (yuv420p) report 'cpu'. nvdec
    here cannot open a GPU, falls back to the CPU as it does in a container without
    libnvcuvid, and its frames say so."""
    from pipeline.decoders import get_decoder
    from pipeline.samplers import get_sampler

    clip = make_clips(tmp_path, 1)
    sampled = get_decoder(decoder)(1, 0).sample(str(clip / "v00000.mp4"), get_sampler("exact")(4))
    assert sampled.pixel_format == ("yuv420p" if decoder == "nvdec" else None)  # the CPU decoder: cpu by definition
    assert sampled.decoded_on == "cpu"
    assert len(sampled.frames) == 4


@pytest.mark.gpu
def test_nvdec_on_a_gpu_reports_gpu(tmp_path: Path) -> None:
    from pipeline.decoders import GPU_PIXEL_FORMATS, get_decoder
    from pipeline.samplers import get_sampler

    clip = make_clips(tmp_path, 1, width=256, height=144)
    sampled = get_decoder("nvdec")(1, 0).sample(str(clip / "v00000.mp4"), get_sampler("exact")(4))
    assert sampled.pixel_format in GPU_PIXEL_FORMATS and sampled.decoded_on == "gpu", sampled.pixel_format


def test_the_run_share_line() -> None:
    from pipeline.decoders import gpu_share_line

    assert gpu_share_line("cpu", 0, 10) is None
    assert gpu_share_line("nvdec", 0, 0) is None  # nothing decoded: nothing to say
    assert gpu_share_line("nvdec", 812, 1000) == (logging.INFO, "nvdec: 812 of 1000 videos decoded on the GPU")
    level, line = gpu_share_line("nvdec", 0, 5)  # type: ignore[misc]
    assert level == logging.WARNING and "\n" not in line
    assert line.startswith("--decoder nvdec: none of the 5 videos decoded on the GPU")


def test_status_shows_where_videos_decoded(tmp_path: Path) -> None:
    """Committed with the shard: the share in status (table and --json); an old job gains the column in place."""
    from pipeline.manifest import open_manifest
    from pipeline.status import decoded_on_text, report

    from pipeline.settings import JobSettings

    out = tmp_path / "job"
    m = open_manifest(out, None, create=True)
    m.create_job(JobSettings(), {})
    with m.engine.begin() as c:
        for i in range(4):
            c.exec_driver_sql(f"INSERT INTO videos (id, path, size, mtime_ns) VALUES ({i}, 'v{i}.mp4', 1, 1)")
    run = m.register_run("cuda:0", 2, 1)
    m.claim(run, 4, 60)
    m.complete(run, "s1", [(0, 0, 8), (1, 1, 8), (2, 2, 8)], 24, {0: "gpu", 1: "gpu", 2: "cpu"})
    m.close()
    assert report(open_manifest(out, None))["decoded_on"] == {"gpu": 2, "cpu": 1}
    assert decoded_on_text({"gpu": 2, "cpu": 1}) == "2 of 3 done videos on the GPU (67%)"
    shown = cli("status", "--output-dir", str(out)).stdout
    assert "2 of 3 done videos on the GPU (67%)" in " ".join(shown.split())
    assert json.loads(cli("status", "--output-dir", str(out), "--json").stdout)["decoded_on"] == {"gpu": 2, "cpu": 1}

    # A job made before the column existed: every command's open adds it; its done rows are 'unknown'.
    with sqlite3.connect(out / "manifest.sqlite") as c:
        c.execute("ALTER TABLE videos DROP COLUMN decoded_on")
    got = json.loads(cli("status", "--output-dir", str(out), "--json").stdout)
    assert got["decoded_on"] == {"unknown": 3} and got["done"] == 3
    with sqlite3.connect(out / "manifest.sqlite") as c:
        assert "decoded_on" in [r[1] for r in c.execute("PRAGMA table_info(videos)")]


# --- the device line, and why a GPU that is there is not used ---------------------------

def test_fallback_names_the_gpu_torch_cannot_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    import torch

    from pipeline.devices import Device, warn_on_fallback

    if torch.cuda.is_available():
        pytest.skip("torch can use a GPU here: there is no fallback to explain")
    monkeypatch.setenv("PATH", f"{fake_nvidia_smi(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        warn_on_fallback("auto", Device("cpu"))
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith("no CUDA GPU found by torch: running on the CPU")
    assert "NVIDIA H200, driver 535.104.05, CUDA 12.2" in line
    if torch.version.cuda is None:
        assert "CPU-only build" in line
    # A CUDA build of torch newer than the driver: the versions and torch.cuda's own error.
    caplog.clear()
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        warn_on_fallback("auto", Device("cpu"))
    (line,) = [r.getMessage() for r in caplog.records]
    assert "built for CUDA 13.0" in line and "torch.cuda says:" in line
    assert "the driver supports CUDA 12.2 at most" in line


def test_no_nvidia_smi_is_the_plain_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture) -> None:
    import torch

    from pipeline.devices import Device, announce, warn_on_fallback

    if torch.cuda.is_available():
        pytest.skip("torch can use a GPU here")
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with caplog.at_level(logging.INFO, logger="pipeline"):
        warn_on_fallback("auto", Device("cpu"))
        warn_on_fallback("cpu", Device("cpu"))  # asked for: nothing to warn about
        assert announce([Device("cpu")], "auto") == "run on cpu (no GPU found)"
        assert announce([Device("cpu"), Device("cpu")], "cpu,cpu") == "run on cpu, cpu (asked for: --gpu cpu,cpu)"
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0] == "no CUDA GPU found: running on the CPU, which is much slower"
    assert "run on cpu (no GPU found)" in messages and len([m for m in messages if "no CUDA GPU found" in m]) == 1
    assert "run on cpu (no GPU found)\n" in capsys.readouterr().err  # on the terminal, not only as a warning


@pytest.mark.gpu
def test_a_gpu_run_names_its_device() -> None:
    from pipeline.devices import Device, describe

    text = describe(Device("cuda", 0))
    assert text.startswith("cuda:0 (") and text.endswith(" GiB)")


@pytest.mark.slow
def test_a_run_says_its_device_and_why_in_its_log(tmp_path: Path, tiny_model: dict[str, str]) -> None:
    """A real `run --gpu auto` on this GPU-less machine, with nvidia-smi seeing a GPU: the
    device line and the one fallback warning on the terminal and in the run's log file."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("torch can use a GPU here: the run would not fall back")
    videos = make_clips(tmp_path / "videos", 2)
    out = tmp_path / "job"
    cli("scan", "--video-dir", str(videos), "--output-dir", str(out), *model_args(tiny_model), "--num-frames", "2")
    env = dict(os.environ, PATH=f"{fake_nvidia_smi(tmp_path / 'bin')}{os.pathsep}{os.environ['PATH']}")
    proc = cli("run", "--output-dir", str(out), "--gpu", "auto", "--num-workers", "1", env=env)
    warning = [line for line in proc.stderr.splitlines() if "no CUDA GPU found" in line]
    assert len(warning) == 1 and "NVIDIA H200" in warning[0], proc.stderr
    assert "run on cpu (no GPU found)" in proc.stderr.splitlines()
    (log,) = (out / "logs").glob("run-*.log")
    text = log.read_text()
    assert "run on cpu (no GPU found)" in text
    assert "WARNING pipeline.devices: no CUDA GPU found by torch" in text and "NVIDIA H200" in text
    assert json.loads(cli("status", "--output-dir", str(out), "--json").stdout)["decoded_on"] == {"cpu": 2}


# --- QuickGELU: a local OpenAI checkpoint by path ----------------------------------------

@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, tiny_model: dict[str, str]) -> dict[str, str]:
    """The tiny model's state dict as open_clip saves it, with OpenAI's JIT-only keys, and a TorchScript archive."""
    import torch

    folder = tmp_path_factory.mktemp("openai_layout")
    sd = torch.load(tiny_model["pretrained"], weights_only=True)
    openai = folder / "openai_keys.pt"
    torch.save({**sd, "input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
                "vocab_size": torch.tensor(49408)}, openai)
    scripted = folder / "scripted.pt"
    with warnings.catch_warnings():  # torch.jit is deprecated, but OpenAI's files are TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(scripted))
    return {"plain": tiny_model["pretrained"], "openai": str(openai), "torchscript": str(scripted),
            "model": tiny_model["model"]}


def test_openai_layout_is_detected(checkpoints: dict[str, str]) -> None:
    from pipeline.models.open_clip import openai_layout

    assert openai_layout(checkpoints["plain"]) is None
    assert openai_layout(checkpoints["openai"]) == "a state dict with OpenAI's JIT keys"
    assert openai_layout(checkpoints["torchscript"]) == "a TorchScript archive, OpenAI's release format"


def test_quickgelu_advice(checkpoints: dict[str, str]) -> None:
    import open_clip

    from pipeline.models.open_clip import _model_name, quickgelu_advice

    assert "ViT-B-32-quickgelu" in open_clip.list_models()
    level, line = quickgelu_advice("ViT-B-32", checkpoints["plain"])  # type: ignore[misc]
    assert level == logging.WARNING and "use --model ViT-B-32-quickgelu" in line and "\n" not in line
    level, line = quickgelu_advice("ViT-B-32", checkpoints["torchscript"])  # type: ignore[misc]
    assert "TorchScript archive" in line and "ViT-B-32-quickgelu" in line
    assert quickgelu_advice("ViT-B-32-quickgelu", checkpoints["plain"]) is None
    tiny = _model_name(checkpoints["model"])  # no QuickGELU twin: only OpenAI's own layout is worth a word
    assert quickgelu_advice(tiny, checkpoints["plain"]) is None
    level, line = quickgelu_advice(tiny, checkpoints["openai"])  # type: ignore[misc]
    assert "OpenAI's JIT keys" in line and '"quick_gelu": true' in line


def test_scan_warns_and_a_run_only_logs(checkpoints: dict[str, str], caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.models import check_weights
    from pipeline.models.open_clip import check_weights as open_clip_check
    from pipeline.settings import JobSettings

    job = JobSettings(model="ViT-B-32", pretrained=checkpoints["plain"])
    with caplog.at_level(logging.INFO, logger="pipeline"):
        check_weights(job)  # what scan calls
        open_clip_check(job, advise=False)  # what a run's load calls
    levels = [r.levelno for r in caplog.records if "QuickGELU" in r.getMessage()]
    assert levels == [logging.WARNING, logging.INFO]
