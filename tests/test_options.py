"""The option table: commands, config keys and checks all come from it; --gpu parsed once into devices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import typer

import cli
from pipeline.devices import Device, parse_spec, resolve_devices
from pipeline.errors import PipelineError
from pipeline.options import COMMANDS, EXTRACT_OF, Option, coerce
from pipeline.settings import OPTIONS, resolve
from tests.conftest import ROOT, cli as run_cli
from tests.test_cli import one_line_error

SETTINGS = [o for o in OPTIONS if o.in_config]


def _click(command: str) -> Any:
    return typer.main.get_command(cli.app).commands[command]  # type: ignore[attr-defined]


def _sample(o: Option) -> tuple[list[str], Any]:
    """A valid value for an option, not its default where it has another: its command-line words
    (after the flag) and its typed value."""
    if o.kind is bool:
        return [], not o.default
    if o.allowed():
        value = next((c for c in o.allowed() if c != o.default), o.default)  # a registry of one (executor)
    elif o.name == "gpu":
        value = "cpu,cpu"
    else:
        value = {int: "1", float: "2.5", tuple: "mp4,MOV", str: "somewhere"}[o.kind]
    return [value], coerce(o, value)


def _section(opts: Any, o: Option) -> Any:
    return getattr(opts, o.section)


def test_each_command_takes_exactly_its_table_rows() -> None:
    """The typer commands are generated from the table: same options, every spelling, and
    extract is scan + run + export (the drift of --decode-timeout and --lease-seconds)."""
    taken = {}
    for command in COMMANDS:
        params = {p.name: p for p in _click(command).params}
        want = [o for o in OPTIONS if o.takes(command)]
        assert set(params) == {o.name for o in want}, command
        for o in want:
            spellings = set(params[o.name].opts) | set(params[o.name].secondary_opts)
            assert set(o.flags()) <= spellings, (command, o.name, spellings)
            if o.kind is bool and o.in_config:
                assert f"--no-{o.name.replace('_', '-')}" in spellings
        taken[command] = set(params)
    assert taken["extract"] == set().union(*(taken[c] for c in EXTRACT_OF))
    assert {"decode_timeout", "lease_seconds", "format", "video_dir", "gpu"} <= taken["extract"]
    assert taken["status"] == {"output_dir", "db", "config", "watch", "json"}


def test_extract_parses_every_option_into_its_setting() -> None:
    """Every flag of extract, with dashes or underscores, lands typed in its settings section."""
    command = _click("extract")
    flags = [o for o in SETTINGS if o.takes("extract")]
    for spelling in (0, -1):  # first: --with-dashes, last: --with_underscores or an alias
        argv, want = [], {}
        for o in flags:
            words, value = _sample(o)
            flag = o.flags()[spelling]
            argv += [flag if o.kind is not bool or value else f"--no-{o.name.replace('_', '-')}", *words]
            want[o.name] = value
        ctx = command.make_context("extract", argv)
        config = ctx.params.pop("config")
        assert config is None
        opts = resolve(ctx.params)
        for o in flags:
            assert getattr(_section(opts, o), o.name) == want[o.name], (o.name, argv)
        assert set(opts.asked_job) == {o.name for o in flags if o.section == "job"}


def test_every_setting_is_a_config_key(tmp_path: Path) -> None:
    """Config keys are the table's names and aliases, config-only settings included."""
    import yaml

    for use_alias in (False, True):
        values = {}
        for o in SETTINGS:
            words, value = _sample(o)
            key = o.aliases[0] if (use_alias and o.aliases) else o.name.replace("_", "-") if use_alias else o.name
            values[key] = words[0] if words else value
        cfg = tmp_path / f"all{use_alias}.yaml"
        cfg.write_text(yaml.safe_dump(values))
        opts = resolve({}, str(cfg))
        for o in SETTINGS:
            assert getattr(_section(opts, o), o.name) == _sample(o)[1], o.name
    assert {"log_every", "max_claims", "shard_seconds", "decode_timeout_per_mb"} <= {
        o.name for o in SETTINGS if not o.commands
    }


def test_guide_layout_reads_as_the_flat_one(tmp_path: Path) -> None:
    guide = resolve({}, str(ROOT / "configs" / "clip_baseline.yaml"))
    flat = resolve({}, str(ROOT / "configs" / "clip_baseline_flat.yaml"))
    assert (guide.job, guide.run, guide.paths, guide.export) == (flat.job, flat.run, flat.paths, flat.export)
    assert guide.job.model == "ViT-B-32"  # OpenAI's ViT-B/32, recorded by open_clip's name
    assert (guide.run.gpu, guide.run.batch_size, guide.run.num_workers) == ("0", 64, 4)
    assert (guide.paths.video_dir, guide.paths.output_dir, guide.export.format) == (("./data/videos",), "./features", "npy")
    wins = resolve({"gpu": "cpu", "num_frames": 4, "format": "pkl"}, str(ROOT / "configs" / "clip_baseline.yaml"))
    assert (wins.run.gpu, wins.job.num_frames, wins.export.format, wins.run.batch_size) == ("cpu", 4, "pkl", 64)


