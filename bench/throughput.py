"""Throughput benchmark (`make bench`): decode cost, frames decoded, encode, end to end.

For each corpus, in one run, so that the ratios are fair on a shared, noisy machine:
- decode: CPU seconds per video on one core (one FFmpeg thread), 8 exact frames, for a
  full decode of every frame converted to RGB (the naive way), our exact plan, the
  approximate keyframe mode, and torchcodec / decord when they are importable;
- frames decoded per frame sampled, against the floor the packet index allows (read
  independently here from the bitstream's NAL headers: which pictures are references);
- encode-only frames/s of the model on the run's device; end-to-end videos/s of a real
  `cli.py run` with default settings; pipeline efficiency = end to end / min(decode on
  all cores, encode); the same corpus through the naive baseline the original guide's
  script was (decode all, PIL, one video at a time, encode); peak RSS;
- fidelity: feature cosine of the swscale resize against open_clip's PIL path, and of
  keyframe sampling against the exact frames, plus the crops' pixel difference.

Prints a table, writes bench/results/throughput-<time>.json. Corpora are made once with
PyAV and cached in bench/cache/. `--quick` uses fewer, shorter videos (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import av
import numpy as np

from pipeline.decoders import DecodeError, sample_frames
from pipeline.decoders.pyav import PyAVDecoder, index_packets, plan_groups
from pipeline.samplers import PacketIndex, get_sampler, sample_indices
from pipeline.samples import Spec, make_tiny_clip, make_video
from pipeline.settings import available_cores

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "bench" / "cache"
RESULTS = ROOT / "bench" / "results"
REALVIDEOS = ROOT.parent / "shared" / "realvideos"
N = 8  # frames per video


@dataclass(frozen=True)
class Corpus:
    name: str
    spec: Spec
    count: int  # distinct videos


X265 = (("preset", "ultrafast"), ("x265-params", "log-level=error"))
VP9 = (("deadline", "realtime"), ("cpu-used", "8"))


def corpora(quick: bool) -> list[Corpus]:
    s = 2 if quick else 10  # seconds of video
    return [
        # DFDC-like: x264's defaults (keyint 250, 3 B-frames), 1080p30, 10 s.
        Corpus("dfdc_1080p_h264", Spec("v.mp4", 30 * s, 1920, 1080, fps=30, gop=250, bframes=3), 2 if quick else 4),
        Corpus("720p_gop30_h264", Spec("v.mp4", 30 * s, 1280, 720, fps=30, gop=30, bframes=3), 2 if quick else 4),
        Corpus("720p_60s_gop250_h264", Spec("v.mp4", 30 * s * 6, 1280, 720, fps=30, gop=250, bframes=3), 1 if quick else 2),
        Corpus("360p_h264", Spec("v.mp4", 30 * s, 640, 360, fps=30, gop=250, bframes=3), 4 if quick else 8),
        Corpus("1080p_hevc", Spec("v.mp4", 30 * s, 1920, 1080, codec="libx265", fps=30, gop=250, options=X265), 1 if quick else 2),
        Corpus("1080p_vp9", Spec("v.webm", 30 * s, 1920, 1080, codec="libvpx-vp9", fps=30, gop=250, options=VP9), 1 if quick else 2),
    ]


def textured(i: int, width: int, height: int, _cache: dict = {}) -> np.ndarray:  # noqa: B006 - a deliberate cache
    """Camera-like frames: a smooth texture panning slowly, a moving bright subject, and
    fresh sensor noise every frame. With x264's defaults this gives ~2.5 MB per 10 s of
    1080p, in line with DFDC (470 GB for 119k clips, ~4 MB each), and B-frames that cost
    about as much to decode as in real footage. (A static fine-grain texture instead
    gave 15 MB clips whose B-frames were nearly free, which flatters no one.)"""
    key = (width, height)
    if key not in _cache:
        from PIL import Image

        rng = np.random.default_rng(width * 7 + height)
        small = rng.integers(0, 256, (height // 16 + 8, width // 16 + 8, 3), dtype=np.uint8)
        big = Image.fromarray(small).resize(((width // 16 + 8) * 16, (height // 16 + 8) * 16), Image.BICUBIC)
        _cache[key] = np.asarray(big)
    texture = _cache[key]
    dx, dy = (2 * i) % 120, i % 120
    img = texture[dy : dy + height, dx : dx + width].astype(np.int16)
    r = max(8, height // 6)
    cx, cy = int(width / 2 + width / 3 * np.sin(i / 20)), int(height / 2 + height / 4 * np.cos(i / 25))
    img[max(0, cy - r) : cy + r, max(0, cx - r) : cx + r] += 60
    img += np.random.default_rng(i).integers(-2, 3, (height, width, 1), dtype=np.int16)
    return np.clip(img, 0, 255).astype(np.uint8)


def build(c: Corpus) -> list[Path]:
    folder = CACHE / f"{c.name}-{c.spec.frames}f-v2"  # v2: camera-like content
    paths = [folder / f"{c.name}_{i}{Path(c.spec.name).suffix}" for i in range(c.count)]
    for i, p in enumerate(paths):
        if not p.exists():
            print(f"  making {p.name} ...", flush=True)
            tmp = p.with_suffix(".tmp" + p.suffix)
            make_video(tmp, c.spec, lambda k, w, h, i=i: textured(k + 37 * i, w, h))
            tmp.rename(p)
    return paths


def readable_realvideos() -> list[Path]:
    out = []
    for p in sorted(REALVIDEOS.iterdir()) if REALVIDEOS.is_dir() else []:
        if p.suffix in (".tsv",):
            continue
        try:
            sample_frames(str(p), N)
            out.append(p)
        except DecodeError:
            pass
    return out


# Decode variants -------------------------------------------------------------------


def cpu_seconds(fn, path: Path, reps: int) -> float | None:
    """Median CPU seconds of fn(path); None where it cannot read the file (peers on odd files)."""
    times = []
    for _ in range(reps):
        t = time.process_time()
        try:
            fn(str(path))
        except Exception:  # noqa: BLE001 - a peer refusing a file is a result, not a crash
            return None
        times.append(time.process_time() - t)
    return statistics.median(times)


def naive_decode(path: str) -> list[np.ndarray]:
    """The original guide's way: decode every frame and convert it to RGB, keep the targets.

    (Targets come from a cheap packet count so the baseline does not also hold every
    frame in memory: 1,800 RGB frames of 720p are 5 GB, whose page faults made its
    timing swing 3x from run to run. A fair baseline, not a straw man.)
    """
    indices = sample_indices(index_packets(path).n, N)
    wanted = set(indices)
    kept = {}
    with av.open(path) as c:
        stream = next(s for s in c.streams.video)
        stream.codec_context.thread_count = 1
        for i, f in enumerate(c.decode(stream)):
            rgb = f.to_ndarray(format="rgb24")
            if i in wanted:
                kept[i] = rgb
    return [kept[i] for i in indices]


def peers() -> dict[str, object]:
    found: dict[str, object] = {}
    try:
        from torchcodec.decoders import VideoDecoder

        def tc(path: str) -> object:
            d = VideoDecoder(path, num_ffmpeg_threads=1, seek_mode="exact")
            return d.get_frames_at(sample_indices(d.metadata.num_frames, N))

        found["torchcodec_exact"] = tc
    except Exception:  # noqa: BLE001 - an optional extra
        pass
    try:
        import decord

        def dc(path: str) -> object:
            vr = decord.VideoReader(path, num_threads=1)
            return vr.get_batch(sample_indices(len(vr), N))

        found["decord"] = dc
    except Exception:  # noqa: BLE001
        pass
    return found


# The floor -------------------------------------------------------------------------


def _nal_units(data: bytes) -> list[bytes]:
    """Length-prefixed (MP4/MKV: avcC/hvcC, 4-byte lengths) NAL units of one packet."""
    units, i = [], 0
    while i + 4 <= len(data):
        size = int.from_bytes(data[i : i + 4], "big")
        units.append(data[i + 4 : i + 4 + size])
        i += 4 + size
    return units


def is_reference(codec: str, data: bytes) -> bool:
    """Does any other picture depend on this one? From the NAL headers, not the decoder."""
    for nal in _nal_units(data):
        if not nal:
            continue
        if codec == "h264" and (nal[0] & 0x1F) in (1, 5):
            return (nal[0] >> 5) & 3 != 0  # nal_ref_idc
        if codec == "hevc" and (nal[0] >> 1) & 0x3F < 32:
            t = (nal[0] >> 1) & 0x3F
            return not (t <= 14 and t % 2 == 0)  # TRAIL_N, TSA_N, STSA_N, RADL_N, RASL_N, RSV_VCL_N*
    return True


def floor_frames(path: str) -> int | None:
    """The fewest frames any exact decoder must decode for the N targets: from each
    target's keyframe to the target in decode order, reference pictures and targets."""
    index: PacketIndex = index_packets(path)
    groups = plan_groups(index, sample_indices(index.n, N))
    if groups is None:
        return None
    with av.open(path) as c:
        stream = c.streams.video[0]
        codec = stream.codec_context.name
        refs = [is_reference(codec, bytes(p)) for p in c.demux(stream) if p.size]
    needed: set[int] = set()
    for k, targets in groups:
        for pts in targets:
            j = index.position[pts]
            needed.update(i for i in range(k, j + 1) if refs[i] or i == j)
    return len(needed)


