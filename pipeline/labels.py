"""Labels for a job's videos, for `probe` and `plot`: DFDC metadata.json, a CSV, or folder names.

- DFDC's `metadata.json` (`{"name.mp4": {"label": "FAKE", "split": "train", "original":
  "other.mp4"}}`) comes one per part (`dfdc_train_part_3/metadata.json`, or inside the part's
  zip). DFDC's names are only unique within a part, so a video is matched by its file name
  within its part: the folder it sits in (`/x/dfdc_train_part_3/abc.mp4`) or, for an archive
  member (`.../part_3.zip::dfdc_train_part_3/abc.mp4`), the member's folder (the archive's
  stem when the member has none). Only when no video's part has a metadata.json (a
  flattened copy) are videos matched by file name alone, where exactly one entry has that
  name. A fake's group is its
  original (`part/original`), a real's its own name, so a split keeps them together.
  `--labels` takes a metadata.json, a zip holding them, or a folder searched for both.
- A CSV `path,label[,group]` (a header row is optional): path as the job names it, or the
  file name when exactly one done video has it.
- `folders`: each video's parent folder name is its label; each video is its own group.
"""

from __future__ import annotations

import csv
import json
import os
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.reader import Features

POSITIVE = ("FAKE", "fake", "Fake")  # the class AUC scores, when present


@dataclass
class Labelled:
    """The done videos a labels file names, with their features, in manifest order."""

    ids: list[int]
    paths: list[str]
    labels: list[str]
    groups: list[str]
    features: np.ndarray  # [n, D]
    classes: list[str]  # y = index in this list; for two classes the positive one is last
    unmatched_labels: int  # labels naming no done video of the job
    unlabelled: int  # done videos with no label
    source: str

    @property
    def y(self) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[lab] for lab in self.labels], dtype=np.int64)

    def warnings(self) -> list[str]:
        out = []
        if self.unmatched_labels:
            out.append(f"{self.unmatched_labels} labels name no done video of this job")
        if self.unlabelled:
            out.append(f"{self.unlabelled} done videos have no label and are left out")
        return out


def part_and_name(path: str) -> tuple[str, str]:
    """(part, file name) of a video as the job names it: a file's folder, an archive member's folder."""
    if "::" in path:
        archive, member = path.split("::", 1)
        m = PurePosixPath(member)
        return (m.parent.name or Path(archive).stem), m.name
    p = Path(path)
    return p.parent.name, p.name


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as e:
        raise PipelineError(f"labels file {where} is not valid JSON ({e})") from None


def _metadata_files(spec: Path) -> list[tuple[str, str, Any]]:
    """(part, where, parsed metadata) of every metadata.json the spec names or holds."""
    out: list[tuple[str, str, Any]] = []

    def from_zip(z: Path) -> None:
        try:
            with zipfile.ZipFile(z) as zf:
                for member in zf.namelist():
                    if PurePosixPath(member).name == "metadata.json":
                        part = PurePosixPath(member).parent.name or z.stem
                        out.append((part, f"{z}::{member}", _json(zf.read(member).decode("utf-8"), f"{z}::{member}")))
        except (OSError, zipfile.BadZipFile) as e:
            raise PipelineError(f"labels archive {z} cannot be read ({e})") from None

    if spec.is_dir():
        for f in sorted(spec.rglob("metadata.json")):
            out.append((f.parent.name, str(f), _json(f.read_text(), str(f))))
        for z in sorted(spec.rglob("*.zip")):
            from_zip(z)
    elif spec.suffix.lower() == ".zip":
        from_zip(spec)
    else:
        out.append((spec.resolve().parent.name, str(spec), _json(spec.read_text(), str(spec))))
    if not out:
        raise PipelineError(f"no metadata.json in {spec}")
    return out


