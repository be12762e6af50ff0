"""`probe`: how well do the features tell the labels apart? A linear probe, cross-validated.

Logistic regression by default (scikit-learn, on standardised features), a linear SVM
(its scores calibrated by Platt scaling inside each training fold, so AUC and log loss
are computed on probabilities) or a small MLP. The split is StratifiedGroupKFold, the
group being the fake's original (pipeline/labels.py): DFDC's fakes are re-renderings of
its real videos, so a fake on one side of a split and its original on the other would
let a probe score by recognising the scene, not the manipulation
(docs/design/probe.md). Reported per fold and overall (the out-of-fold predictions
pooled): ROC AUC (one-vs-rest for more than two classes), log loss (DFDC's metric),
accuracy and the confusion matrix.

The classifier fitted on every labelled video is saved in the job's directory
(`probe/classifier.joblib`, with the job's model fingerprint) with the metrics
(`probe/metrics.json`, read by `report`); `probe --predict` scores the job's done videos
with it and refuses one made with another model's features.
"""

from __future__ import annotations

import csv
import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline import fingerprint as fingerprints
from pipeline.errors import PipelineError
from pipeline.labels import Labelled, load_labels
from pipeline.manifest import open_manifest
from pipeline.reader import load_features
from pipeline.writer import atomic_write

SEED = 0
SMALL_FIT = 20000  # videos: below this a fit runs on one BLAS thread
PROBE_DIR = "probe"
CLASSIFIER_FILE = "classifier.joblib"
METRICS_FILE = "metrics.json"


def make_classifier(kind: str, n_train_per_class: int, seed: int = SEED) -> Any:
    """A fresh, unfitted scikit-learn classifier of `kind` (logreg, svm, mlp)."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    if kind == "logreg":
        head: Any = LogisticRegression(max_iter=2000)
    elif kind == "svm":  # calibrated within the training data: probabilities for AUC and log loss
        head = CalibratedClassifierCV(LinearSVC(dual="auto", random_state=seed), cv=max(2, min(3, n_train_per_class)))
    elif kind == "mlp":
        head = MLPClassifier(hidden_layer_sizes=(128,), alpha=1e-3, max_iter=300, random_state=seed)
    else:
        raise PipelineError(f"classifier must be one of logreg, svm, mlp, got {kind!r}")
    return make_pipeline(StandardScaler(), head)


def _fit(kind: str, x: np.ndarray, y: np.ndarray) -> Any:
    from sklearn.exceptions import ConvergenceWarning

    model = make_classifier(kind, int(np.bincount(y).min()))
    with warnings.catch_warnings(), few_threads(len(x)):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(x, y)
    return model


def few_threads(n: int) -> Any:
    """One BLAS/OpenMP thread for small fits: on a shared box, threads that wait on each other made a
    200-video MLP fit 13x slower than one thread (110 s against 8 s); large jobs keep them all."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1 if n < SMALL_FIT else None)


def scores(y: np.ndarray, proba: np.ndarray, n_classes: int) -> dict[str, Any]:
    """AUC (None when the set holds one class), log loss, accuracy, confusion matrix (rows: true)."""
    from sklearn.metrics import accuracy_score, confusion_matrix, log_loss, roc_auc_score

    labels = list(range(n_classes))
    proba = np.asarray(proba, dtype=np.float64)
    proba = proba / proba.sum(axis=1, keepdims=True)  # float32 models' rows sum to 1 only roughly
    auc = None
    if len(set(y.tolist())) > 1:
        if n_classes == 2:
            auc = float(roc_auc_score(y, proba[:, 1]))
        elif len(set(y.tolist())) == n_classes:
            auc = float(roc_auc_score(y, proba, multi_class="ovr", labels=labels))
    return {
        "n": int(len(y)),
        "auc": auc,
        "log_loss": float(log_loss(y, proba, labels=labels)),
        "accuracy": float(accuracy_score(y, proba.argmax(axis=1))),
        "confusion": confusion_matrix(y, proba.argmax(axis=1), labels=labels).tolist(),
    }


def folds_for(y: np.ndarray, groups: list[str], k: int, seed: int = SEED) -> list[tuple[np.ndarray, np.ndarray]]:
    """StratifiedGroupKFold's (train, test) index pairs; k lowered to what the groups allow."""
    from sklearn.model_selection import StratifiedGroupKFold

    split = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in split.split(np.zeros(len(y)), y, groups)]


def usable_folds(y: np.ndarray, groups: list[str], asked: int) -> int:
    """Folds the data allows: every class needs a group on each side of every split."""
    if asked < 2:
        raise PipelineError(f"folds must be at least 2, got {asked}")
    per_class = min(len({g for g, c in zip(groups, y) if c == k}) for k in set(y.tolist()))
    if per_class < 2:
        raise PipelineError(f"a class has {per_class} group of videos (a fake and its original are one group): "
                            f"cross-validation needs at least 2 per class")
    return min(asked, per_class)


