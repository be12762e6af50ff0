"""`make gpu-check`: every GPU path of the product measured on one CUDA machine, in minutes.

Each check is a function that returns a Row (name, value, target, pass); one that fails
or raises is recorded with its error line and the others still run. The table goes to
stdout, the figures to bench/results/gpu-check-TIME.json (write_results). Weights are
random (no hub is reachable on a GPU box, and speed does not depend on them): ViT-B-32
and ViT-L-14 are built with a fixed seed, saved to a checkpoint and loaded through the
product's own path (`--model ViT-B-32 --pretrained FILE.pt`), as a user's offline
checkpoint is.

The checks (docs/performance.md, "GPU"):
- cuda_vs_cpu: CUDA (fp16 autocast) features against CPU (fp32) ones on the same crops;
- uneven_batches: back-to-back batches of uneven sizes, each equal to its own single
  encode (a staging buffer overwritten in flight would show here);
- encode_fps_*: Encoder frames/s in fp16 beside the model-only ceiling (CUDA events);
- oom_halving: a batch that does not fit under set_per_process_memory_fraction is halved,
  and its features equal an uncapped run's;
- nvdec_*: nvdec frames against CPU frames on H.264, HEVC and VP9 (same indices, pixel
  difference, share of frames that really came from the GPU);
- e2e_*: real `cli.py run` with --gpu 0, nvdec, 0,0, all, auto, each equal in
  done/failed/features to a CPU run of the same job, with videos/s and GPU/decoder
  utilisation sampled by nvidia-smi; and CPU + NVDEC decoding together (the product has
  no mixed decoder, so it is two runs of one job side by side, which the manifest allows).

Without CUDA it prints one line and exits 1. `--cpu` runs the device-agnostic checks on
the CPU with the tiny CLIP (what tests/test_gpu_check.py uses, so the code is not dead).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent

NO_GPU = "gpu-check needs a CUDA GPU (torch.cuda.is_available() is False); nothing was measured"
N = 8  # frames per video
GPU_PIXEL_FORMATS = ("nv12", "p010le", "p016le")  # what NVDEC hands back; software frames are yuv*
COSINE_TARGET = 0.999  # fp16 on the GPU against fp32 on the CPU


@dataclass
class Row:
    """One check's outcome: what was measured against what it should be."""

    name: str
    value: str
    target: str
    passed: bool | None  # None: a figure to read, with no pass/fail target
    figures: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class Context:
    """What the checks share: the device, a scratch folder, models and videos made once."""

    device: str  # "cuda" or "cpu" (the --cpu dry run)
    work: Path
    tiny: dict[str, str]
    cores: int
    _checkpoints: dict[str, str] = field(default_factory=dict)
    _geometries: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"

    def model_args(self, name: str) -> tuple[str, str]:
        """(--model, --pretrained) for a model: a random-weight checkpoint of the real
        architecture on the GPU, the tiny CLIP on the CPU dry run."""
        if not self.cuda:
            return self.tiny["model"], self.tiny["pretrained"]
        if name not in self._checkpoints:
            self._checkpoints[name] = random_checkpoint(name, self.work)
        return name, self._checkpoints[name]

    def geometry(self, name: str) -> Any:
        """The model's crop geometry (loaded once, on the CPU)."""
        if name not in self._geometries:
            self._geometries[name] = self.load(name, "cpu").preprocess.geometry
        return self._geometries[name]

    def load(self, name: str, device: str | None = None) -> Any:
        import torch

        from pipeline.models import load_model
        from pipeline.settings import JobSettings

        model, pretrained = self.model_args(name)
        return load_model(JobSettings(model=model, pretrained=pretrained, num_frames=N), torch.device(device or self.device))


def random_checkpoint(name: str, folder: Path, seed: int = 0) -> str:
    """The open_clip architecture `name` with seeded random weights, saved as a checkpoint."""
    import open_clip
    import torch

    path = folder / f"{name}-random.pt"
    if not path.exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(name)
        torch.save(model.state_dict(), path)
        del model
    return str(path)