# Encoding and fidelity ---------------------------------------------------------------


def load(tiny: dict[str, str], device: str = "cpu"):
    import torch

    from pipeline.models import load_model
    from pipeline.settings import JobSettings

    return load_model(JobSettings(model=tiny["model"], pretrained=tiny["pretrained"], num_frames=N), torch.device(device))


def encode_only(loaded, device: str, videos: int = 32, seconds: float = 3.0) -> tuple[float, float]:
    """Frames/s of Encoder.submit on random crops, batches of `videos` x N frames, and the
    CPU seconds each frame took (all threads: on a CPU run, cores the decoders lose)."""
    import torch

    from pipeline.encoder import Encoder

    enc = Encoder(loaded, torch.device(device))
    h, w = loaded.preprocess.geometry.crop
    crops = np.random.default_rng(0).integers(0, 256, (videos * N, h, w, 3), dtype=np.uint8)
    enc.encode(crops, N)  # warm up
    from bench import keep_encoding

    start, cpu = time.perf_counter(), time.process_time()
    frames = keep_encoding(enc, crops, N, seconds)
    return frames / (time.perf_counter() - start), (time.process_time() - cpu) / frames


def features(loaded, crops: np.ndarray) -> np.ndarray:
    import torch

    from pipeline.encoder import Encoder

    return Encoder(loaded, torch.device("cpu")).encode(crops, N).videos[0]


