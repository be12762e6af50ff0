"""Every option of every command, its default, and how a config file and the CLI combine.

The option table (OPTIONS) is the settings classes' fields below, each declared once
with `setting(default, help, commands, ...)`: the CLI's commands, the config file's
keys, --help and the checks all come from it (pipeline/options.py). Adding an option
is one field here.

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
from pipeline.devices import Device, parse_spec, resolve_devices
from pipeline.errors import PipelineError
from pipeline.executors import EXECUTORS
from pipeline.exports import FORMATS
from pipeline.options import Option, check_table, coerce, command_option, options_of, setting
from pipeline.samplers import SAMPLERS

DEFAULT_EXTENSIONS = (
    "mp4 m4v mov mkv webm avi flv wmv mpg mpeg ts mts m2ts 3gp dv ogv gif"
).split()

SAMPLING_MODES = SAMPLERS.names()  # the registries' names (pipeline/samplers/, pipeline/decoders/)
RESIZE_MODES = ("swscale", "pil")
DECODERS = DECODER_REGISTRY.names()
CLASSIFIERS = ("logreg", "svm", "mlp")  # pipeline/probe.py
PLOT_METHODS = ("pca", "tsne", "umap")  # pipeline/plots.py


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask, as taskset or Slurm set it)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


# Job settings added later, and what jobs created before them did.
BEFORE_SETTING_EXISTED = {"resize": "pil"}

# Which commands take which options as flags (`extract` takes every option of scan, run and export).
ALL = ("scan", "run", "status", "export", "tune")
ALL += ("index", "search", "dedup")
SCAN, RUN, EXPORT = ("scan",), ("run",), ("export",)
JOB = ("scan", "run", "tune")  # run and tune take them too, to check them against the job's
TUNE = ("tune",)  # tune measures a job (or a folder's videos) on the run's device and cores
ANALYSIS = ("verify", "probe", "plot", "report")  # they read a job: --output-dir, --db, --config
ALL += ANALYSIS

# OpenAI's model names, as the original guide spells them, and open_clip's names for them.
OPENAI_MODEL_NAMES = {"ViT-B/32": "ViT-B-32", "ViT-B/16": "ViT-B-16", "ViT-L/14": "ViT-L-14", "ViT-L/14@336px": "ViT-L-14-336"}


@dataclass(frozen=True)
class JobSettings:
    """What a feature is. Recorded in the manifest by the first scan."""

    model: str = setting("ViT-B-32", "open_clip model name (or OpenAI's spelling, ViT-B/32) or config .json.", JOB)
    pretrained: str = setting("openai", "open_clip tag, local checkpoint path, or none.", JOB)
    num_frames: int = setting(8, "Frames sampled per video.", JOB, minimum=1)
    sampling: str = setting(
        "exact", "exact, or keyframes: the keyframe nearest each target (approximate, much faster).", JOB,
        choices=SAMPLING_MODES,
    )
    resize: str = setting(
        "swscale", "swscale (one C call from YUV) or pil (open_clip's exact arithmetic, slower).", JOB,
        choices=RESIZE_MODES,
    )
    save_frames: bool = setting(False, "Keep per-frame features too.", JOB)

    def as_strings(self) -> dict[str, str]:
        return {f.name: to_text(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_strings(cls, values: dict[str, str]) -> "JobSettings":
        """A stored job's settings. A setting added after the job was created takes the
        value that was in effect then, so an old job never changes definition midway."""
        values = {**BEFORE_SETTING_EXISTED, **values}
        return cls(**{o.name: coerce(o, values[o.name]) for o in options_of(cls, "job") if o.name in values})


@dataclass(frozen=True)
class RunSettings:
    """How one run goes. Free to change between runs of the same job."""

    gpu: str = setting(
        "auto", "auto, cpu, a CUDA device index, or several (0,1 / all / cpu,cpu: one engine each).", RUN + TUNE,
        aliases=("gpu_id",),
    )
    executor: str = setting(
        "local", "How engines run: local (this machine, one engine per device) or ray (a Ray cluster, --ray-address).", RUN,
        choices=EXECUTORS.names,
    )
    # --executor ray (pipeline/executors/ray.py, docs/design/ray.md)
    ray_address: str | None = setting(
        None, "Ray cluster for --executor ray: auto, ray://HOST:PORT, HOST:PORT, or local (start one here).", RUN,
        default_text="as ray.init(): RAY_ADDRESS, else a local Ray",
    )
    ray_decode_resource: str | None = setting(
        None, "Ray: a custom resource decode tasks need (the CPU nodes' role), besides one CPU each.", RUN,
        default_text="any node with a free CPU",
    )
    ray_encode_resource: str = setting(
        "GPU", "Ray: the resource encoder actors take, one actor per unit in the cluster (CPU actors if none is GPU).", RUN,
    )
    batch_size: int = setting(64, "Videos per forward pass.", RUN, minimum=1)
    num_workers: int = setting(0, "Decode processes.", RUN, minimum=0, default_text="one per core")
    decode_threads: int = setting(
        0, "FFmpeg threads per decode worker.", RUN, minimum=0, default_text="cores / workers"
    )
    cores: int = setting(0, "CPU cores the run may use.", RUN + TUNE, minimum=0, default_text="all it may run on")
    decoder: str = setting(
        "cpu", "cpu, or nvdec: decode on the run's GPU, falling back to the CPU per video.", RUN, choices=DECODERS
    )
    max_attempts: int = setting(2, "Decode attempts before a video fails.", RUN, minimum=1)
    max_claims: int = setting(
        10, "Claims by runs that stopped before a video is failed as abandoned (config file only).", minimum=1
    )
    lease_seconds: float = setting(300.0, "Claim lease, renewed while alive.", RUN, positive=True)
    shard_size: int = setting(512, "Videos per shard file.", RUN, minimum=1)
    shard_seconds: float = setting(60.0, "Commit a shard at least this often (config file only).", positive=True)
    log_every: int = setting(100, "A progress line in the log every this many batches (config file only).", minimum=1)
    retry_failed: bool = setting(False, "Try failed videos again.", RUN)
    decode_timeout: float = setting(
        60.0, "Seconds a video may decode (+1 s per MB) before it fails as a hang.", RUN, positive=True
    )
    decode_timeout_per_mb: float = setting(
        1.0, "Extra decode seconds per MB of file (config file only).", minimum=0
    )
    cache_dir: str | None = setting(
        None, "Keep whole local copies of remote videos here, reused by later runs.", RUN,
        default_text="none: ranged reads, nothing copied whole",
    )
    # Prometheus metrics (pipeline/metrics.py, docs/design/metrics.md).
    metrics_port: int = setting(
        0, "Serve Prometheus metrics on this port while the run lives (0: off).", RUN, minimum=0, default_text="off"
    )
    metrics_linger: float = setting(
        0.0, "Seconds the metrics endpoint stays up after the run ends, for a last scrape.", RUN, minimum=0
    )

    def deadline(self, size_bytes: int) -> float:
        """How long one video may decode before its worker is presumed hung and killed."""
        return self.decode_timeout + self.decode_timeout_per_mb * size_bytes / 1e6

    def devices(self) -> list[Device]:
        """The devices of --gpu on this machine: one engine each. Resolved here, once per
        run, so the executor and the encoder get the same typed values."""
        return resolve_devices(self.gpu)

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

    video_dir: tuple[str, ...] = setting(
        (), "Folder searched recursively for videos, a .zip/.tar archive, or a folder of them (repeatable).", SCAN + TUNE,
        repeat=True,
    )
    video_list: tuple[str, ...] = setting(
        (), "Text, CSV or parquet file of video paths or URLs (column path or url, else the first; repeatable).",
        SCAN, repeat=True,
    )
    output_dir: str = setting("features", "The job's directory.", ALL)
    db: str | None = setting(None, "Manifest database URL.", ALL, default_text="OUTPUT_DIR/manifest.sqlite")
    extensions: tuple[str, ...] = setting(tuple(DEFAULT_EXTENSIONS), "Comma-separated file extensions to register.", SCAN + TUNE)


@dataclass(frozen=True)
class ExportSettings:
    """What `export` writes."""

    format: str = setting(
        "npy", "npy (features.npy + video_paths.txt), pkl (features.pkl; pickle: load only from trusted sources) "
        "or parquet (features.parquet).",
        EXPORT, aliases=("save_format",), choices=FORMATS.names,
    )


@dataclass(frozen=True)
class AnalysisSettings:
    """What probe and plot read and fit (pipeline/labels.py, pipeline/probe.py, pipeline/plots.py)."""

    labels: str | None = setting(
        None, "A DFDC metadata.json (or a folder or zip holding them), a path,label CSV, or 'folders' "
        "(each video's parent folder name).", ("probe", "plot"),
    )
    classifier: str = setting(
        "logreg", "logreg, svm (linear, with calibrated probabilities) or mlp.", ("probe",), choices=CLASSIFIERS,
    )
    folds: int = setting(5, "Cross-validation folds, grouped so a fake and its original stay on one side.", ("probe",), minimum=1)
    method: str = setting("pca", "pca, tsne, or umap (needs umap-learn).", ("plot",), choices=PLOT_METHODS)


# The option table: every option of every command, each defined once (above, or here for the
# options of the commands themselves, which are neither settings nor config keys).
OPTIONS: tuple[Option, ...] = (
    *options_of(Paths, "paths"),
    *options_of(JobSettings, "job"),
    *options_of(RunSettings, "run"),
    *options_of(ExportSettings, "export"),
    *options_of(AnalysisSettings, "analysis"),
    command_option("config", str, None, "YAML file of option: value, flat or in the guide's sections (flags win).", ALL),
    command_option("watch", bool, False, "Refresh live until Ctrl-C.", ("status",)),
    command_option("json", bool, False, "Print one JSON object.", ("status", "verify", "probe", "index", "search", "dedup")),
    command_option("predict", bool, False, "Score the job's videos with the classifier `probe --labels` saved.", ("probe",)),
    command_option(
        "out", str, None,
        "Where to write: probe --predict's CSV, plot's folder, report's HTML, dedup's FILE.csv or FILE.json, tune's config file.",
        ("probe", "plot", "report", "dedup", "tune"),
    ),
    # index, search, dedup (pipeline/index.py, search.py, dedup.py): flags of the commands, not settings.
    command_option("rebuild", bool, False, "Build the index anew instead of extending it.", ("index",)),
    command_option("ivf_min", int, None, "Rows from which the index is IVF, not exact (default 50000).", ("index",)),
    command_option("text", str, None, "Find the videos nearest this text (the job's model's text tower).", ("search",)),
    command_option("video", str, None, "Find the videos nearest this one: a done video (path or file name) or a new file.", ("search",)),
    command_option("top_k", int, 10, "How many videos to list.", ("search",)),
    command_option("threshold", float, 0.95, "Cosine from which two videos are near-duplicates.", ("dedup",)),
    command_option("sample", int, 32, "Videos to measure: a seeded random sample of the job's.", TUNE),
)
check_table(OPTIONS)
_BY_NAME = {o.name: o for o in OPTIONS}
_CONFIG_KEYS = {key: o for o in OPTIONS if o.in_config for key in o.keys()}
# The original guide's config layout: these sections hold options (`model:` also `name:`).
GUIDE_SECTIONS = ("model", "data", "extraction", "device", "output")


@dataclass(frozen=True)
class Options:
    job: JobSettings
    run: RunSettings
    paths: Paths
    export: ExportSettings
    asked_job: dict[str, Any]  # job settings the user asked for explicitly
    analysis: AnalysisSettings = AnalysisSettings()


def to_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _config_key(path: Path, where: str, key: Any, section: str | None = None) -> Option:
    """The option a config key names (a name or alias, dashes or underscores), or a one-line error."""
    name = str(key).replace("-", "_")
    option = _BY_NAME["model"] if (section == "model" and name == "name") else _CONFIG_KEYS.get(name)
    if option is None:
        raise PipelineError(f"config file {path}: unknown option '{where}'")
    return option


def load_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a YAML config: flat `option: value`, or the original guide's sections.

    Flat keys are the CLI's option names (dashes or underscores) and aliases. The guide's
    layout groups them (`model: {name: ViT-B/32, pretrained: openai}`, `data: {video_dir:
    ...}`, `extraction:`, `device: {gpu_id: 0}`, `output: {save_format: npy}`); a section
    may hold any option, and `name` under `model` is the model. Either way every key must
    be an option, and each option may be given once.
    """
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
    entries: list[tuple[str, Option, Any]] = []
    for key, value in data.items():
        section = str(key).replace("-", "_")
        if section in GUIDE_SECTIONS and isinstance(value, dict):
            entries += [(f"{key}.{k}", _config_key(p, f"{key}.{k}", k, section), v) for k, v in value.items()]
        else:
            entries.append((str(key), _config_key(p, str(key), key), value))
    out: dict[str, Any] = {}
    given_as: dict[str, str] = {}
    for where, option, value in entries:
        if option.name in out:
            raise PipelineError(f"config file {p}: '{option.name}' given twice ('{given_as[option.name]}' and '{where}')")
        out[option.name], given_as[option.name] = value, where
    return out