def _dfdc(spec: Path, feats: Features) -> tuple[dict[int, tuple[str, str]], int]:
    """video id -> (label, group), and how many labels matched no done video."""
    table: dict[tuple[str, str], tuple[str, str]] = {}
    by_name: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for part, where, meta in _metadata_files(spec):
        if not isinstance(meta, dict):
            raise PipelineError(f"labels file {where}: not DFDC's metadata.json (a mapping of name: entry)")
        for name, entry in meta.items():
            if not isinstance(entry, dict) or "label" not in entry:
                raise PipelineError(f"labels file {where}: entry {name!r} has no label")
            original = entry.get("original") or name
            key = (part, str(name))
            table[key] = (str(entry["label"]).strip(), f"{part}/{original}")
            by_name[str(name)].append(key)
    keys = {vid: part_and_name(path) for vid, path in zip(feats.ids, feats.paths)}
    if not any(k in table for k in keys.values()):  # no part folder in common: the layout was flattened
        keys = {vid: by_name[name][0] for vid, (_, name) in keys.items() if len(by_name.get(name, ())) == 1}
    got = {vid: table[k] for vid, k in keys.items() if k in table}
    return got, len(table) - len({k for k in keys.values() if k in table})


def _csv(spec: Path, feats: Features) -> tuple[dict[int, tuple[str, str]], int]:
    by_path = dict(zip(feats.paths, feats.ids))
    names: dict[str, list[int]] = defaultdict(list)
    for vid, path in zip(feats.ids, feats.paths):
        names[part_and_name(path)[1]].append(vid)
    got: dict[int, tuple[str, str]] = {}
    unmatched = 0
    try:
        with open(spec, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise PipelineError(f"labels file {spec} cannot be read as CSV ({e})") from None
    if rows and rows[0] and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    for n, row in enumerate(rows, 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise PipelineError(f"labels file {spec}: row {n} is not path,label")
        path, label = row[0], row[1].strip()
        vid = by_path.get(path)
        if vid is None and len(names.get(part_and_name(path)[1], ())) == 1:
            vid = names[part_and_name(path)[1]][0]
        if vid is None:
            unmatched += 1
            continue
        group = row[2].strip() if len(row) > 2 and row[2].strip() else f"video:{vid}"
        got[vid] = (label, group)
    return got, unmatched


def _classes(labels: list[str]) -> list[str]:
    classes = sorted(set(labels))
    positive = next((c for c in classes if c in POSITIVE), None)
    if len(classes) == 2 and positive is not None:
        classes = [c for c in classes if c != positive] + [positive]
    return classes


def load_labels(spec: str, feats: Features) -> Labelled:
    """The labelled done videos; one line of error when no video or one class only is labelled."""
    if spec == "folders":
        got = {vid: (part_and_name(path)[0], f"video:{vid}") for vid, path in zip(feats.ids, feats.paths)}
        unmatched = 0
    else:
        p = Path(spec).expanduser()
        if not p.exists():
            raise PipelineError(f"labels file not found: {spec}")
        is_dfdc = p.is_dir() or p.suffix.lower() in (".json", ".zip")
        got, unmatched = _dfdc(p, feats) if is_dfdc else _csv(p, feats)
    if not feats.ids:
        raise PipelineError("no video of this job is done yet: nothing to label")
    keep = [k for k, vid in enumerate(feats.ids) if vid in got]
    if not keep:
        raise PipelineError(f"the labels in {spec} name no done video of this job ({len(feats.ids)} done; "
                            f"DFDC names are matched within their part folder, CSV paths as the job names them)")
    labels = [got[feats.ids[k]][0] for k in keep]
    counts = Counter(labels)
    if len(counts) < 2:
        only = next(iter(counts))
        raise PipelineError(f"the labels in {spec} give one class only ({only}, {len(keep)} videos): "
                            f"a probe or a plot needs at least two")
    return Labelled(
        ids=[feats.ids[k] for k in keep], paths=[feats.paths[k] for k in keep], labels=labels,
        groups=[got[feats.ids[k]][1] for k in keep], features=np.ascontiguousarray(feats.features[keep]),
        classes=_classes(labels), unmatched_labels=unmatched, unlabelled=len(feats.ids) - len(keep),
        source=os.fspath(spec),
    )