def fidelity(loaded, paths: list[Path]) -> dict[str, float]:
    geo = loaded.preprocess.geometry
    cos_sws, cos_key, px_mean, px_max = [], [], [], 0.0
    for p in paths:
        pil = np.stack(sample_frames(str(p), N, geo.converter("pil")).frames)
        sws = np.stack(sample_frames(str(p), N, geo.converter("swscale")).frames)
        key = np.stack(sample_frames(str(p), N, geo.converter("swscale"), sampling="keyframes").frames)
        f_pil, f_sws, f_key = features(loaded, pil), features(loaded, sws), features(loaded, key)
        cos_sws.append(float(f_pil @ f_sws))
        cos_key.append(float(f_sws @ f_key))
        d = np.abs(pil.astype(np.int16) - sws)
        px_mean.append(float(d.mean()))
        px_max = max(px_max, float(d.max()))
    return {"swscale_vs_pil_cos_min": min(cos_sws), "swscale_vs_pil_px_mean": statistics.mean(px_mean),
            "swscale_vs_pil_px_max": px_max, "keyframes_vs_exact_cos_min": min(cos_key),
            "keyframes_vs_exact_cos_mean": statistics.mean(cos_key)}


def naive_e2e(loaded, paths: list[Path]) -> float:
    """Videos/s of the original one-shot script: one video at a time, all frames, PIL."""
    import torch
    from PIL import Image

    model, transform = loaded.module, loaded.transform
    start = time.perf_counter()
    with torch.inference_mode():
        for p in paths:
            x = torch.stack([transform(Image.fromarray(f)) for f in naive_decode(str(p))])
            f = torch.nn.functional.normalize(model.encode_image(x), dim=-1)
            torch.nn.functional.normalize(f.mean(0), dim=-1)
    return len(paths) / (time.perf_counter() - start)


# End to end through the real CLI -------------------------------------------------------


