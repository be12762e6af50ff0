"""Every option of every command, its default, and how a config file and the CLI combine.

Options split in two kinds. Job settings decide what a feature *is* (model, weights,
frames, sampling, per-frame output); they are fixed by the job's first scan and any
later command that asks for something else is refused, so one output never mixes
two definitions. Run settings only decide how fast or where a run goes and may change
from run to run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from pipeline.decoders import DECODERS as DECODER_REGISTRY
from pipeline.errors import PipelineError
from pipeline.samplers import SAMPLERS

DEFAULT_EXTENSIONS = (
    "mp4 m4v mov mkv webm avi flv wmv mpg mpeg ts mts m2ts 3gp dv ogv gif"
).split()

SAMPLING_MODES = tuple(SAMPLERS)  # the registries' names (pipeline/samplers/, pipeline/decoders/)
RESIZE_MODES = ("swscale", "pil")
DECODERS = tuple(DECODER_REGISTRY)


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, as taskset or Slurm set it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# Job settings added later, and what jobs created before them did.
BEFORE_SETTING_EXISTED = {"resize": "pil"}


@dataclass(frozen=True)
class JobSettings:
    """What a feature is. Recorded in the manifest by the first scan."""

    model: str = "ViT-B-32"
    pretrained: str = "openai"
    num_frames: int = 8
    sampling: str = "exact"
    resize: str = "swscale"
    save_frames: bool = False

    def as_strings(self) -> dict[str, str]:
        return {f.name: to_text(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> "JobSettings":
        """A stored job's settings. A setting added after the job was created takes the
        value that was in effect then, so an old job never changes definition midway."""
        values = {**BEFORE_SETTING_EXISTED, **values}
        kwargs = {}
        for f in fields(cls):
            if f.name in values:
                kwargs[f.name] = _coerce(f.name, values[f.name], type(getattr(cls(), f.name)))
        return cls(**kwargs)


@dataclass(frozen=True)
class RunSettings:
    """How one run goes. Free to change between runs of the same job."""

    gpu: str = "auto"
    batch_size: int = 64
    num_workers: int = 0  # 0: one decode worker per core
    decode_threads: int = 0  # FFmpeg threads per worker; 0: cores // workers
    cores: int = 0  # CPU cores the run may use; 0: all this process may run on
    decoder: str = "cpu"  # or "nvdec": decode on the run's GPU, CPU fallback per video
    max_attempts: int = 2
    max_claims: int = 10
    lease_seconds: float = 300.0
    shard_size: int = 512
    shard_seconds: float = 60.0
    log_every: int = 100
    retry_failed: bool = False
    decode_timeout: float = 60.0  # seconds a video may take to decode, plus...
    decode_timeout_per_mb: float = 1.0  # ...this much per MB of file

    def deadline(self, size_bytes: int) -> float:
        """How long one video may decode before its worker is presumed hung and killed."""
        return self.decode_timeout + self.decode_timeout_per_mb * size_bytes / 1e6

    def core_count(self) -> int:
        return self.cores if self.cores > 0 else available_cores()

    def workers(self) -> int:
        return self.num_workers if self.num_workers > 0 else self.core_count()

    def threads_per_worker(self) -> int:
        """FFmpeg threads per decode worker, so that threads x workers stays within the cores.

        One single-threaded process per core beats fewer multi-threaded ones (frame
        threading adds a frame of delay per thread, and PyAV's default threading does
        nothing for single-slice H.264); threads only fill cores that workers leave idle.
        """
        return self.decode_threads if self.decode_threads > 0 else max(1, self.core_count() // self.workers())


@dataclass(frozen=True)
class Paths:
    """Where the job lives. Not part of the job's identity."""

    output_dir: str = "features"
    db: str | None = None
    video_dir: str | None = None
    extensions: tuple[str, ...] = tuple(DEFAULT_EXTENSIONS)


_SECTIONS = (JobSettings, RunSettings, Paths)
_KNOWN: dict[str, type] = {
    f.name: type(getattr(cls(), f.name)) if getattr(cls(), f.name) is not None else str
    for cls in _SECTIONS
    for f in fields(cls)
}
# Keys that are command-specific but may sit in a shared config file.
_EXTRA_KEYS = {"format": str}


@dataclass(frozen=True)
class Options:
    job: JobSettings
    run: RunSettings
    paths: Paths
    asked_job: dict[str, Any]  # job settings the user asked for explicitly
    extra: dict[str, Any]


