"""`make demo`'s helpers: make sample videos and pick weights; then show the result.

The demo runs the real commands (see the Makefile); this module only prepares their
input and prints what came out, loading the files the way the original guide did.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipeline.samples import make_corpus

MODEL, TAG = "ViT-B-32", "openai"


def weights_available() -> bool:
    """True if the default weights are cached or the hub can be reached to fetch them."""
    import open_clip
    from huggingface_hub import try_to_load_from_cache

    from pipeline.models.open_clip import hub_reachable

    cfg = open_clip.get_pretrained_cfg(MODEL, TAG)
    hub = cfg.get("hf_hub", "").rstrip("/")
    for name in ("open_clip_model.safetensors", "open_clip_pytorch_model.bin"):
        if hub and isinstance(try_to_load_from_cache(hub, name), str):
            return True
    return hub_reachable()


def prepare(folder: Path) -> None:
    make_corpus(folder / "videos")
    if weights_available():
        choice = TAG
        print(f"demo: {MODEL} with the {TAG} weights (downloaded once, then cached)")
    else:
        choice = "none"
        print(f"demo: offline, so {MODEL} runs with random weights (--pretrained none); all else is real")
    (folder / "pretrained.txt").write_text(choice)


def show(output_dir: Path) -> None:
    # Exactly how the original guide's snippet loads the export.
    features = np.load(output_dir / "features.npy")
    with open(output_dir / "video_paths.txt") as f:
        video_paths = [line.rstrip("\n") for line in f]
    print(f"features.npy: {features.shape} {features.dtype}; {len(video_paths)} paths")
    sims = features @ features.T
    for i, path in enumerate(video_paths):
        j = int(np.argsort(-sims[i])[1]) if len(video_paths) > 1 else i
        print(f"  {Path(path).name:<22} |f|={np.linalg.norm(features[i]):.3f}  nearest: {Path(video_paths[j]).name} ({sims[i, j]:.3f})")


if __name__ == "__main__":
    step, where = sys.argv[1], Path(sys.argv[2])
    prepare(where) if step == "prepare" else show(where)