def _timed(args: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB, largest process) of one CLI command."""
    cmd = ["/usr/bin/time", "-f", "%M", sys.executable, str(ROOT / "cli.py"), *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed: {proc.stderr[-2000:]}")
    return wall, int(proc.stderr.strip().splitlines()[-1]) / 1024


def e2e(tiny: dict[str, str], paths: list[Path], replicas: int, device: str, extra: tuple[str, ...] = ()) -> dict:
    """A real scan + run on `replicas` links to each video; the run's fixed start-up cost
    (model load, spawning workers), measured by a second run with nothing left, is
    taken off so the rate is the steady state a long job sees."""
    with tempfile.TemporaryDirectory(prefix="bench-e2e-") as tmp:
        videos = Path(tmp) / "videos"
        videos.mkdir()
        for r in range(replicas):
            for p in paths:
                (videos / f"r{r}_{p.name}").symlink_to(p)
        out = Path(tmp) / "job"
        model = ["--model", tiny["model"], "--pretrained", tiny["pretrained"]]
        _timed(["scan", "--video-dir", str(videos), "--output-dir", str(out), *model])
        wall, rss = _timed(["run", "--output-dir", str(out), "--gpu", device, *extra])
        idle, _ = _timed(["run", "--output-dir", str(out), "--gpu", device, *extra])
        st = json.loads(subprocess.run([sys.executable, str(ROOT / "cli.py"), "status", "--output-dir", str(out), "--json"],
                                       capture_output=True, text=True, check=True).stdout)
        n = len(paths) * replicas
        if st["done"] != n:
            raise RuntimeError(f"end-to-end run finished {st['done']} of {n}")
        return {"videos": n, "wall_s": wall, "startup_s": idle, "videos_per_s": n / max(wall - idle, 1e-3), "peak_rss_mb": rss}


# The run --------------------------------------------------------------------------------


@dataclass
class Row:
    corpus: str
    videos: int
    decode_cpu_s: dict[str, float] = field(default_factory=dict)  # per video, one core
    unreadable: dict[str, int] = field(default_factory=dict)  # peers that failed on some files
    decoded_per_sampled: float = 0.0
    floor_per_sampled: float | None = None
    encode_fps: float = 0.0
    e2e: dict = field(default_factory=dict)
    naive_videos_per_s: float = 0.0
    efficiency: float = 0.0  # end to end / min(decode on all cores, encode): the target (a GPU run's view)
    cpu_ceiling_videos_per_s: float | None = None
    efficiency_vs_cpu_ceiling: float | None = None
    fidelity: dict = field(default_factory=dict)


def bench_corpus(
    name: str, paths: list[Path], seconds: float, tiny, loaded, encode: tuple[float, float], reps: int, device: str
) -> Row:
    encode_fps, encode_cpu = encode
    row = Row(name, len(paths), encode_fps=encode_fps)
    convert = loaded.preprocess.geometry.converter("swscale")
    exact, keyframes = get_sampler("exact")(N), get_sampler("keyframes")(N)
    planned, full = PyAVDecoder(), PyAVDecoder(plan=False)
    variants = {
        "naive_all_frames": naive_decode,
        "full_decode": lambda p: full.sample(p, exact, convert),
        "exact_plan": lambda p: planned.sample(p, exact, convert),
        "keyframes": lambda p: planned.sample(p, keyframes, convert),
        **peers(),
    }
    for label, fn in variants.items():
        got = [cpu_seconds(fn, p, reps) for p in paths]
        ok = [g for g in got if g is not None]
        if len(ok) == len(got):
            row.decode_cpu_s[label] = statistics.mean(ok)  # the corpus's cost per video
        else:
            row.unreadable[label] = len(got) - len(ok)
    decoded = [sample_frames(str(p), N, convert).decoded for p in paths]
    row.decoded_per_sampled = sum(decoded) / (N * len(paths))
    floors = [floor_frames(str(p)) for p in paths]
    if all(f is not None for f in floors):
        row.floor_per_sampled = sum(floors) / (N * len(paths))  # type: ignore[arg-type]
    # Enough copies of the corpus for ~seconds of steady decoding on all cores.
    exact = row.decode_cpu_s["exact_plan"]
    replicas = max(1, math.ceil(seconds * available_cores() / (exact * len(paths))))
    row.e2e = e2e(tiny, paths, replicas, device)
    row.naive_videos_per_s = naive_e2e(loaded, paths)
    decode_all_cores = available_cores() / exact
    row.efficiency = row.e2e["videos_per_s"] / min(decode_all_cores, encode_fps / N)
    if device == "cpu":  # decoders and the encoder share the cores: the most they can do together
        row.cpu_ceiling_videos_per_s = available_cores() / (exact + N * encode_cpu)
        row.efficiency_vs_cpu_ceiling = row.e2e["videos_per_s"] / row.cpu_ceiling_videos_per_s
    row.fidelity = fidelity(loaded, paths)
    return row


def table(rows: list[Row]) -> str:
    peer_names = sorted({k for r in rows for k in r.decode_cpu_s if k.startswith(("torchcodec", "decord"))})
    head = ["corpus", "naive s", "full s", "exact s", "keyfr s", *[f"{p} s" for p in peer_names], "dec/floor",
            "enc f/s", "e2e v/s", "naive v/s", "x naive", "effic.", "eff/cpu", "RSS MB", "cos sws", "cos key"]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        d = r.decode_cpu_s
        ratio = f"{r.decoded_per_sampled / r.floor_per_sampled:.2f}" if r.floor_per_sampled else "n/a"
        cells = [r.corpus, *(f"{d[k]:.3f}" for k in ("naive_all_frames", "full_decode", "exact_plan", "keyframes")),
                 *(f"{d[p]:.3f}" if p in d else "-" for p in peer_names), ratio, f"{r.encode_fps:.0f}",
                 f"{r.e2e['videos_per_s']:.2f}", f"{r.naive_videos_per_s:.2f}",
                 f"{r.e2e['videos_per_s'] / r.naive_videos_per_s:.1f}", f"{r.efficiency:.2f}",
                 f"{r.efficiency_vs_cpu_ceiling:.2f}" if r.efficiency_vs_cpu_ceiling else "-", f"{r.e2e['peak_rss_mb']:.0f}",
                 f"{r.fidelity['swscale_vs_pil_cos_min']:.5f}", f"{r.fidelity['keyframes_vs_exact_cos_min']:.4f}"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer, shorter videos (a smoke run)")
    ap.add_argument("--only", default="", help="comma-separated corpus names (default: all)")
    ap.add_argument("--reps", type=int, default=3, help="decode timings per video (median)")
    args = ap.parse_args(argv)
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    work = Path(tempfile.mkdtemp(prefix="bench-model-"))
    tiny = make_tiny_clip(work)
    loaded = load(tiny)
    print(f"{available_cores()} cores, device {device}, tiny CLIP (random weights), {N} frames per video", flush=True)
    encode_fps, encode_cpu = encode_only(load(tiny, device), device)
    todo = [(c.name, build(c)) for c in corpora(args.quick)]
    if REALVIDEOS.is_dir():
        todo.append(("realvideos", readable_realvideos()))
    seconds = 6.0 if args.quick else 20.0
    rows = []
    for name, paths in todo:
        if args.only and name not in args.only.split(","):
            continue
        print(f"benchmarking {name} ({len(paths)} videos) ...", flush=True)
        rows.append(bench_corpus(name, paths, seconds, tiny, loaded, (encode_fps, encode_cpu), args.reps, device))
    # Peak RSS as the job grows: the same corpus at 1x and 4x the videos, several batches each.
    small = build(corpora(args.quick)[3])
    growth = {str(len(small) * k): e2e(tiny, small, k, device, ("--batch-size", "8"))["peak_rss_mb"] for k in (8, 32)}
    report = {"when": time.strftime("%Y-%m-%d %H:%M:%S"), "cores": available_cores(), "device": device,
              "rows": [asdict(r) for r in rows], "peak_rss_mb_by_job_size": growth}
    if device == "cuda":
        report["gpu"] = gpu_figures(tiny, build(corpora(args.quick)[0]))
    print()
    print(table(rows))
    print("\npeak RSS of a run (batch 8), 360p corpus: " + ", ".join(f"{k} videos {v:.0f} MB" for k, v in growth.items()))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"throughput-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out.relative_to(ROOT)}")
    return 0


def gpu_figures(tiny: dict[str, str], dfdc: list[Path]) -> dict:
    """On a CUDA machine: ViT-B-32 encode-only frames/s (fp16 autocast) and end to end
    with and without --decoder nvdec (random weights: throughput does not depend on them)."""
    import torch

    from pipeline.models import load_model
    from pipeline.settings import JobSettings

    vit = load_model(JobSettings(model="ViT-B-32", pretrained="none", num_frames=N), torch.device("cuda"))
    out = {"vit_b32_encode_fps": encode_only(vit, "cuda", videos=128)[0]}
    out["e2e_cpu_decode"] = e2e(tiny, dfdc, 6, "0")
    out["e2e_nvdec"] = e2e(tiny, dfdc, 6, "0", ("--decoder", "nvdec"))
    return out


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
