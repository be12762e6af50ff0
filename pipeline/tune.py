"""`cli.py tune`: measure what this box does on the user's own videos, then recommend a run's settings.

Users guess --num-workers, --decode-threads, --decoder and --batch-size, and learn after
the run that they guessed wrong (torchcodec #536: CUDA decoding slower than the CPU for
their files). So tune measures, on a seeded random sample of the job's videos, with the
job's model, frames, sampling and resize and the run's real decoders and Encoder:

- decode: CPU seconds per video on one core (one FFmpeg thread), with `cpu` and, where
  the run is on a GPU, with `nvdec` (its CPU cost and its wall time per video);
- encode: frames/s of the model on the run's device at two or three batch sizes.

A small model of the pipeline (docs/design/tune.md) turns them into the recommendation:
decode capacity = workers / decode seconds per video; encode capacity = frames/s /
frames per video (x engines); on the CPU the two share the cores; the slower stage sets
the rate and a pipeline hides all but one batch of the faster one. The settings go to a
YAML file in the guide's layout, which `run --config FILE` takes.
"""

from __future__ import annotations

import logging
import random
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pipeline.devices import Device
from pipeline.errors import PipelineError
from pipeline.settings import JobSettings, Options

log = logging.getLogger(__name__)

CPU_BATCH_SIZES = (8, 32)  # on the CPU the batch size barely changes frames/s; smaller ends sooner
GPU_BATCH_SIZES = (16, 64, 256)  # on a GPU larger batches fill the device, up to its memory
ENCODE_SECONDS = 1.5  # time each batch size is measured for (at least two batches)
TIE = 0.03  # settings within 3% of the best time are a tie: the cheaper one wins


@dataclass
class Measured:
    """What tune measured on this box, the inputs of the model."""

    device: str
    engines: int  # devices the run would use, one engine each
    cores: int
    num_frames: int
    sampled: int  # videos tried
    failed: int  # of them, videos the CPU decoder could not decode (they fail in a run too)
    decode_cpu_s: dict[str, float]  # decoder -> mean CPU s per video, one core, one FFmpeg thread
    decode_wall_s: dict[str, float]  # decoder -> mean wall s per video, one at a time
    encode_fps: dict[int, float]  # batch size (videos) -> frames/s, CPU: per encoder thread
    startup_s: float  # loading the model: paid once per run
    total_videos: int  # videos the whole job has left
    worker_start_s: float = 0.0  # starting one decode process (spawn, imports), to its first video


@dataclass
class Recommendation:
    num_workers: int
    decode_threads: int
    decoder: str
    batch_size: int
    videos_per_s: float  # expected, steady state
    job_seconds: float  # expected for the whole job, start-up included
    limit: str  # what bounds the rate: decode, encode or cores
    gpu: str
    measured: Measured = field(repr=False)


def job_videos(opts: Options) -> tuple[JobSettings, list[str], int]:
    """(job settings, candidate videos, videos the job has left): an existing job's pending
    videos (all of them if none is pending), or what --video-dir holds for a new one."""
    from pipeline.manifest import job_exists, open_manifest

    out, db = opts.paths.output_dir, opts.paths.db
    if job_exists(out, db) and not opts.paths.video_dir:
        manifest = open_manifest(out, db)
        try:
            job = manifest.check_job(opts.asked_job)
            rows = manifest.known_files()
        finally:
            manifest.close()
        pending = [p for p, r in rows.items() if r[3] in ("pending", "running")]
        names = pending or [p for p, r in rows.items() if r[3] != "missing"]
        return job, sorted(names), len(pending)
    if not opts.paths.video_dir:
        raise PipelineError(f"tune needs --video-dir DIR, or --output-dir of an existing job (none in {out})")
    from pipeline.sources import source_for

    errors: list[str] = []
    names = sorted({e.name for loc in opts.paths.video_dir for e in source_for(loc).entries(opts.paths.extensions, errors)})
    return opts.job, names, len(names)