# Comparisons (device-agnostic; tests/test_gpu_check.py holds them to account) ----------------


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [K, D] (or [K, N, D], flattened to rows) arrays."""
    a = a.reshape(-1, a.shape[-1]).astype(np.float64)
    b = b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def compare_features(a: np.ndarray, b: np.ndarray) -> dict[str, float | bool]:
    """How close two feature arrays are: lowest cosine, largest element difference, finiteness."""
    finite = bool(np.isfinite(a).all() and np.isfinite(b).all())
    if a.shape != b.shape:
        return {"finite": finite, "same_shape": False, "cos_min": float("nan"), "max_abs_diff": float("inf")}
    if not a.size:
        return {"finite": finite, "same_shape": True, "cos_min": 1.0, "max_abs_diff": 0.0}
    return {"finite": finite, "same_shape": True, "cos_min": float(cosines(a, b).min()),
            "max_abs_diff": float(np.abs(a.astype(np.float64) - b).max())}


def timer(cuda: bool) -> Callable[[], Callable[[], float]]:
    """start() -> stop() -> seconds: CUDA events on the GPU (device time, not the host's
    wall clock), perf_counter on the CPU."""
    if cuda:
        import torch

        def start() -> Callable[[], float]:
            begin = torch.cuda.Event(enable_timing=True)
            begin.record()

            def stop() -> float:
                end = torch.cuda.Event(enable_timing=True)
                end.record()
                end.synchronize()
                return begin.elapsed_time(end) / 1000.0

            return stop

        return start

    def start_cpu() -> Callable[[], float]:
        t0 = time.perf_counter()
        return lambda: time.perf_counter() - t0

    return start_cpu


def crops_of(loaded: Any, paths: list[Path]) -> np.ndarray:
    """The real decoder's crops of these videos for this model: [len(paths) * N, H, W, 3]."""
    from pipeline.decoders import sample_frames

    convert = loaded.preprocess.geometry.converter("swscale")
    return np.concatenate([np.stack(sample_frames(str(p), N, convert).frames) for p in paths])


