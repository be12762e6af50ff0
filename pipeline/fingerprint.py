"""The job's model fingerprint: what its features were made with, so a changed model is caught.

Job settings name the model and weights (`--model`, `--pretrained`), but a name says
nothing about the bytes behind it: a checkpoint file overwritten between two runs, or
after the run, gives features that no longer match the job's. The fingerprint pins
them down:

- architecture: the open_clip model name, and for a model config `.json` the sha256 of
  its text (the same name can hold another architecture);
- weights: `sha256:<hex>` of a local checkpoint file (read once per stamp: path, inode,
  size, mtime, ctime, kept per process and in this host's cache file, so a run start does
  not reread a 1.7 GB file that has not changed; `verify` always rereads it), `tag:<tag>`
  for a hub tag, or `random (seed 0)` for `none`;
- preprocessing: the crop geometry and mean/std read off the model's own transform,
  the resize mode, the frame sampling and the number of frames;
- dim: the feature width.

The first run of a job records it in the job's settings (key `model_fingerprint`, JSON;
jobs created before this existed get it at their next run), every shard's sidecar
carries the one it was made with, a later run whose model no longer matches is refused,
and `verify` compares all three (pipeline/verify.py). The library versions are kept
beside it for the record but are not compared: upgrading torch is not a new model.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from pipeline.errors import PipelineError
from pipeline.manifest.tables import job_settings

if TYPE_CHECKING:
    from pipeline.manifest import Manifest
    from pipeline.models import Model
    from pipeline.settings import JobSettings

SETTING_KEY = "model_fingerprint"  # in job_settings, beside `dim`
COMPARED = ("architecture", "architecture_sha256", "weights", "preprocessing", "dim")

_HASHES: dict[tuple[str, int, int, int, int], str] = {}
MIN_REMEMBERED = 1 << 20  # smaller files are hashed again: it costs less than the cache's read


def _stamp(p: Path) -> tuple[str, int, int, int, int]:
    """What changes whenever a file's bytes do: its path, inode, size, mtime and ctime (ns).
    ctime cannot be set back by anyone (`touch -d` moves it too), so an equal stamp is the
    same file as when it was hashed."""
    st = p.stat()
    return (str(p), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def hash_cache_path() -> Path:
    """This host's cache of checkpoint hashes (like a build tool's): under XDG_CACHE_HOME, else ~/.cache."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "clipfeat" / "checkpoint-hashes.json"