def _normalise_job_value(key: str, value: Any) -> Any:
    """Local files are recorded by absolute path so a relative and an absolute spelling agree,
    and OpenAI's model names (ViT-B/32) by open_clip's (ViT-B-32), so both name one job.

    A model is a file only when it names a .json config; weights are a file when one
    exists there or the name has a checkpoint suffix. Anything else is a name or a tag.
    """
    if key == "pretrained" and isinstance(value, str) and value.lower() == "none":
        return "none"
    if key == "model" and value in OPENAI_MODEL_NAMES:
        return OPENAI_MODEL_NAMES[value]
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
    """Merge defaults < config file < command line into validated settings.

    `cli` holds the command's flags by option name (None: not given); a flag for
    something that is not a setting (an unknown name) is a programming error.
    """
    given: dict[str, Any] = {}
    if config:
        given.update(load_config(config))
    given.update({k: v for k, v in cli.items() if v is not None})

    typed: dict[str, Any] = {}
    for key, value in given.items():
        option = _BY_NAME[key]
        assert option.in_config, f"{key} is not a setting"
        typed[key] = coerce(option, value)

    asked_job = {}
    for o in options_of(JobSettings, "job"):
        if o.name in typed:
            typed[o.name] = _normalise_job_value(o.name, typed[o.name])
            asked_job[o.name] = typed[o.name]

    def build(cls: type) -> Any:
        return cls(**{f.name: typed[f.name] for f in fields(cls) if f.name in typed})

    opts = Options(
        job=build(JobSettings), run=build(RunSettings), paths=build(Paths), export=build(ExportSettings),
        asked_job=asked_job, analysis=build(AnalysisSettings),
    )
    _validate(opts)
    return opts


def _validate(o: Options) -> None:
    """Each option's own limits (from the table), then the ones between options."""
    for section in (o.job, o.run, o.paths, o.export, o.analysis):
        for f in fields(section):
            _BY_NAME[f.name].check(getattr(section, f.name))
    parse_spec(o.run.gpu)  # its syntax now; whether the GPUs are there is the run's to ask
    if o.run.decode_threads * o.run.workers() > o.run.core_count():
        raise PipelineError(
            f"decode_threads {o.run.decode_threads} x {o.run.workers()} workers is more than the "
            f"{o.run.core_count()} cores this run may use"
        )
    if not o.paths.extensions:
        raise PipelineError("extensions must name at least one file extension")