@pytest.mark.parametrize(
    "text, words",
    [
        ("data: {video_dir: v, colour: blue}\n", "unknown option 'data.colour'"),
        ("logging: {level: info}\n", "unknown option 'logging'"),
        ("device: {name: cuda}\n", "unknown option 'device.name'"),
        ("batch_size: 2\nextraction: {batch_size: 3}\n", "'batch_size' given twice ('batch_size' and 'extraction.batch_size')"),
        ("gpu: 0\ndevice: {gpu_id: 1}\n", "'gpu' given twice"),
        ("output: {save_format: hdf5}\n", "format must be one of npy, pkl, parquet, got 'hdf5'"),
        ("extraction: {batch_size: lots}\n", "option 'batch_size' must be int"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, words: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(PipelineError) as e:
        resolve({}, str(cfg))
    assert words in str(e.value)


@pytest.mark.parametrize(
    "args, words",
    [
        (["extract", "--format", "hdf5"], "format must be one of npy, pkl, parquet"),
        (["extract", "--save_format", "csv"], "format must be one of npy, pkl"),
        (["run", "--lease-seconds", "0"], "lease_seconds must be positive"),
        (["extract", "--max_attempts", "0"], "max_attempts must be at least 1"),
        (["scan", "--video-dir", "{tmp}", "--gpu", "0"], "No such option: --gpu"),  # a run setting, not scan's
        (["extract", "--video-dir", "{tmp}", "--gpu_id", "tpu"], "--gpu must be auto, cpu, all, or GPU indices"),
        # The drift this table ends: extract refused these; now they parse and the next check speaks.
        (["extract", "--decode-timeout", "5", "--lease-seconds", "30", "--gpu", "cpu"], "scan needs --video-dir"),
    ],
)
def test_checks_come_from_the_table(tmp_path: Path, args: list[str], words: str) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args] + ["--output-dir", str(tmp_path / "j")]
    assert words in one_line_error(run_cli(*args, check=False))
    assert not (tmp_path / "j").exists(), "a refused command created a job"


def _pretend_gpus(monkeypatch: pytest.MonkeyPatch, n: int) -> int:
    """This machine as torch would see it with n CUDA devices (torch's own count, patched)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return n


@pytest.fixture(params=[0, 1, 4], ids=lambda n: f"{n}gpus")
def gpus(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    return _pretend_gpus(monkeypatch, request.param)


def _devices(spec: str) -> list[str]:
    return [str(d) for d in resolve({"gpu": spec}).run.devices()]


def test_devices_for_each_spec(gpus: int) -> None:
    cuda = [f"cuda:{i}" for i in range(gpus)]
    assert _devices("auto") == (cuda[:1] or ["cpu"])
    assert _devices("cpu") == ["cpu"] and _devices("cpu,cpu") == ["cpu", "cpu"]
    if gpus:
        assert _devices(" ALL ") == cuda  # one device on a one-GPU machine: a single engine
    for index in range(4):
        if index < gpus:
            assert _devices(str(index)) == [f"cuda:{index}"]
        else:
            have = f"only {gpus} CUDA device(s)" if gpus else "no CUDA GPU is available"
            with pytest.raises(PipelineError) as e:
                _devices(str(index))
            assert str(e.value) == f"--gpu {index} asked for, but {have}"  # word for word as before
    if gpus >= 2:
        assert _devices("0,1") == ["cuda:0", "cuda:1"]  # two engines
        assert _devices("1,cpu") == ["cuda:1", "cpu"]
    if not gpus:
        with pytest.raises(PipelineError, match="^--gpu all: no CUDA GPU is available$"):
            _devices("all")


def test_all_on_one_gpu_is_one_engine_the_encoder_accepts(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bug this fixes: `--gpu all` on one GPU reached the encoder as the text 'all'.
    Now it is one Device, so one engine in this process, whose torch device is cuda:0."""
    _pretend_gpus(monkeypatch, 1)
    (device,) = resolve({"gpu": "all"}).run.devices()
    assert device == Device("cuda", 0) and device.spec == "0"
    assert device.torch() == torch.device("cuda", 0)
    from pipeline.decoders import get_decoder

    get_decoder("cpu").check(device.torch())  # what run_engine does with it before the encoder


@pytest.mark.parametrize("spec", ["tpu", "auto,0", "all,1", "0,", "-1", "1.5", "", "cuda:0"])
def test_bad_gpu_specs_are_refused_when_read(spec: str) -> None:
    """Syntax is checked with the settings (no CUDA query), so every command refuses them at once."""
    with pytest.raises(PipelineError, match="^--gpu"):
        resolve({"gpu": spec})
    with pytest.raises(PipelineError):
        parse_spec(spec)


def test_auto_without_a_gpu_warns_once(gpus: int, caplog: pytest.LogCaptureFixture) -> None:
    from pipeline.devices import warn_on_fallback

    devices = resolve_devices("auto")
    assert not caplog.records  # resolving says nothing: the run says it once its log is open
    warn_on_fallback("auto", devices[0])
    warn_on_fallback("cpu", Device("cpu"))
    warnings = [r for r in caplog.records if "no CUDA GPU found" in r.getMessage()]
    assert len(warnings) == (0 if gpus else 1)
