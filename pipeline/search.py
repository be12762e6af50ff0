"""The `search` command: the job's videos nearest a text or a video, by cosine.

A text is encoded by the job's own model's text tower and tokenizer (`Model.encode_text`);
a video is one of the job's own (its stored feature) or a new file, decoded, sampled,
preprocessed and encoded exactly as a run does it with the job's settings (the
pipeline's decoder, sampler, geometry and Encoder). The ranking uses the job's index
when it is current (covers exactly the done rows) and brute force over the done rows
(one numpy matrix product) otherwise; for an exact index the two give the same answer.
A stale index is a warning, and the brute-force answer over every done row.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.manifest import open_manifest
from pipeline.reader import Features, load_features

log = logging.getLogger(__name__)


@dataclass
class Hit:
    rank: int
    path: str
    id: int
    score: float


@dataclass
class Answer:
    hits: list[Hit]
    method: str  # "index (flat)", "index (ivf, nprobe 8)", "brute force"
    searched: int  # rows the answer ranks
    warnings: list[str] = field(default_factory=list)


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        raise PipelineError("the query's feature is zero or not finite: nothing to rank by")
    return v / norm


def _job_model(output_dir: str | os.PathLike[str], db: str | None):  # noqa: ANN202 - a Model
    """The job's model, refused as a run refuses it when it no longer matches the features
    (another checkpoint written over the file): a query encoded by other weights would rank
    the job's videos by nonsense, with nothing to say so."""
    from pipeline.fingerprint import refuse_changed_model
    from pipeline.models import load_model

    manifest = open_manifest(output_dir, db)
    try:
        job = manifest.job()
        refuse_changed_model(manifest, job)
    finally:
        manifest.close()
    return job, load_model(job, "cpu")


def text_query(output_dir: str | os.PathLike[str], db: str | None, text: str) -> np.ndarray:
    """The unit feature of `text` by the job's model (its tokenizer and text tower)."""
    if not text.strip():
        raise PipelineError("--text is empty")
    _, model = _job_model(output_dir, db)
    return _unit(model.encode_text([text])[0].cpu().numpy())


def encode_file(output_dir: str | os.PathLike[str], db: str | None, path: str) -> np.ndarray:
    """A file not in the job, made into a feature as a run makes one with the job's settings."""
    import torch

    from pipeline.decoders import DecodeError, sample_frames
    from pipeline.encoder import Encoder

    job, model = _job_model(output_dir, db)
    convert = model.preprocess.geometry.converter(job.resize)
    try:
        sampled = sample_frames(path, job.num_frames, convert, job.sampling)
    except DecodeError as e:
        raise PipelineError(f"cannot decode {path}: {e}") from None
    encoder = Encoder(model, torch.device("cpu"), cpu_threads=None)
    return _unit(encoder.encode(np.stack(sampled.frames), job.num_frames).videos[0])


def find_video(feats: Features, video: str) -> int | None:
    """The job's row for `video`: its path as the job names it, the same file by absolute
    path, or a file name that names one done video only."""
    if video in feats.paths:
        return feats.paths.index(video)
    absolute = os.path.abspath(video)
    for i, p in enumerate(feats.paths):
        if os.path.abspath(p) == absolute:
            return i
    by_name = [i for i, p in enumerate(feats.paths) if Path(p).name == video]
    if len(by_name) > 1:
        raise PipelineError(f"{len(by_name)} done videos are named {video!r}: give the path")
    return by_name[0] if by_name else None


def rank(output_dir: str | os.PathLike[str], db: str | None, query: np.ndarray, top_k: int,
         feats: Features | None = None) -> Answer:
    """The top_k done videos by cosine to `query`: the index where it is current, else brute force."""
    from pipeline import index as job_index

    if top_k < 1:
        raise PipelineError(f"top_k must be at least 1, got {top_k}")
    feats = feats if feats is not None else load_features(output_dir, db)
    if not feats.paths:
        raise PipelineError("no video is done yet: nothing to search (run `run` first)")
    query = _unit(query)
    if query.shape[0] != feats.features.shape[1]:
        raise PipelineError(f"the query has dimension {query.shape[0]}, the job's features {feats.features.shape[1]}")
    k = min(top_k, len(feats.paths))
    warnings: list[str] = []
    loaded = job_index.load(output_dir)
    if loaded is not None:
        manifest = open_manifest(output_dir, db)
        try:
            rows = manifest.done_rows()
        finally:
            manifest.close()
        # The rows read are those the index must cover: a row done since they were read is next time's.
        read = set(feats.ids)
        stale = job_index.staleness(loaded, [r for r in rows if r.id in read])
        if stale is None:
            scores, pos = loaded.index.search(query[None, :], k)  # type: ignore[attr-defined]
            row_of = {i: n for n, i in enumerate(feats.ids)}
            hits = [Hit(r + 1, feats.paths[row_of[int(loaded.ids[p])]], int(loaded.ids[p]), float(s))
                    for r, (s, p) in enumerate(zip(scores[0], pos[0])) if p >= 0]
            info = loaded.info
            method = "index (flat)" if info.kind == "flat" else f"index (ivf, nlist {info.nlist}, nprobe {info.nprobe})"
            return Answer(hits, method, info.count)
        warnings.append(f"{stale}; searched every done row by brute force instead")
    scores = feats.features @ query
    order = np.argsort(-scores, kind="stable")[:k]
    hits = [Hit(r + 1, feats.paths[i], feats.ids[i], float(scores[i])) for r, i in enumerate(order)]
    return Answer(hits, "brute force", len(feats.paths), warnings)


def search(output_dir: str | os.PathLike[str], db: str | None, text: str | None, video: str | None, top_k: int) -> Answer:
    """`search --text` or `search --video` (one of the two)."""
    if (text is None) == (video is None):
        raise PipelineError("search needs one of --text \"...\" or --video PATH")
    if top_k < 1:
        raise PipelineError(f"top_k must be at least 1, got {top_k}")
    feats = load_features(output_dir, db)
    if not feats.paths:
        raise PipelineError("no video is done yet: nothing to search (run `run` first)")
    if text is not None:
        return rank(output_dir, db, text_query(output_dir, db, text), top_k, feats)
    assert video is not None
    row = find_video(feats, video)
    if row is not None:
        return rank(output_dir, db, feats.features[row], top_k, feats)
    if not os.path.isfile(video):
        raise PipelineError(f"{video!r} is neither a done video of the job nor a file")
    return rank(output_dir, db, encode_file(output_dir, db, video), top_k, feats)