def random_crops(loaded: Any, videos: int, seed: int) -> np.ndarray:
    """Distinct pictures (coarse random blocks plus noise), so that two batches' features
    differ clearly even through random weights, which barely tell noise from noise."""
    h, w = loaded.preprocess.geometry.crop
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, (videos * N, h // 32 + 1, w // 32 + 1, 3)).astype(np.int16)
    coarse = blocks.repeat(32, axis=1).repeat(32, axis=2)[:, :h, :w]
    noise = rng.integers(-20, 21, (videos * N, h, w, 3), dtype=np.int16)
    return np.clip(coarse + noise, 0, 255).astype(np.uint8)


# The checks -------------------------------------------------------------------------------


def check_cuda_vs_cpu(ctx: Context, videos: list[Path], model: str = "ViT-B-32") -> Row:
    """The same crops through the CPU (fp32) and the run's device (fp16 autocast on CUDA)."""
    import torch

    from pipeline.encoder import Encoder

    cpu = ctx.load(model, "cpu")
    crops = crops_of(cpu, videos)
    ref = Encoder(cpu, torch.device("cpu"), ctx.cores).encode(crops, N)
    dev = ctx.load(model)
    got = Encoder(dev, torch.device(ctx.device, 0) if ctx.cuda else torch.device("cpu"), ctx.cores).encode(crops, N)
    frames = compare_features(ref.frames, got.frames)
    vids = compare_features(ref.videos, got.videos)
    ok = bool(frames["finite"] and vids["finite"] and frames["cos_min"] >= COSINE_TARGET and vids["cos_min"] >= COSINE_TARGET)
    return Row(f"cuda_vs_cpu_{model}", f"cos min {frames['cos_min']:.6f} (frames), {vids['cos_min']:.6f} (videos); "
               f"finite {frames['finite'] and vids['finite']}", f"cos >= {COSINE_TARGET}, all finite", ok,
               {"frames": frames, "videos": vids, "crops": len(crops)})


def check_uneven_batches(ctx: Context, model: str = "ViT-B-32", sizes: tuple[int, ...] = (5, 64, 1, 37, 16, 3)) -> Row:
    """Batches of uneven sizes submitted back to back (each caller's array scribbled over as
    soon as submit returns, which the encoder allows), their results taken only at the end:
    each must equal the same crops encoded on their own. A staging buffer refilled while
    its copy was still in flight would give another batch's features."""
    import torch

    from pipeline.encoder import Encoder

    loaded = ctx.load(model)
    device = torch.device(ctx.device, 0) if ctx.cuda else torch.device("cpu")
    batches = [random_crops(loaded, v, seed=100 + i) for i, v in enumerate(sizes)]
    enc = Encoder(loaded, device, ctx.cores)
    launched = []
    for b in batches:
        scratch = b.copy()
        launched.append(enc.submit([scratch], N))
        scratch[:] = 255 - scratch  # the caller reuses its array at once
    together = [f.result() for f in launched]
    alone = [Encoder(loaded, device, ctx.cores).encode(b, N) for b in batches]
    worst = max(compare_features(a.frames, t.frames)["max_abs_diff"] for a, t in zip(alone, together))
    cos = min(compare_features(a.frames, t.frames)["cos_min"] for a, t in zip(alone, together))
    # What an overwrite would look like: batch i's features against batch i+1's (first video each).
    other = min(float(np.abs(alone[i].videos[0] - alone[i + 1].videos[0]).max()) for i in range(len(sizes) - 1))
    tolerance = 1e-3
    ok = worst <= tolerance and other > max(tolerance, 10 * worst)  # and an overwrite would have shown
    return Row("uneven_batches", f"max |diff| {worst:.2e} (cos min {cos:.6f}); another batch differs by {other:.4f}",
               f"|diff| <= {tolerance:g}; another batch's > {tolerance:g}", ok,
               {"sizes": list(sizes), "max_abs_diff": worst, "cos_min": cos, "other_batch_min_diff": other})


def check_encode_fps(ctx: Context, model: str, videos: int = 64, seconds: float = 3.0) -> Row:
    """Encoder.submit frames/s (pinned staging, copy stream, fp16 autocast) beside the
    model alone on crops already on the device: the ceiling the encoder's feed is judged by."""
    import torch

    from pipeline.encoder import Encoder

    loaded = ctx.load(model)
    device = torch.device(ctx.device, 0) if ctx.cuda else torch.device("cpu")
    crops = random_crops(loaded, videos, seed=7)
    clock = timer(ctx.cuda)

    enc = Encoder(loaded, device, ctx.cores)
    enc.encode(crops, N)  # warm-up: kernels chosen, buffers pinned
    from bench import keep_encoding

    stop = clock()
    encoder_fps = keep_encoding(enc, crops, N, seconds) / stop()

    x = torch.from_numpy(crops).to(device)
    with torch.inference_mode(), torch.autocast(device_type="cuda", dtype=torch.float16, enabled=ctx.cuda):
        loaded.encode(x)
        frames, wall = 0, time.perf_counter()
        stop = clock()
        while time.perf_counter() - wall < seconds:
            loaded.encode(x)
            frames += len(crops)
        ceiling_fps = frames / stop()
    del x, enc, loaded
    ratio = encoder_fps / ceiling_fps
    return Row(f"encode_fps_{model}", f"{encoder_fps:.0f} frames/s, model alone {ceiling_fps:.0f} ({ratio:.2f})",
               ">= 0.90 of the model alone", ratio >= 0.90,
               {"encoder_fps": encoder_fps, "model_only_fps": ceiling_fps, "ratio": ratio,
                "batch_frames": len(crops), "fp16": ctx.cuda})


def check_oom_halving(ctx: Context, model: str = "ViT-B-32", videos: int = 256) -> Row:
    """Cap the process's CUDA memory so that `videos` videos do not fit but a quarter do:
    the encoder must halve until it fits, keep that size, and give the uncapped features."""
    import torch

    from pipeline.encoder import Encoder

    if not ctx.cuda:
        return Row("oom_halving", "n/a on the CPU (tests/faults/test_oom.py covers it there)", "halved, same features", None)
    device = torch.device("cuda", 0)
    loaded = ctx.load(model)
    crops = random_crops(loaded, videos, seed=3)
    ref = Encoder(loaded, device).encode(crops, N)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    probe = 16
    Encoder(loaded, device).encode(crops[: probe * N], N)
    per_video = (torch.cuda.max_memory_allocated(device) - base) / probe
    total = torch.cuda.get_device_properties(device).total_memory
    allowed = base + per_video * videos / 3  # the whole batch needs ~3x this; a quarter fits
    torch.cuda.empty_cache()
    try:
        torch.cuda.set_per_process_memory_fraction(min(1.0, allowed / total), device)
        enc = Encoder(loaded, device)
        got = enc.encode(crops, N)
        kept = enc.max_videos
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
        torch.cuda.empty_cache()
    same = compare_features(ref.frames, got.frames)
    ok = kept is not None and kept < videos and same["finite"] and same["cos_min"] >= 0.9999
    return Row("oom_halving", f"{videos} videos -> batch {kept}; cos min {same['cos_min']:.6f} to uncapped",
               "halved, kept, cos >= 0.9999", ok,
               {"videos": videos, "kept_batch": kept, "per_video_mb": per_video / 2**20, "cap_mb": allowed / 2**20, **same})


def nvdec_against_cpu(video: str, geometry: Any) -> tuple[Any, Any, list[str], bool, int]:
    """One file through the CPU decoder and through nvdec (run by check_nvdec in a fresh
    process): (cpu Sampled, nvdec Sampled, each frame's pixel format as nvdec decoded it,
    whether its hwaccel opened, its per-video fallbacks to the CPU)."""
    from pipeline.decoders import get_decoder
    from pipeline.samplers import get_sampler

    convert = geometry.converter("swscale")
    formats: list[str] = []

    def noting(frame: Any) -> Any:
        formats.append(frame.format.name)
        return convert(frame)

    sampler = get_sampler("exact")(N)
    cpu = get_decoder("cpu")(1).sample(video, sampler, convert)
    nv = get_decoder("nvdec")(1, 0)
    gpu = nv.sample(video, sampler, noting)
    return cpu, gpu, formats, nv.hwaccel is not None, nv.fallbacks


def check_nvdec(ctx: Context, video: Path, codec: str) -> Row:
    """nvdec's frames against the CPU decoder's on one file: same indices, pixel difference
    (expected 0), and the share that came from the GPU (the frame's format before conversion)."""
    from pipeline.decoders import as_a_worker

    if not ctx.cuda:
        return Row(f"nvdec_{codec}", "n/a on the CPU", "pixel diff 0, GPU share 1.0", None)
    # Decoded as a run's worker decodes: in a process where torch has not used the GPU
    # (this one has, and NVDEC could not share its context here).
    cpu, gpu, formats, opened, fallbacks = as_a_worker(nvdec_against_cpu, str(video), ctx.geometry("ViT-B-32"))
    a, b = np.stack(cpu.frames).astype(np.int16), np.stack(gpu.frames).astype(np.int16)
    diff = np.abs(a - b)
    share = sum(f in GPU_PIXEL_FORMATS for f in formats) / max(1, len(formats))
    same_idx = cpu.indices == gpu.indices
    ok = same_idx and int(diff.max()) == 0 and share == 1.0
    return Row(f"nvdec_{codec}", f"indices {'same' if same_idx else 'DIFFER'}, pixel diff max {int(diff.max())} "
               f"mean {float(diff.mean()):.3f}, GPU share {share:.2f} ({','.join(sorted(set(formats)))})",
               "same indices, diff 0, GPU share 1.0", ok,
               {"indices_cpu": cpu.indices, "indices_nvdec": gpu.indices, "pixel_diff_max": int(diff.max()),
                "pixel_diff_mean": float(diff.mean()), "gpu_share": share, "formats": sorted(set(formats)),
                "hwaccel_opened": opened, "fallbacks": fallbacks,
                "decoded_cpu": cpu.decoded, "decoded_nvdec": gpu.decoded})


# End to end -------------------------------------------------------------------------------


class Utilisation:
    """nvidia-smi sampling GPU and decoder utilisation while a run goes (every 200 ms)."""

    def __init__(self, enabled: bool) -> None:
        self.samples: list[tuple[float, float]] = []
        self.error: str | None = None
        self._proc: subprocess.Popen | None = None
        self._dmon = False
        if enabled and shutil.which("nvidia-smi"):
            query = ["nvidia-smi", "--query-gpu=utilization.gpu,utilization.decoder", "--format=csv,noheader,nounits", "-i", "0"]
            probe = subprocess.run(query, capture_output=True, text=True, timeout=30)
            # Drivers without the decoder field: dmon's sm and dec columns, once a second.
            self._dmon = probe.returncode != 0
            cmd = ["nvidia-smi", "dmon", "-s", "u", "-d", "1", "-i", "0"] if self._dmon else [*query, "-lms", "200"]
            self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        elif enabled:
            self.error = "nvidia-smi not found"

    def stop(self) -> dict[str, float | None | str]:
        if self._proc is not None:
            self._proc.terminate()
            out, _ = self._proc.communicate(timeout=10)
            self.samples, self.error = parse_utilisation(out, self._dmon)
        def stat(i: int, fn: Callable[[list[float]], float]) -> float | None:
            return round(fn([s[i] for s in self.samples]), 1) if self.samples else None
        return {"gpu_util_mean": stat(0, np.mean), "gpu_util_max": stat(0, max), "dec_util_mean": stat(1, np.mean),
                "dec_util_max": stat(1, max), "samples": len(self.samples), "smi_error": self.error}


def parse_utilisation(out: str, dmon: bool) -> tuple[list[tuple[float, float]], str | None]:
    """(GPU %, decoder %) samples from nvidia-smi's CSV query output, or from `dmon -s u`
    (columns named by its `# gpu sm mem enc dec` header); the first unreadable line, if any."""
    samples: list[tuple[float, float]] = []
    error = None
    names: list[str] = []
    for line in out.splitlines():
        if not line.strip():
            continue
        if dmon and line.startswith("#"):
            names = names or line.lstrip("#").split()
            continue
        parts = line.split() if dmon else [p.strip() for p in line.split(",")]
        try:
            if dmon:
                row = dict(zip(names, parts))
                samples.append((float(row["sm"]), float(row["dec"])))
            else:
                samples.append((float(parts[0]), float(parts[1])))
        except (ValueError, IndexError, KeyError):
            error = error or line.strip()[:200]
    return samples, error


@dataclass
class JobRun:
    """One real `cli.py run` on a copy of the job, and what it left."""

    args: list[str]
    code: int
    wall_s: float
    videos_per_s: float  # the run's own figure (after its model load)
    run_done: int  # videos this run committed (side by side: its share)
    done: int
    failed: int
    features: dict[str, np.ndarray]
    util: dict[str, Any]
    log: str
    stderr: str


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True,
                          timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def scan_job(videos: Path, out: Path, model: str, pretrained: str) -> Path:
    proc = cli("scan", "--video-dir", str(videos), "--output-dir", str(out), "--model", model, "--pretrained", pretrained)
    if proc.returncode:
        raise RuntimeError(f"scan failed: {proc.stderr.strip()[-500:]}")
    return out


RATE = re.compile(r"run finished: (\d+) done, (\d+) failed, \d+ retries, ([\d.]+) videos/s")


def run_copies(template: Path, where: Path, runs: list[list[str]], sample: bool = False) -> list[JobRun]:
    """Run each argument list at once on one fresh copy of the job (several lists: side by
    side, on the same manifest); returns each run and its share of the job."""
    out = where
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(template, out)
    util = Utilisation(sample)
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "run", "--output-dir", str(out), *args],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONUNBUFFERED="1")) for args in runs]
    outputs = [p.communicate(timeout=600) for p in procs]
    wall = time.perf_counter() - start
    used = util.stop()
    from pipeline.reader import load_features

    st = json.loads(cli("status", "--output-dir", str(out), "--json").stdout)
    feats = load_features(out)
    by_path = {p: f for p, f in zip(feats.paths, feats.features)}
    logs = "\n".join(p.read_text(errors="replace") for p in sorted((out / "logs").glob("run-*.log")))
    results = []
    for args, p, (_stdout, err) in zip(runs, procs, outputs):
        m = RATE.search(err)
        results.append(JobRun(args, p.returncode, wall, float(m.group(3)) if m else 0.0, int(m.group(1)) if m else 0,
                              st["done"], st["failed"], by_path, used, logs, err))
    return results