def _read_cache() -> dict[str, Any]:
    try:
        data = json.loads(hash_cache_path().read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _remember(key: tuple[str, int, int, int, int], sha: str) -> None:
    """Add one hash to the cache file, atomically (a cache: a lost or failed write costs a rehash)."""
    path = hash_cache_path()
    data = {k: v for k, v in _read_cache().items() if os.path.exists(k)}  # files gone are dropped
    data[key[0]] = {"stamp": list(key[1:]), "sha256": sha}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


def file_sha256(path: str | os.PathLike[str], fresh: bool = False) -> str:
    """sha256 of a file, read once per stamp (path, inode, size, mtime, ctime).

    Every run start checks the job's checkpoint before its workers start (a changed one is
    refused), and a ViT-L checkpoint is 1.7 GB: seconds, more on a network disk. So a hash
    is kept per process and, for files of a MiB or more, in this host's cache file, and
    trusted while the stamp is the same; a file changed while it was read is not
    remembered. `fresh`: read it whatever is remembered (verify)."""
    p = Path(path).resolve()
    key = _stamp(p)
    if not fresh:
        if key in _HASHES:
            return _HASHES[key]
        if key[2] >= MIN_REMEMBERED and (seen := _read_cache().get(key[0])) and seen.get("stamp") == list(key[1:]):
            _HASHES[key] = str(seen["sha256"])
            return _HASHES[key]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    sha = h.hexdigest()
    if _stamp(p) == key:  # unchanged while it was read
        _HASHES[key] = sha
        if key[2] >= MIN_REMEMBERED:
            _remember(key, sha)
    return sha


def _architecture(job: "JobSettings") -> tuple[str, str | None]:
    """(name, sha256 of the config JSON or None); no open_clip import, so verify stays light."""
    if job.model.endswith(".json"):
        return Path(job.model).stem, file_sha256(job.model)
    return job.model, None


def _weights(job: "JobSettings") -> tuple[str, str | None]:
    """(weights id, the checkpoint file or None)."""
    if job.pretrained.lower() == "none":
        return "random (seed 0)", None
    if os.path.isfile(job.pretrained):
        return f"sha256:{file_sha256(job.pretrained)}", job.pretrained
    return f"tag:{job.pretrained}", None


def digest(fp: dict[str, Any]) -> str:
    """A short id of the compared fields (the library versions left out)."""
    text = json.dumps({k: fp.get(k) for k in COMPARED}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def model_fingerprint(job: "JobSettings", model: "Model") -> dict[str, Any]:
    """The fingerprint of a loaded model under a job's settings (as a JSON-able dict)."""
    import open_clip
    import torch

    arch, arch_sha = _architecture(job)
    weights, weights_file = _weights(job)
    g, pre = model.preprocess.geometry, model.preprocess
    fp: dict[str, Any] = {
        "architecture": arch,
        "architecture_sha256": arch_sha,
        "weights": weights,
        "weights_file": weights_file,
        "preprocessing": {
            "size": g.size, "crop": list(g.crop), "mode": g.mode, "interpolation": g.interpolation,
            "mean": [round(float(x), 6) for x in pre.mean], "std": [round(float(x), 6) for x in pre.std],
            "resize": job.resize, "sampling": job.sampling, "num_frames": job.num_frames,
        },
        "dim": int(model.dim),
        "versions": {"open_clip": open_clip.__version__, "torch": torch.__version__},
    }
    fp["digest"] = digest(fp)
    return fp


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The compared fields that differ between two fingerprints, by name."""
    out = [k for k in COMPARED if k != "preprocessing" and a.get(k) != b.get(k)]
    pa, pb = a.get("preprocessing") or {}, b.get("preprocessing") or {}
    out += [f"preprocessing.{k}" for k in sorted(set(pa) | set(pb)) if pa.get(k) != pb.get(k)]
    return out


def describe(fp: dict[str, Any]) -> str:
    """One line: architecture, weights, frames, for messages."""
    pre = fp.get("preprocessing") or {}
    return f"{fp.get('architecture')}, weights {short(fp.get('weights'))}, {pre.get('num_frames')} frames ({fp.get('digest')})"


def short(weights: Any) -> str:
    text = str(weights)
    return text[:19] + "..." if text.startswith("sha256:") else text


def stored(manifest: "Manifest") -> dict[str, Any] | None:
    """The job's recorded fingerprint, or None for a job no run of this version has touched."""
    text = manifest.settings().get(SETTING_KEY)
    return json.loads(text) if text else None


def record(manifest: "Manifest", job: "JobSettings", model: "Model") -> dict[str, Any]:
    """The run's fingerprint, recorded by the job's first run; a run whose model differs from
    the recorded one is refused, so one job never mixes features of two models.

    Read and written in one write transaction, so engines starting together agree."""
    return keep(manifest, model_fingerprint(job, model))


def keep(manifest: "Manifest", fp: dict[str, Any]) -> dict[str, Any]:
    """`record` for a fingerprint made elsewhere (a Ray encoder actor, which holds the model)."""

    def put(conn: Connection) -> dict[str, Any] | None:
        row = conn.execute(select(job_settings.c.value).where(job_settings.c.key == SETTING_KEY)).scalar()
        if row is None:
            conn.execute(job_settings.insert().values(key=SETTING_KEY, value=json.dumps(fp, sort_keys=True)))
            return None
        return json.loads(row)

    try:
        before = manifest.write(put)
    except IntegrityError:  # PostgreSQL: another engine inserted it meanwhile; read theirs
        before = manifest.write(put)
    if before is not None and before.get("digest") != fp["digest"]:
        raise _refusal(differences(before, fp))
    return fp


def refuse_changed_model(manifest: "Manifest", job: "JobSettings") -> None:
    """`record`'s refusal for what can be told without the model (architecture, weights), made
    before a run says or starts anything, so a refused run is one line. On every run's
    critical path: the checkpoint's hash comes from file_sha256's cache while the file is
    untouched."""
    row = manifest.settings().get(SETTING_KEY)
    if not row:
        return
    before = json.loads(row)
    (arch, arch_sha), (weights, _file) = _architecture(job), _weights(job)
    now = {"architecture": arch, "architecture_sha256": arch_sha, "weights": weights}
    if what := [k for k, v in now.items() if before.get(k) != v]:
        raise _refusal(what)


def _refusal(what: list[str]) -> PipelineError:
    names = ", ".join(what)
    hint = " (the checkpoint file changed?)" if "weights" in names else ""
    return PipelineError(
        f"the model no longer matches this job's features: {names} differ{hint}; "
        f"use another --output-dir for a different model"
    )


def check_current(fp: dict[str, Any], job: "JobSettings") -> list[str]:
    """What differs between a recorded fingerprint and the files on disk now (no model load):
    the checkpoint and the model config are hashed again."""
    problems = []
    if fp.get("weights_file"):
        path = fp["weights_file"]
        if not os.path.isfile(path):
            problems.append(f"checkpoint {path} is not there any more: the features cannot be checked against it")
        else:
            now = f"sha256:{file_sha256(path, fresh=True)}"
            if now != fp.get("weights"):
                problems.append(
                    f"checkpoint {path} changed since the features were made ({short(fp.get('weights'))} then, {short(now)} now)"
                )
    if fp.get("architecture_sha256"):
        if not os.path.isfile(job.model):
            problems.append(f"model config {job.model} is not there any more")
        elif file_sha256(job.model) != fp["architecture_sha256"]:
            problems.append(f"model config {job.model} changed since the features were made")
    return problems