def pick(names: list[str], count: int, seed: int = 0) -> list[str]:
    """A seeded random sample: the same videos every time tune is run on the same job."""
    return sorted(random.Random(seed).sample(names, min(count, len(names))))


def measure_decode(names: list[str], job: JobSettings, geometry: Any, decoder: str, gpu_index: int) -> tuple[float, float, int]:
    """(mean CPU s, mean wall s per decodable video, undecodable videos) with the real decoder,
    one FFmpeg thread, the job's sampling and resize: what one decode worker pays per video."""
    from pipeline.decoders import DecodeError, get_decoder
    from pipeline.samplers import get_sampler
    from pipeline.sources import open_video

    dec = get_decoder(decoder)(1, gpu_index)
    sampler = get_sampler(job.sampling)(job.num_frames)
    convert = geometry.converter(job.resize)
    cpu, wall, failed = [], [], 0
    for name in names:
        t, w = time.process_time(), time.perf_counter()
        try:
            dec.sample(open_video(name), sampler, convert)
        except (DecodeError, PipelineError):
            failed += 1
            continue
        cpu.append(time.process_time() - t)
        wall.append(time.perf_counter() - w)
    if not cpu:
        raise PipelineError(f"tune: none of the {len(names)} sampled videos could be decoded")
    return statistics.mean(cpu), statistics.mean(wall), failed


def measure_encode(loaded: Any, device: Device, num_frames: int, batch_sizes: tuple[int, ...]) -> dict[int, float]:
    """Frames/s of the real Encoder at each batch size, batches kept in flight as a run does.

    On the CPU the encoder runs on one thread here and the figure is per thread (a run
    gives it the cores its decoders leave). A size that runs out of memory on a GPU is
    recorded at the size the encoder fell back to, and larger ones are not tried.
    """
    import numpy as np
    import torch

    from pipeline.encoder import Encoder

    tdev = device.torch()
    threads = torch.get_num_threads()
    enc = Encoder(loaded, tdev, cpu_threads=1)
    h, w = loaded.preprocess.geometry.crop
    rng = np.random.default_rng(0)
    fps: dict[int, float] = {}
    try:
        for b in batch_sizes:
            crops = rng.integers(0, 256, (b * num_frames, h, w, 3), dtype=np.uint8)
            enc.encode(crops, num_frames)  # warm-up (and, on a GPU, where memory runs out)
            size = min(b, enc.max_videos or b)
            frames, pending, start = 0, None, time.perf_counter()
            while frames < 2 * len(crops) or time.perf_counter() - start < ENCODE_SECONDS:
                nxt = enc.submit([crops], num_frames)
                if pending is not None:
                    pending.result()
                pending, frames = nxt, frames + len(crops)
            pending.result()
            fps[size] = frames / (time.perf_counter() - start)
            if size < b:
                break
    finally:
        if tdev.type == "cpu":
            torch.set_num_threads(threads)
    return fps


def measure_worker_start(job: JobSettings, geometry: Any, name: str, decode_wall: float) -> float:
    """Seconds from starting one real decode process to its first result, less the video's
    own decode: the per-worker cost a run pays before decoding (spawn, importing PyAV)."""
    from pipeline.workers import DecodePool, DecodeSpec, Task

    start = time.perf_counter()
    pool = DecodePool(1, DecodeSpec(job.num_frames, geometry, job.resize, job.sampling))
    try:
        pool.submit(Task(0, name, 120.0))
        while not pool.poll(0.2) and time.perf_counter() - start < 120:
            pass
    finally:
        pool.close()
    return max(0.0, time.perf_counter() - start - decode_wall)


