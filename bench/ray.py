"""Ray executor benchmark: its overhead on one node, decode scaling over nodes, object store bytes.

In one run, so the ratios are fair on a shared, noisy machine, on one decode-bound job
(360p clips, 8 exact frames, the tiny random-weight CLIP so encoding is nearly free):
- overhead: videos/s of `run --executor ray` on one node (a local Ray of this machine's
  cores) against `run` with the local executor (target: Ray at least 0.9x);
- scaling: videos/s on a `ray.cluster_utils.Cluster` with one decode node of one CPU,
  then with two (target: at least 1.7x; on a 2-core shared machine the head, the encoder
  and the driver share those cores, so expect less);
- object store bytes per video: the uint8 crops one decode task puts there (the run's
  own count), and what that is for ViT-B-32's 224x224 crops.

videos/s is each run's own figure (from its first claim to its last commit, as `run`
prints it), so Ray's and torch's start-up are not counted against either side.
Prints a table, writes bench/results/ray.json. `--quick`: fewer videos (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import write_results
from pipeline.executors.ray_cluster import executor_args, start_cluster, stop_cluster
from pipeline.samples import Spec, make_tiny_clip, make_video

ROOT = Path(__file__).resolve().parent.parent
COMMON = ["--batch-size", "8", "--shard-size", "64"]


def cli(*args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: cli {args[0]} failed:\n{proc.stderr[-3000:]}")
    return proc.stdout + proc.stderr


def fresh_job(work: Path, videos: Path, model: dict[str, str], name: str) -> Path:
    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    cli("scan", "--video-dir", str(videos), "--output-dir", str(out), "--model", model["model"],
        "--pretrained", model["pretrained"])
    return out


def timed_run(out: Path, *args: str) -> dict:
    """videos/s as the run reports it, and the Ray executor's own figures when it logged them."""
    text = cli("run", "--output-dir", str(out), *COMMON, *args)
    rate = float(re.search(r"run finished: .* ([0-9.]+) videos/s", text).group(1))
    log = "\n".join(p.read_text() for p in (out / "logs").glob("run-*.log"))
    figures = re.findall(r"figures (\{.*\})", log)
    return {"videos_per_s": rate, **({"figures": json.loads(figures[-1])} if figures else {})}


def on_cluster(decode_nodes: int, job: Path) -> dict:
    """A head (the encoder's node) and `decode_nodes` nodes of one CPU each, each its own raylet."""
    c = start_cluster(decode_nodes, 200 * 2**20)
    try:
        return timed_run(job, *executor_args(c))
    finally:
        stop_cluster(c)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer videos: a smoke run")
    args = parser.parse_args()
    count = 16 if args.quick else 48
    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        work = Path(tmp)
        videos = work / "videos"
        for i in range(count):
            make_video(videos / f"v{i:03d}.mp4", Spec("v.mp4", 60, 640, 360, fps=30, gop=250, bframes=3))
        model = make_tiny_clip(work / "model")
        local = timed_run(fresh_job(work, videos, model, "local"), "--gpu", "cpu")
        one_node = timed_run(fresh_job(work, videos, model, "ray1"), "--executor", "ray", "--ray-address", "local",
                             "--gpu", "cpu")
        one = on_cluster(1, fresh_job(work, videos, model, "nodes1"))
        two = on_cluster(2, fresh_job(work, videos, model, "nodes2"))
    figures = one_node.get("figures", {})
    decoded = max(1, figures.get("done", 0))
    per_video = figures.get("object_store_bytes", 0) / decoded
    result = {
        "videos": count, "clip": "640x360 h264, 60 frames, 8 exact frames sampled, tiny CLIP",
        "local_videos_per_s": local["videos_per_s"], "ray_one_node_videos_per_s": one_node["videos_per_s"],
        "ray_over_local": one_node["videos_per_s"] / local["videos_per_s"],
        "one_decode_node_videos_per_s": one["videos_per_s"], "two_decode_nodes_videos_per_s": two["videos_per_s"],
        "two_over_one_decode_nodes": two["videos_per_s"] / one["videos_per_s"],
        "object_store_bytes_per_video": per_video,
        "object_store_bytes_per_video_vit_b_32": 8 * 224 * 224 * 3,
        "runs": {"local": local, "ray_one_node": one_node, "one_decode_node": one, "two_decode_nodes": two},
    }
    rows = [
        ("local executor", f"{local['videos_per_s']:.2f} videos/s", ""),
        ("ray, one node (local Ray)", f"{one_node['videos_per_s']:.2f} videos/s",
         f"{result['ray_over_local']:.2f}x local (target >= 0.90)"),
        ("ray, 1 decode node x 1 CPU", f"{one['videos_per_s']:.2f} videos/s", ""),
        ("ray, 2 decode nodes x 1 CPU", f"{two['videos_per_s']:.2f} videos/s",
         f"{result['two_over_one_decode_nodes']:.2f}x one node (target >= 1.70)"),
        ("object store per video", f"{per_video / 1e3:.1f} KB", f"ViT-B-32, 8 frames: {8 * 224 * 224 * 3 / 1e6:.2f} MB"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value, note in rows:
        print(f"{name:<{width}}  {value:>16}  {note}")
    write_results("ray", result)


if __name__ == "__main__":
    main()