def same_job(ref: JobRun, got: JobRun) -> dict[str, Any]:
    """Did a run leave what the CPU run left: the same done and failed counts, the same
    videos, and features within fp16's distance of the CPU's?"""
    paths = sorted(ref.features) == sorted(got.features)
    common = sorted(set(ref.features) & set(got.features))
    feats = compare_features(np.array([ref.features[p] for p in common]), np.array([got.features[p] for p in common])) \
        if common else {"finite": True, "cos_min": float("nan"), "max_abs_diff": float("nan")}
    ok = (ref.done, ref.failed) == (got.done, got.failed) and paths and bool(feats["finite"]) and \
        feats["cos_min"] >= COSINE_TARGET and got.code == 0
    return {"ok": bool(ok), "done": got.done, "failed": got.failed, "ref_done": ref.done, "ref_failed": ref.failed,
            "same_paths": paths, **feats}


def e2e_row(name: str, ref: JobRun, runs: list[JobRun], expect_devices: list[str] | None = None) -> Row:
    """`expect_devices`: the devices the run's engines must name in the log, one entry per
    engine (`--gpu all` on n GPUs: cuda:0 to cuda:n-1; `--gpu 0,0`: cuda:0 twice)."""
    same = same_job(ref, runs[0])
    ok = same["ok"] and all(r.code == 0 for r in runs)
    on = None
    if expect_devices is not None:
        on = re.findall(r"run \S+ on (\S+):", runs[0].log)
        ok = ok and sorted(on) == sorted(expect_devices)
    vps = (same["done"] + same["failed"]) / runs[0].wall_s
    u = runs[0].util
    util = (f", GPU {u['gpu_util_mean']}% (max {u['gpu_util_max']}), decoder {u['dec_util_mean']}% "
            f"(max {u['dec_util_max']})") if u.get("gpu_util_mean") is not None else ""
    return Row(name, f"{same['done']} done {same['failed']} failed, cos min {same['cos_min']:.5f}, "
               f"{vps:.1f} videos/s wall ({', '.join(f'{r.videos_per_s:.1f}' for r in runs)} by the run){util}",
               f"= CPU run ({ref.done} done {ref.failed} failed), cos >= {COSINE_TARGET}", ok,
               {**same, "wall_s": runs[0].wall_s, "videos_per_s_wall": vps,
                "videos_per_s_run": [r.videos_per_s for r in runs], "done_by_run": [r.run_done for r in runs],
                "args": [r.args for r in runs],
                "devices_in_log": on, "exit_codes": [r.code for r in runs], **u,
                "stderr_tail": [r.stderr.strip().splitlines()[-3:] for r in runs]})