def measure(opts: Options, sample: int, seed: int = 0) -> Measured:
    """Everything the model needs, measured on `sample` of the job's videos."""
    from pipeline.decoders import as_a_worker
    from pipeline.models import load_model

    job, names, total = job_videos(opts)
    if not names:
        raise PipelineError("tune: the job has no videos to measure")
    devices = opts.run.devices()
    device = devices[0]
    chosen = pick(names, sample, seed)
    start = time.perf_counter()
    loaded = load_model(job, device.torch())
    startup = time.perf_counter() - start
    geometry = loaded.preprocess.geometry
    decoders = ["cpu"] + (["nvdec"] if device.kind == "cuda" else [])
    cpu_s: dict[str, float] = {}
    wall_s: dict[str, float] = {}
    failed = 0
    for d in decoders:
        try:
            # in a process of its own, without torch, as a decode worker (the model is on the GPU here)
            cpu_s[d], wall_s[d], bad = as_a_worker(measure_decode, chosen, job, geometry, d, device.index or 0)
        except PipelineError:
            if d == "cpu":
                raise
            log.warning("tune: nvdec could not decode the sample; it is not recommended")
            continue
        failed = bad if d == "cpu" else failed
    sizes = GPU_BATCH_SIZES if device.kind == "cuda" else CPU_BATCH_SIZES
    fps = measure_encode(loaded, device, job.num_frames, sizes)
    worker_start = measure_worker_start(job, geometry, chosen[0], wall_s["cpu"])
    return Measured(str(device), len(devices), opts.run.core_count(), job.num_frames, len(chosen), failed,
                    cpu_s, wall_s, fps, startup, total, worker_start)


def job_time(m: Measured, decoder: str, workers: int, batch: int) -> tuple[float, str]:
    """(seconds to process the job once started, the limiting stage) for one setting.

    Two stages in a pipeline: the slower sets the pace (V videos x its cost per video),
    and all but one batch of the faster one is hidden behind it. On the CPU decoders
    and the encoder also share the cores, which bounds both together.
    """
    v = max(1, m.total_videos)
    d_cpu = m.decode_cpu_s[decoder]
    # A CPU decoder costs its CPU seconds on its core; an nvdec worker also waits on the GPU
    # decoder, one video at a time, so its wall time bounds it too.
    per_worker = d_cpu if decoder == "cpu" else max(d_cpu, m.decode_wall_s[decoder])
    decode = v * per_worker / workers
    if m.device == "cpu":
        threads = max(1, m.cores - workers)  # what the engine gives its encoder
        enc_fps = m.encode_fps[batch] * threads
    else:
        enc_fps = m.encode_fps[batch] * m.engines
    encode = v * m.num_frames / enc_fps
    stages = {"decode": decode, "encode": encode}
    if m.device == "cpu":
        stages["cores"] = v * (d_cpu + m.num_frames / m.encode_fps[batch]) / m.cores
    limit = max(stages, key=stages.get)  # type: ignore[arg-type]
    b = min(batch, v)
    tail = min(b * per_worker / workers, b * m.num_frames / enc_fps)
    return stages[limit] + tail, limit


def start_time(m: Measured, workers: int) -> float:
    """Seconds before the first decoded video: the workers start while the model loads
    (docs/design/startup.md), each in its own process, so their start is hidden behind the
    load unless the cores cannot run both: max(load, one start, all of it / cores)."""
    return max(m.startup_s, m.worker_start_s, (m.startup_s + workers * m.worker_start_s) / m.cores)


