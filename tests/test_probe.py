"""probe, plot and report on a real job whose labels follow a visual property (blue REAL clips, red
FAKE ones, each fake with its original), DFDC's metadata.json matched within its part, the grouped
split, chance on shuffled labels, the PNGs' pixels, the report's content, and bad input."""

from __future__ import annotations

import base64
import csv
import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.labels import Labelled, load_labels
from pipeline.reader import Features, load_features
from pipeline.samples import Spec, frame_image, make_video
from tests.conftest import cli, model_args
from tests.test_cli import main_in_process, one_line_error  # noqa: F401 - main_in_process is a fixture

BLUE, RED = (0, 0, 255), (255, 0, 0)
PARTS = 2
PER_PART = 8  # c0..c7 in each part; the same names carry opposite labels in the two parts


def truth(part: int, i: int) -> str:
    """part 0: c0-c3 REAL, c4-c7 FAKE; part 1 the other way round, so matching by name alone fails."""
    return "REAL" if (i < PER_PART // 2) == (part == 0) else "FAKE"


def make_dfdc_like(root: Path) -> Path:
    """DFDC's layout: part folders, each with its metadata.json; a fake's original is in its part."""
    for part in range(PARTS):
        folder = root / f"dfdc_train_part_{part}"
        meta = {}
        reals = [i for i in range(PER_PART) if truth(part, i) == "REAL"]
        for i in range(PER_PART):
            label = truth(part, i)
            tint = np.array(BLUE if label == "REAL" else RED)

            def picture(f: int, w: int, h: int, shift: int = 9 * i + 5 * part, tint: np.ndarray = tint) -> np.ndarray:
                return (frame_image(f + shift, w, h) * 0.5 + tint * 0.5).astype(np.uint8)

            make_video(folder / f"c{i}.mp4", Spec(f"c{i}.mp4", frames=5, width=48, height=32), picture)
            original = None if label == "REAL" else f"c{reals[i % len(reals)]}.mp4"
            meta[f"c{i}.mp4"] = {"label": label, "split": "train", "original": original}
        (folder / "metadata.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory, tiny_model: dict[str, str]) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("probe")
    videos = make_dfdc_like(root / "videos")
    out = root / "job"
    cli("extract", "--video-dir", str(videos), "--output-dir", str(out), *model_args(tiny_model),  # one process
        "--num-frames", "3", "--gpu", "cpu", "--num-workers", "1")
    return {"out": out, "videos": videos}


def colour_of_path(path: str) -> str:
    p = Path(path)
    return truth(int(p.parent.name.rsplit("_", 1)[1]), int(p.stem[1:]))


def test_probe_finds_the_visual_property(job, main_in_process) -> None:
    out = job["out"]
    proc = main_in_process("probe", "--output-dir", str(out), "--labels", str(job["videos"]), "--folds", "4", "--json")
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["counts"] == {"REAL": 8, "FAKE": 8} and r["classes"] == ["REAL", "FAKE"]
    assert len(r["folds"]) == 4 and sum(f["n"] for f in r["folds"]) == 16
    assert r["overall"]["auc"] >= 0.9, r["overall"]
    assert r["overall"]["accuracy"] >= 0.85 and np.sum(r["overall"]["confusion"]) == 16
    assert (out / "probe" / "classifier.joblib").is_file() and (out / "probe" / "metrics.json").is_file()
    # The saved classifier scores the job's videos, in a real process.
    pred = out / "probe" / "scored.csv"
    cli("probe", "--output-dir", str(out), "--predict", "--out", str(pred))
    rows = list(csv.DictReader(pred.open()))
    assert len(rows) == 16
    assert sum(row["label"] == colour_of_path(row["path"]) for row in rows) >= 15


def test_grouped_split_keeps_a_fake_with_its_original(job) -> None:
    from pipeline.probe import train

    out = job["out"]
    for kind in ("logreg", "svm", "mlp"):
        r = train(out, None, str(job["videos"]), kind, 4)
        assert r.overall["auc"] >= 0.9, (kind, r.overall)
    data = load_labels(str(job["videos"]), load_features(out))
    # DFDC's labels matched within each part (the same names carry opposite labels in the two parts).
    assert data.labels == [colour_of_path(p) for p in data.paths]
    fold_of = {vid: k for k, test in enumerate(r.test_sets) for vid in test}
    assert sorted(fold_of) == sorted(data.ids)
    by_name = {(Path(p).parent.name, Path(p).name): vid for vid, p in zip(data.ids, data.paths)}
    pairs = 0
    for part in range(PARTS):
        meta = json.loads((job["videos"] / f"dfdc_train_part_{part}" / "metadata.json").read_text())
        for name, entry in meta.items():
            if entry["original"]:
                key = f"dfdc_train_part_{part}"
                assert fold_of[by_name[key, name]] == fold_of[by_name[key, entry["original"]]], (part, name)
                pairs += 1
    assert pairs == 8


def _synthetic(n: int, dim: int, labels: np.ndarray, groups: list[str]) -> Labelled:
    x = np.random.default_rng(1).normal(size=(n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    names = ["REAL", "FAKE"]
    return Labelled(list(range(n)), [f"v{i}.mp4" for i in range(n)], [names[c] for c in labels], groups, x,
                    names, 0, 0, "synthetic")


def test_shuffled_labels_score_about_chance() -> None:
    """Features that carry no label: every classifier's out-of-fold AUC stays near 0.5."""
    from pipeline.probe import cross_validate, folds_for

    n = 240
    labels = np.random.default_rng(2).permutation(np.arange(n) % 2)
    groups = [f"g{i // 3}" for i in range(n)]  # groups of three, as a fake, its original and another fake
    data = _synthetic(n, 32, labels, groups)
    for kind in ("logreg", "svm", "mlp"):
        _, overall, _ = cross_validate(data, kind, 5)
        assert 0.35 <= overall["auc"] <= 0.65, (kind, overall)
    for train_idx, test_idx in folds_for(data.y, groups, 5):
        assert not {groups[i] for i in train_idx} & {groups[i] for i in test_idx}


def _feats(paths: list[str]) -> Features:
    return Features(np.eye(len(paths), 4, dtype=np.float32), paths, list(range(1, len(paths) + 1)))


def test_dfdc_metadata_is_matched_within_its_part(tmp_path: Path) -> None:
    meta0 = {"a.mp4": {"label": "REAL", "original": None}, "b.mp4": {"label": "FAKE", "original": "a.mp4"}}
    meta1 = {"a.mp4": {"label": "FAKE", "original": "c.mp4"}, "c.mp4": {"label": "REAL", "original": None}}
    (tmp_path / "dfdc_train_part_0").mkdir()
    (tmp_path / "dfdc_train_part_0" / "metadata.json").write_text(json.dumps(meta0))
    with zipfile.ZipFile(tmp_path / "dfdc_train_part_1.zip", "w") as z:  # a part still in its zip
        z.writestr("dfdc_train_part_1/metadata.json", json.dumps(meta1))
    feats = _feats([
        "/x/dfdc_train_part_0/a.mp4", "/x/dfdc_train_part_0/b.mp4",
        "/y/dfdc_train_part_1.zip::dfdc_train_part_1/a.mp4", "/y/dfdc_train_part_1.zip::dfdc_train_part_1/c.mp4",
        "/z/elsewhere/c.mp4",  # in no part folder: not matched
        "/x/dfdc_train_part_0/c.mp4",  # its part's metadata does not list it: not matched
    ])
    data = load_labels(str(tmp_path), feats)
    assert data.ids == [1, 2, 3, 4] and data.labels == ["REAL", "FAKE", "FAKE", "REAL"]
    assert data.groups == ["dfdc_train_part_0/a.mp4", "dfdc_train_part_0/a.mp4",
                           "dfdc_train_part_1/c.mp4", "dfdc_train_part_1/c.mp4"]
    assert data.unlabelled == 2 and data.unmatched_labels == 0
    one = load_labels(str(tmp_path / "dfdc_train_part_0" / "metadata.json"), feats)  # one part's file alone
    assert one.ids == [1, 2] and one.unmatched_labels == 0
    # A flattened copy (no part folder in common): matched by names unique across the parts.
    flat = load_labels(str(tmp_path), _feats(["/flat/b.mp4", "/flat/c.mp4", "/flat/a.mp4"]))
    assert flat.ids == [1, 2] and flat.labels == ["FAKE", "REAL"] and flat.unlabelled == 1


def test_csv_and_folder_labels(job, tmp_path: Path) -> None:
    feats = load_features(job["out"])
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerow([feats.paths[0], "x"])  # as the job names it
        w.writerow([Path(feats.paths[1]).name + "-no", "y"])  # names no video
        w.writerow(["/elsewhere/" + Path(feats.paths[3]).parent.name + "/nope.mp4", "y"])
        w.writerow([feats.paths[2], "y"])
    data = load_labels(str(labels), feats)
    assert data.ids == feats.ids[:1] + feats.ids[2:3] and data.labels == ["x", "y"] and data.unmatched_labels == 2
    folders = load_labels("folders", feats)
    assert folders.labels == [Path(p).parent.name for p in feats.paths] and len(folders.classes) == PARTS


def _pixels_near(png: Path, colour: tuple[float, float, float], tolerance: float = 40) -> int:
    rgb = np.asarray(Image.open(png).convert("RGB"), dtype=np.float32)
    return int((np.abs(rgb - np.array(colour)).max(axis=-1) < tolerance).sum())


def _over_white(hex_colour: str, alpha: float) -> tuple[float, float, float]:
    from matplotlib.colors import to_rgb

    return tuple(255 * (alpha * c + (1 - alpha)) for c in to_rgb(hex_colour))  # type: ignore[return-value]


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_plots_are_images_of_both_classes(job, tmp_path: Path, main_in_process, method: str) -> None:
    from pipeline import plots

    out = tmp_path / "plots"
    proc = main_in_process("plot", "--output-dir", str(job["out"]), "--labels", str(job["videos"]),
                           "--method", method, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    scatter, hist = out / f"scatter_{method}.png", out / "centroid_similarity.png"
    assert Image.open(scatter).size == (800, 600) and Image.open(hist).size == (1000, 400)
    for png, alpha in ((scatter, 1.0), (hist, plots.HIST_ALPHA)):
        rgb = np.asarray(Image.open(png).convert("RGB"))
        assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 10  # not blank
        for i in range(2):  # both classes drawn, each in its colour (the bars: over white at their alpha)
            assert _pixels_near(png, _over_white(plots.colour_of(i), alpha)) > 100, (png.name, i)


def test_report_holds_the_counts_probe_and_plots(job, tmp_path: Path, main_in_process) -> None:
    from pipeline.plots import plot
    from pipeline.probe import train

    out = tmp_path / "job"
    shutil.copytree(job["out"], out)  # this test's own probe and plots
    shutil.rmtree(out / "probe", ignore_errors=True)
    shutil.rmtree(out / "plots", ignore_errors=True)
    train(out, None, str(job["videos"]), "logreg", 4)
    drawn = plot(out, None, str(job["videos"]), "pca").files
    page = tmp_path / "r.html"
    assert main_in_process("report", "--output-dir", str(out), "--out", str(page)).returncode == 0
    text = page.read_text()
    assert ("<tr><th>pending</th><th>running</th><th>done</th><th>failed</th><th>missing</th><th>total</th></tr>"
            "<tr><td>0</td><td>0</td><td>16</td><td>0</td><td>0</td><td>16</td></tr>") in text
    assert "Probe: logreg" in text and "overall (out of fold)" in text
    images = [base64.b64decode(chunk.split("'", 1)[0]) for chunk in text.split("src='data:image/png;base64,")[1:]]
    assert sorted(images) == sorted(p.read_bytes() for p in drawn)
    assert "src='http" not in text and "<link" not in text  # self-contained
    Image.open(io.BytesIO(images[0])).verify()


def test_bad_input_is_one_line_and_changes_nothing(job, tmp_path: Path, tiny_model, main_in_process) -> None:
    out, videos = job["out"], job["videos"]
    before = sorted(p.name for p in out.iterdir())
    none = tmp_path / "none.csv"
    none.write_text("path,label\n/not/a/video.mp4,FAKE\n")
    one = tmp_path / "one.csv"
    one.write_text("".join(f"{p},FAKE\n" for p in load_features(out).paths))

    def error(*args: str) -> str:
        return one_line_error(main_in_process(*args, "--output-dir", str(out), "--out", str(tmp_path / "x")))

    assert "name no done video of this job" in error("probe", "--labels", str(none))
    assert "one class only (FAKE, 16 videos)" in error("probe", "--labels", str(one))
    assert "one class only" in error("plot", "--labels", str(one))
    assert "method must be one of pca, tsne, umap, got 'lda'" in error("plot", "--labels", str(videos), "--method", "lda")
    assert error("plot", "--labels", str(videos), "--method", "umap") == (
        "error: --method umap needs umap-learn (pip install umap-learn)")
    assert "probe needs --labels" in error("probe")
    assert "labels file not found" in error("probe", "--labels", str(tmp_path / "missing.json"))
    assert "folds must be at least 2" in error("probe", "--labels", str(videos), "--folds", "1")
    assert sorted(p.name for p in out.iterdir()) == before and not (tmp_path / "x").exists()

    # A job with nothing done yet, and a classifier brought from another job.
    empty = tmp_path / "empty"
    make_video(tmp_path / "v" / "a.mp4", Spec("a.mp4", frames=3, width=32, height=24))
    assert main_in_process("scan", "--video-dir", str(tmp_path / "v"), "--output-dir", str(empty),
                           *model_args(tiny_model)).returncode == 0
    assert "no video of this job is done yet" in one_line_error(
        main_in_process("probe", "--output-dir", str(empty), "--labels", "folders"))
    assert "no video of this job is done yet" in one_line_error(
        main_in_process("plot", "--output-dir", str(empty), "--labels", "folders"))
    assert "no classifier in" in one_line_error(main_in_process("probe", "--output-dir", str(empty), "--predict"))
    if not (out / "probe" / "classifier.joblib").exists():
        from pipeline.probe import train

        train(out, None, str(videos), "logreg", 4)
    (empty / "probe").mkdir()
    shutil.copy(out / "probe" / "classifier.joblib", empty / "probe")
    refused = one_line_error(main_in_process("probe", "--output-dir", str(empty), "--predict"))
    assert "was made on features of another model (tiny-clip" in refused and "this job: unknown" in refused