@dataclass
class ProbeResult:
    kind: str
    classes: list[str]
    folds: list[dict[str, Any]]
    overall: dict[str, Any]
    n: int
    counts: dict[str, int]
    folds_asked: int
    classifier_path: Path
    metrics_path: Path
    warnings: list[str]
    test_sets: list[list[int]]  # the video ids of each fold's test side

    def as_json(self) -> dict[str, Any]:
        return {
            "classifier": self.kind, "classes": self.classes, "n": self.n, "counts": self.counts,
            "folds_asked": self.folds_asked, "folds": self.folds, "overall": self.overall,
            "classifier_path": str(self.classifier_path), "warnings": self.warnings,
        }


def cross_validate(data: Labelled, kind: str, k: int) -> tuple[list[dict[str, Any]], dict[str, Any], list[list[int]]]:
    """Per-fold scores, the pooled out-of-fold scores, and each fold's test ids."""
    y, n_classes = data.y, len(data.classes)
    oof = np.zeros((len(y), n_classes))
    per_fold, test_sets = [], []
    for fold, (tr, te) in enumerate(folds_for(y, data.groups, k)):
        if len(set(y[tr].tolist())) < n_classes:
            raise PipelineError(f"fold {fold + 1} trains on one class only: use fewer --folds")
        model = _fit(kind, data.features[tr], y[tr])
        with few_threads(len(te)):
            oof[te] = model.predict_proba(data.features[te])
        per_fold.append({"fold": fold + 1, **scores(y[te], oof[te], n_classes)})
        test_sets.append([data.ids[i] for i in te])
    return per_fold, scores(y, oof, n_classes), test_sets


def _job_fingerprint(output_dir: str | os.PathLike[str], db: str | None) -> dict[str, Any] | None:
    manifest = open_manifest(output_dir, db)
    try:
        return fingerprints.stored(manifest)
    finally:
        manifest.close()


def train(output_dir: str | os.PathLike[str], db: str | None, labels: str, kind: str, folds: int) -> ProbeResult:
    """Cross-validate, then fit on every labelled video and save it with the job's fingerprint."""
    import joblib

    job_fp = _job_fingerprint(output_dir, db)
    data = load_labels(labels, load_features(output_dir, db))
    y = data.y
    k = usable_folds(y, data.groups, folds)
    notes = data.warnings()
    if k < folds:
        notes.append(f"--folds {folds} lowered to {k}: the smallest class has {k} groups of videos")
    per_fold, overall, test_sets = cross_validate(data, kind, k)
    final = _fit(kind, data.features, y)

    out = Path(output_dir) / PROBE_DIR
    out.mkdir(parents=True, exist_ok=True)
    saved = {
        "model": final, "kind": kind, "classes": data.classes, "dim": int(data.features.shape[1]),
        "fingerprint": job_fp, "labels": data.source, "trained_on": len(y), "created": time.time(),
    }
    tmp = out / f"{CLASSIFIER_FILE}.tmp"
    joblib.dump(saved, tmp)
    os.replace(tmp, out / CLASSIFIER_FILE)
    counts = {c: int((y == i).sum()) for i, c in enumerate(data.classes)}
    result = ProbeResult(kind, data.classes, per_fold, overall, len(y), counts, folds, out / CLASSIFIER_FILE,
                         out / METRICS_FILE, notes, test_sets)
    atomic_write(out / METRICS_FILE, json.dumps({**result.as_json(), "labels": data.source}, indent=1).encode())
    return result


@dataclass
class Predictions:
    out: Path
    count: int
    predicted: dict[str, int]
    classes: list[str]


def predict(output_dir: str | os.PathLike[str], db: str | None, out: str | None = None) -> Predictions:
    """Score the job's done videos with the saved classifier: CSV path,label,score (score: the
    probability of the positive, last, class for two classes; of the predicted one otherwise)."""
    import joblib

    file = Path(output_dir) / PROBE_DIR / CLASSIFIER_FILE
    if not file.is_file():
        raise PipelineError(f"no classifier in {file.parent}: run 'probe --labels FILE' first")
    saved = joblib.load(file)  # pickle: the job's own file, written by `probe --labels`
    job_fp = _job_fingerprint(output_dir, db)
    mine, theirs = (job_fp or {}).get("digest"), (saved.get("fingerprint") or {}).get("digest")
    if mine != theirs:
        raise PipelineError(
            f"the classifier in {file} was made on features of another model "
            f"({fingerprints.describe(saved['fingerprint']) if theirs else 'unknown'}; this job: "
            f"{fingerprints.describe(job_fp) if mine else 'unknown'}): run 'probe --labels FILE' on this job"
        )
    feats = load_features(output_dir, db)
    if not feats.ids:
        raise PipelineError("no video of this job is done yet: nothing to score")
    if feats.features.shape[1] != saved["dim"]:
        raise PipelineError(f"the classifier takes {saved['dim']}-d features, this job has {feats.features.shape[1]}-d")
    proba = saved["model"].predict_proba(feats.features)
    classes = saved["classes"]
    best = proba.argmax(axis=1)
    score = proba[:, 1] if len(classes) == 2 else proba.max(axis=1)
    dest = Path(out) if out else Path(output_dir) / PROBE_DIR / "predictions.csv"
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "score"])
        for path, b, s in zip(feats.paths, best, score):
            w.writerow([path, classes[b], f"{s:.6f}"])
    os.replace(tmp, dest)
    predicted = {c: int((best == i).sum()) for i, c in enumerate(classes)}
    return Predictions(dest, len(feats.ids), predicted, classes)