def recommend(m: Measured, gpu: str) -> Recommendation:
    """The setting with the shortest job time, start-up included; near-ties go to fewer
    workers, then the smaller batch (less memory, a shorter tail, cores left for the rest
    of the box)."""
    options = []
    for decoder in m.decode_cpu_s:
        for workers in range(1, m.cores + 1):
            start = start_time(m, workers)
            for batch in sorted(m.encode_fps):
                seconds, limit = job_time(m, decoder, workers, batch)
                options.append((seconds + start, decoder != "cpu", workers, batch, decoder, limit, seconds))
    best = min(o[0] for o in options)
    total, _, workers, batch, decoder, limit, seconds = min(
        (o for o in options if o[0] <= best * (1 + TIE)), key=lambda o: (o[2], o[1], o[3], o[0]))
    threads = max(1, m.cores // workers)
    return Recommendation(workers, threads, decoder, batch, max(1, m.total_videos) / seconds, total, limit, gpu, m)


def config_text(r: Recommendation, output_dir: str | None, cores_given: bool = False) -> str:
    """The recommendation as a config in the guide's layout (`run --config FILE` takes it),
    with what it was measured from as comments."""
    m = r.measured
    extraction = {"batch_size": r.batch_size, "num_workers": r.num_workers, "decode_threads": r.decode_threads,
                  "decoder": r.decoder}
    device: dict[str, Any] = {"gpu": r.gpu, **({"cores": m.cores} if cores_given else {})}
    data: dict[str, Any] = {"extraction": extraction, "device": device}
    if output_dir:
        data["output"] = {"output_dir": output_dir}
    lines = [
        "# Written by `cli.py tune`: run with `cli.py run --config THIS_FILE` (flags on the command line win).",
        f"# Measured on {m.sampled} sampled videos, {m.cores} cores, device {m.device}, {m.num_frames} frames per video:",
        *(f"#   decode {d}: {m.decode_cpu_s[d]:.3f} CPU s per video on one core ({m.decode_wall_s[d]:.3f} s wall)"
          for d in m.decode_cpu_s),
        *(f"#   encode batch {b}: {fps:.0f} frames/s" + (" per thread" if m.device == "cpu" else "")
          for b, fps in sorted(m.encode_fps.items())),
        f"#   starting a decode worker: {m.worker_start_s:.1f} s",
        f"# Expected: {r.videos_per_s:.2f} videos/s ({r.limit}-bound), {format_seconds(r.job_seconds)} "
        f"for the job's {m.total_videos} videos.",
    ]
    return "\n".join(lines) + "\n" + yaml.safe_dump(data, sort_keys=False)


def format_seconds(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def default_out(opts: Options) -> Path:
    """OUT/tuned.yaml: beside the job, or where the job will be once `scan --output-dir OUT`
    makes it (the config names OUT, so `run --config` finds that job, not ./features)."""
    return Path(opts.paths.output_dir) / "tuned.yaml"


def tune(opts: Options, sample: int, out: str | None) -> tuple[Recommendation, Path]:
    """Measure, recommend, write the config; returns the recommendation and where it went."""
    if sample < 1:
        raise PipelineError(f"sample must be at least 1, got {sample}")
    m = measure(opts, sample)
    devices = opts.run.devices()
    gpu = ",".join(d.spec for d in devices)
    r = recommend(m, gpu)
    path = Path(out) if out else default_out(opts)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config_text(r, str(opts.paths.output_dir), opts.run.cores > 0))
    log.info("tune: %s", {k: v for k, v in asdict(r).items() if k != "measured"})
    return r, path


def summary(r: Recommendation, path: Path) -> list[str]:
    """What `tune` prints: the measurements, the flags, the expectation, the file."""
    m = r.measured
    lines = [f"measured {m.sampled} videos ({m.failed} undecodable) on {m.cores} cores, device {m.device}:"]
    for d in m.decode_cpu_s:
        lines.append(f"  decode {d}: {m.decode_cpu_s[d]:.3f} CPU s per video per core ({m.decode_wall_s[d]:.3f} s wall)")
    unit = " per encoder thread" if m.device == "cpu" else ""
    lines.append("  encode: " + ", ".join(f"batch {b}: {f:.0f} frames/s" for b, f in sorted(m.encode_fps.items())) + unit)
    lines.append(f"  starting a decode worker: {m.worker_start_s:.1f} s")
    lines.append(f"recommended: --num-workers {r.num_workers} --decode-threads {r.decode_threads} --decoder {r.decoder} "
                 f"--batch-size {r.batch_size} --gpu {r.gpu}")
    lines.append(f"expected: {r.videos_per_s:.2f} videos/s ({r.limit}-bound), {format_seconds(r.job_seconds)} for "
                 f"{m.total_videos} videos (start-up {m.startup_s:.1f} s)")
    lines.append(f"wrote {path} (use: cli.py run --config {path})")
    return lines
