"""`plot`: the feature space coloured by label, and each class's similarity to the class centroids.

Two PNGs, rendered without a display (matplotlib's Agg backend):

- `scatter_METHOD.png`: the labelled videos' features in 2-D (PCA, t-SNE from
  scikit-learn, or UMAP when umap-learn is installed), one colour per class;
- `centroid_similarity.png`: one panel per class centroid (the normalised mean of that
  class's features), with a histogram per class of the videos' cosine similarity to
  it: real against fake, side by side.

Sizes are fixed (SCATTER_SIZE, PANEL_SIZE at DPI) so the images are comparable run to run.
Large jobs are subsampled (MAX_POINTS, stratified, seeded) for the scatter: t-SNE on a
million points would take hours and draw nothing more.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.labels import Labelled, load_labels
from pipeline.probe import few_threads
from pipeline.reader import load_features

DPI = 100
SCATTER_SIZE = (8.0, 6.0)  # inches: 800 x 600 px
PANEL_SIZE = (5.0, 4.0)  # per centroid panel: 500 x 400 px
MAX_PANELS = 4
MAX_POINTS = 20000
SEED = 0
# One colour per class, in the order of Labelled.classes (a real class first, FAKE last).
COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f")
METHODS = ("pca", "tsne", "umap")
HIST_ALPHA = 0.6  # overlapping histograms stay visible; a class's bars are its colour over white at this alpha
NO_UMAP = "--method umap needs umap-learn (pip install umap-learn)"


def colour_of(index: int) -> str:
    return COLOURS[index % len(COLOURS)]


def embed(x: np.ndarray, method: str, seed: int = SEED) -> np.ndarray:
    """[n, D] -> [n, 2] by `method`; umap needs umap-learn, said in one line when missing."""
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(max(2.0, min(30.0, (len(x) - 1) / 3)))
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        try:
            import umap  # type: ignore[import-not-found]
        except ImportError:
            raise PipelineError(NO_UMAP) from None
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    raise PipelineError(f"method must be one of {', '.join(METHODS)}, got {method!r}")


def _subsample(data: Labelled, limit: int) -> np.ndarray:
    n = len(data.labels)
    if n <= limit:
        return np.arange(n)
    rng = np.random.default_rng(SEED)
    return np.sort(rng.choice(n, size=limit, replace=False))


def _save(fig: "object", path: Path) -> None:
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=DPI)  # type: ignore[attr-defined]
    os.replace(tmp, path)


def scatter(data: Labelled, method: str, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keep = _subsample(data, MAX_POINTS)
    with few_threads(len(keep)):
        xy = embed(data.features[keep], method)
    y = data.y[keep]
    fig, ax = plt.subplots(figsize=SCATTER_SIZE, dpi=DPI)
    try:
        for i, c in enumerate(data.classes):
            m = y == i
            ax.scatter(xy[m, 0], xy[m, 1], s=30 if len(keep) < 2000 else 4, c=colour_of(i), label=f"{c} ({int(m.sum())})",
                       edgecolors="none")
        ax.set_title(f"{method.upper()} of {len(keep)} video features" + (f" (of {len(data.labels)})" if len(keep) < len(data.labels) else ""))
        ax.legend(loc="best")
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


def centroid_similarity(data: Labelled, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = data.features / np.maximum(np.linalg.norm(data.features, axis=1, keepdims=True), 1e-12)
    y = data.y
    panels = data.classes[:MAX_PANELS]
    fig, axes = plt.subplots(1, len(panels), figsize=(PANEL_SIZE[0] * len(panels), PANEL_SIZE[1]), dpi=DPI, squeeze=False)
    try:
        for j, name in enumerate(panels):
            centroid = x[y == j].mean(axis=0)
            centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
            sims = x @ centroid
            ax = axes[0, j]
            bins = np.linspace(float(sims.min()), float(sims.max()) + 1e-6, 30)
            for i, c in enumerate(data.classes):
                ax.hist(sims[y == i], bins=bins, color=colour_of(i), alpha=HIST_ALPHA, label=c)
            ax.set_title(f"cosine similarity to the {name} centroid")
            ax.set_xlabel("cosine similarity")
            ax.set_ylabel("videos")
            ax.legend(loc="best")
        fig.tight_layout()
        _save(fig, path)
    finally:
        plt.close(fig)
    return path


@dataclass
class Plotted:
    files: list[Path]
    n: int
    classes: list[str]
    warnings: list[str]


def plot(output_dir: str | os.PathLike[str], db: str | None, labels: str, method: str, out: str | None = None) -> Plotted:
    """Both PNGs for the job's labelled done videos, in `out` (default OUTPUT_DIR/plots)."""
    if method not in METHODS:
        raise PipelineError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "umap" and _no_umap():  # before anything is read or written
        raise PipelineError(NO_UMAP)
    data = load_labels(labels, load_features(output_dir, db))
    if len(data.labels) < 3:
        raise PipelineError(f"{len(data.labels)} labelled videos are too few to plot")
    dest = Path(out) if out else Path(output_dir) / "plots"
    dest.mkdir(parents=True, exist_ok=True)
    files = [scatter(data, method, dest / f"scatter_{method}.png"), centroid_similarity(data, dest / "centroid_similarity.png")]
    return Plotted(files, len(data.labels), data.classes, data.warnings())


def _no_umap() -> bool:
    import importlib.util

    return importlib.util.find_spec("umap") is None