def to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _coerce(key: str, value: Any, kind: type) -> Any:
    """Turn a config/CLI value into the option's type, or say in one line why not."""
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("true", "yes", "1", "on"):
                return True
            if text in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is tuple:
            items = value.split(",") if isinstance(value, str) else list(value)
            return tuple(str(i).strip().lstrip(".").lower() for i in items if str(i).strip())
        if isinstance(value, (dict, list)):
            raise ValueError
        return str(value)
    except (TypeError, ValueError):
        raise PipelineError(f"option '{key}' must be {kind.__name__}, got {value!r}") from None


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config whose keys are the CLI's option names (dashes or underscores)."""
    p = Path(path)
    if not p.is_file():
        raise PipelineError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise PipelineError(f"config file {p} is not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise PipelineError(f"config file {p} must be a mapping of option: value")
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _KNOWN and name not in _EXTRA_KEYS:
            raise PipelineError(f"config file {p}: unknown option '{key}'")
        out[name] = value
    return out


def _normalise_job_value(key: str, value: Any) -> Any:
    """Local files are recorded by absolute path so a relative and an absolute spelling agree.

    A model is a file only when it names a .json config; weights are a file when one
    exists there or the name has a checkpoint suffix. Anything else is a name or a tag.
    """
    if key == "pretrained" and isinstance(value, str) and value.lower() == "none":
        return "none"
    if key not in ("model", "pretrained") or not isinstance(value, str):
        return value
    p = Path(value).expanduser()
    is_file = value.endswith(".json") if key == "model" else (
        p.is_file() or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))
    )
    if not is_file:
        return value
    if not p.is_file():
        raise PipelineError(f"{key} file not found: {value}")
    return str(p.resolve())


def resolve(cli: dict[str, Any], config: str | None = None) -> Options:
    """Merge defaults < config file < command line into validated settings."""
    given: dict[str, Any] = {}
    if config:
        given.update(load_config(config))
    given.update({k: v for k, v in cli.items() if v is not None})

    typed: dict[str, Any] = {}
    for key, value in given.items():
        kind = _KNOWN.get(key) or _EXTRA_KEYS.get(key) or str
        typed[key] = _coerce(key, value, kind)

    asked_job = {}
    for f in fields(JobSettings):
        if f.name in typed:
            typed[f.name] = _normalise_job_value(f.name, typed[f.name])
            asked_job[f.name] = typed[f.name]

    def build(cls):
        return cls(**{f.name: typed[f.name] for f in fields(cls) if f.name in typed})

    opts = Options(
        job=build(JobSettings),
        run=build(RunSettings),
        paths=build(Paths),
        asked_job=asked_job,
        extra={k: v for k, v in typed.items() if k in _EXTRA_KEYS},
    )
    _validate(opts)
    return opts


def _validate(o: Options) -> None:
    if o.job.num_frames < 1:
        raise PipelineError(f"num_frames must be at least 1, got {o.job.num_frames}")
    if o.job.sampling not in SAMPLING_MODES:
        raise PipelineError(f"sampling must be one of {', '.join(SAMPLING_MODES)}, got {o.job.sampling!r}")
    if o.run.batch_size < 1:
        raise PipelineError(f"batch_size must be at least 1, got {o.run.batch_size}")
    if o.job.resize not in RESIZE_MODES:
        raise PipelineError(f"resize must be one of {', '.join(RESIZE_MODES)}, got {o.job.resize!r}")
    if o.run.decoder not in DECODERS:
        raise PipelineError(f"decoder must be one of {', '.join(DECODERS)}, got {o.run.decoder!r}")
    if o.run.num_workers < 0 or o.run.decode_threads < 0 or o.run.cores < 0:
        raise PipelineError("num_workers, decode_threads and cores must be 0 (auto) or more")
    if o.run.decode_threads * o.run.workers() > o.run.core_count():
        raise PipelineError(
            f"decode_threads {o.run.decode_threads} x {o.run.workers()} workers is more than the "
            f"{o.run.core_count()} cores this run may use"
        )
    if o.run.max_attempts < 1 or o.run.max_claims < 1:
        raise PipelineError("max_attempts and max_claims must be at least 1")
    if o.run.decode_timeout <= 0 or o.run.decode_timeout_per_mb < 0:
        raise PipelineError("decode_timeout must be positive and decode_timeout_per_mb not negative")
    if o.run.lease_seconds <= 0 or o.run.shard_size < 1 or o.run.shard_seconds <= 0:
        raise PipelineError("lease_seconds, shard_size and shard_seconds must be positive")
    if not o.paths.extensions:
        raise PipelineError("extensions must name at least one file extension")