def e2e_checks(ctx: Context, videos: Path) -> list[Callable[[], Row]]:
    """The end-to-end checks, sharing one scanned job and one CPU reference run."""
    state: dict[str, Any] = {}
    workers = max(1, ctx.cores // 2)  # the CPU run's encoder gets the other half of the cores

    def template() -> Path:
        if "template" not in state:
            state["template"] = scan_job(videos, ctx.work / "e2e-template", *ctx.model_args("ViT-B-32"))
        return state["template"]

    def reference() -> JobRun:
        if "ref" not in state:
            state["ref"] = run_copies(template(), ctx.work / "e2e-cpu", [["--gpu", "cpu", "--num-workers", str(workers)]])[0]
            if state["ref"].code:
                raise RuntimeError(f"the CPU reference run failed: {state['ref'].stderr.strip()[-300:]}")
        return state["ref"]

    def one(name: str, args: list[list[str]], devices: list[str] | None = None) -> Callable[[], Row]:
        def check() -> Row:
            ref = reference()
            return e2e_row(name, ref, run_copies(template(), ctx.work / f"e2e-{name}", args, sample=ctx.cuda), devices)
        check.__name__ = name
        return check

    if not ctx.cuda:  # the dry run: the comparison machinery, on two CPU engines
        return [one("e2e_cpu_two_engines", [["--gpu", "cpu,cpu", "--num-workers", "2"]])]
    import torch

    mixed_cpu = max(1, ctx.cores - 4)
    gpu0, every = ["cuda:0"], [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [
        one("e2e_gpu_0", [["--gpu", "0"]], gpu0),
        one("e2e_gpu_0_nvdec", [["--gpu", "0", "--decoder", "nvdec"]], gpu0),
        one("e2e_gpu_0,0", [["--gpu", "0,0"]], gpu0 * 2),
        one("e2e_gpu_all", [["--gpu", "all"]], every),
        one("e2e_gpu_auto", [["--gpu", "auto"]], gpu0),
        # No mixed decoder in the product: CPU and NVDEC decoding together is two runs of one job.
        one("e2e_cpu_and_nvdec_side_by_side", [["--gpu", "0", "--num-workers", str(mixed_cpu), "--cores", str(mixed_cpu)],
                                               ["--gpu", "0", "--decoder", "nvdec", "--num-workers", "4", "--cores", "4"]]),
    ]


# Videos -------------------------------------------------------------------------------------


def _make(args: tuple[str, Any, int]) -> str:
    from bench.throughput import textured
    from pipeline.samples import make_video

    path, spec, salt = args
    make_video(Path(path), spec, lambda k, w, h: textured(k + 37 * salt, w, h))
    return path


def make_videos(ctx: Context) -> tuple[dict[str, Path], Path]:
    """The nvdec files (H.264 with B-frames, HEVC, VP9) and the end-to-end job's folder:
    distinct camera-like 1080p clips, linked several times over, plus two broken files."""
    from pipeline.samples import Spec

    x265 = (("preset", "ultrafast"), ("x265-params", "log-level=error"))
    vp9 = (("deadline", "realtime"), ("cpu-used", "8"))
    w, h, frames = (1280, 720, 60) if ctx.cuda else (160, 96, 12)
    codecs = {
        "h264": Spec("c.mp4", frames, w, h, fps=30, gop=30, bframes=3),
        "hevc": Spec("c.mp4", frames, w, h, codec="libx265", fps=30, gop=30, options=x265),
        "vp9": Spec("c.webm", frames, w, h, codec="libvpx-vp9", fps=30, gop=30, options=vp9),
    }
    distinct, replicas = (16, 12) if ctx.cuda else (3, 2)
    clip = Spec("v.mp4", 240, 1920, 1080, fps=30, gop=250, bframes=3) if ctx.cuda else Spec("v.mp4", 15, 128, 96)
    todo = [(str(ctx.work / "codecs" / f"{name}{Path(s.name).suffix}"), s, 1000 + i) for i, (name, s) in enumerate(codecs.items())]
    todo += [(str(ctx.work / "distinct" / f"clip{i:02d}.mp4"), clip, i) for i in range(distinct)]
    # spawn, not fork: this process has asked CUDA for its devices already
    with ProcessPoolExecutor(max(1, min(ctx.cores, len(todo))), mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_make, todo))
    job = ctx.work / "e2e-videos"
    job.mkdir(parents=True, exist_ok=True)
    for r in range(replicas):
        for i in range(distinct):
            (job / f"r{r:02d}_clip{i:02d}.mp4").symlink_to(ctx.work / "distinct" / f"clip{i:02d}.mp4")
    (job / "broken_empty.mp4").write_bytes(b"")
    (job / "broken_text.mp4").write_text("not a video\n")
    return {name: Path(todo[i][0]) for i, name in enumerate(codecs)}, job


# The run ------------------------------------------------------------------------------------


def guarded(name: str, fn: Callable[[], Row | list[Row]]) -> list[Row]:
    """A check's rows, or one failed row with its error line: one check never stops the rest."""
    start = time.perf_counter()
    try:
        got = fn()
        rows = got if isinstance(got, list) else [got]
    except Exception as e:  # noqa: BLE001 - recorded, and the next check runs
        line = " ".join(f"{type(e).__name__}: {e}".split())[:300]
        rows = [Row(name, "error", "-", False, {"traceback": traceback.format_exc()[-2000:]}, line)]
    for r in rows:
        r.figures.setdefault("seconds", round(time.perf_counter() - start, 2))
    return rows


def table(rows: list[Row]) -> str:
    lines = ["check | pass | value | target", "--- | --- | --- | ---"]
    for r in rows:
        mark = "-" if r.passed is None else ("PASS" if r.passed else "FAIL")
        lines.append(f"{r.name} | {mark} | {r.error or r.value} | {r.target}")
    return "\n".join(lines)


def plan(ctx: Context) -> list[tuple[str, Callable[[], Row | list[Row]]]]:
    """Every check, in the order they run (cheap and decisive first)."""
    codecs, job = make_videos(ctx)
    sample = sorted((ctx.work / "distinct").glob("*.mp4"))[:4] + list(codecs.values())
    models = ("ViT-B-32", "ViT-L-14") if ctx.cuda else ("ViT-B-32",)
    checks: list[tuple[str, Callable[[], Row | list[Row]]]] = [
        ("cuda_vs_cpu", lambda: check_cuda_vs_cpu(ctx, sample)),
        ("uneven_batches", lambda: check_uneven_batches(ctx)),
        *((f"encode_fps_{m}", (lambda m=m: check_encode_fps(ctx, m, seconds=3.0 if ctx.cuda else 1.0))) for m in models),
        ("oom_halving", lambda: check_oom_halving(ctx)),
        *((f"nvdec_{c}", (lambda c=c, p=p: check_nvdec(ctx, p, c))) for c, p in codecs.items()),
    ]
    return checks + [(f.__name__, f) for f in e2e_checks(ctx, job)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Measure every GPU path of the product (make gpu-check).")
    ap.add_argument("--cpu", action="store_true", help="dry run: the device-agnostic checks on the CPU, tiny CLIP")
    ap.add_argument("--only", default="", help="comma-separated check names (prefixes): run only these")
    ap.add_argument("--json", default=None, help="write the JSON here (default bench/results/gpu-check-TIME.json)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder (videos, jobs, checkpoints)")
    args = ap.parse_args(argv)

    import warnings

    import torch

    with warnings.catch_warnings():  # a driver too old for this torch warns; the line below says it all
        warnings.simplefilter("ignore")
        has_cuda = torch.cuda.is_available()
    if not args.cpu and not has_cuda:
        print(NO_GPU, file=sys.stderr)
        return 1
    from pipeline.samples import make_tiny_clip
    from pipeline.settings import available_cores

    work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    ctx = Context("cpu" if args.cpu else "cuda", work, make_tiny_clip(work / "tiny"), available_cores())
    began = time.perf_counter()
    rows: list[Row] = []
    try:
        wanted = [w for w in args.only.split(",") if w]
        try:
            checks = plan(ctx)
        except Exception as e:  # noqa: BLE001 - no videos: every check would fail the same way
            checks = []
            rows += guarded("setup", lambda: (_ for _ in ()).throw(e))
        for name, fn in checks:
            if wanted and not any(name.startswith(w) for w in wanted):
                continue
            print(f"  {name} ...", flush=True)
            rows += guarded(name, fn)
            if ctx.cuda:
                torch.cuda.empty_cache()
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    seconds = time.perf_counter() - began
    env = {"torch": torch.__version__, "cuda": torch.version.cuda, "cores": ctx.cores, "device": ctx.device,
           "gpu": torch.cuda.get_device_name(0) if ctx.cuda else None}
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": round(seconds, 1), "env": env,
              "rows": [asdict(r) for r in rows]}
    print()
    print(table(rows))
    failed = [r.name for r in rows if r.passed is False]
    print(f"\n{len(rows) - len(failed)} of {len(rows)} checks passed or reported, {len(failed)} failed, "
          f"in {seconds:.0f} s" + (f": {', '.join(failed)}" if failed else ""))
    report = json.loads(json.dumps(report, default=str))  # numpy scalars and paths as JSON
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
        print(f"wrote {args.json}")
    else:
        from bench import write_results

        write_results(f"gpu-check-{time.strftime('%Y%m%d-%H%M%S')}", report)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
