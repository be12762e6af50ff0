"""The `index` command: a faiss index of a job's video features, kept in OUTPUT_DIR/index/.

Features are unit vectors, so inner product is cosine. Below IVF_MIN rows the index is
exact (IndexFlatIP: a search is one matrix product, milliseconds at 10^4-10^5 rows);
from IVF_MIN on it is IndexIVFFlat with nlist ~ 4 sqrt(N) lists, trained on a sample,
and nprobe the smallest power of two whose recall@10 against the exact answer on a
sample of the job's own rows reaches TARGET_RECALL (docs/design/index.md).

What an index covers is recorded with it: the manifest ids of its rows, in index order,
and a key per row naming the shard and position its feature was read from, so a row
that was redone since (a changed file) is told apart from the one indexed. The index is
current when it covers exactly the done rows; `index` again extends it with the rows
done since (the same kind, when that kind still fits the size) or rebuilds it.

Commit order, as the shards': the index and its ids are written under a new generation's
names (fsynced), then index.json, which names that generation, is replaced atomically;
a reader that opens index.json finds the files it names. Older generations are removed
after.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import PipelineError
from pipeline.manifest import DoneRow, open_manifest
from pipeline.reader import load_features
from pipeline.writer import atomic_write, fsync_dir, npy_bytes

log = logging.getLogger(__name__)

IVF_MIN = 50_000  # rows from which the index is IVF rather than exact
TARGET_RECALL = 0.95  # recall@10 nprobe is chosen for
RECALL_QUERIES = 256  # rows of the job used as queries to choose nprobe
TRAIN_PER_LIST = 64  # training sample: this many rows per list (faiss asks for 39 at least)
INDEX_DIR = "index"


@dataclass
class IndexInfo:
    """index.json: what the index is and what it covers."""

    kind: str  # "flat" | "ivf"
    count: int  # rows it holds (= the done rows it was built or extended from)
    dim: int
    generation: int
    nlist: int = 0
    nprobe: int = 0
    recall_at_10: float | None = None  # measured when nprobe was chosen
    built_at: float = 0.0
    trained_on: int = 0  # rows the IVF quantiser was trained on
    action: str = "built"  # built | extended | unchanged (how the last `index` got here)

    @property
    def file(self) -> str:
        return f"index-{self.generation:06d}.faiss"

    @property
    def ids_file(self) -> str:
        return f"ids-{self.generation:06d}.npy"


@dataclass
class Loaded:
    info: IndexInfo
    index: object  # faiss.Index
    ids: np.ndarray  # int64 [count]: manifest ids, in index order
    keys: np.ndarray  # int64 [count]: row_key of each


def row_key(row: DoneRow) -> int:
    """Where a row's feature was read from, as one number: a redone row gets a new key."""
    return zlib.crc32(f"{row.shard}:{row.shard_index}".encode())


def ivf_lists(n: int) -> int:
    """nlist ~ 4 sqrt(N) (faiss's guideline), at least 1, and so that each list gets
    enough training rows from n."""
    return max(1, min(int(round(4 * math.sqrt(n))), n // 39 or 1))


def exact_top(features: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products (faiss's flat index: the reference every answer is held to)."""
    import faiss

    flat = faiss.IndexFlatIP(features.shape[1])
    flat.add(np.ascontiguousarray(features, dtype=np.float32))
    return flat.search(np.ascontiguousarray(queries, dtype=np.float32), k)


def recall_at(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true top-k found in the returned top-k (rows: queries)."""
    hits = sum(len(set(f[f >= 0]) & set(t[t >= 0])) for f, t in zip(found, truth))
    return hits / max(1, int((truth >= 0).sum()))


def _without_self(found: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Each query row's neighbours other than itself, the first k."""
    return np.stack([f[f != r][:k] for f, r in zip(found, rows)])


def choose_nprobe(index: object, features: np.ndarray, target: float = TARGET_RECALL, k: int = 10,
                  queries: int = RECALL_QUERIES, seed: int = 0) -> tuple[int, float]:
    """The smallest power-of-two nprobe whose recall@k reaches `target` (all lists, recall 1,
    at worst), measured with `queries` of the rows themselves as queries, each one's own
    row left out of both answers (it is always found, which would flatter the recall)."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(features), size=min(queries, len(features)), replace=False))
    q = features[rows]
    k = min(k, len(features) - 1)
    if k < 1:
        return index.nlist, 1.0  # type: ignore[attr-defined]
    _, truth = exact_top(features, q, k + 1)
    truth = _without_self(truth, rows, k)
    nlist = index.nlist  # type: ignore[attr-defined]
    nprobe = 1
    while True:
        index.nprobe = nprobe  # type: ignore[attr-defined]
        _, found = index.search(q, k + 1)  # type: ignore[attr-defined]
        recall = recall_at(_without_self(found, rows, k), truth)
        if recall >= target or nprobe >= nlist:
            return nprobe, recall
        nprobe = min(nlist, nprobe * 2)


def build_ivf(features: np.ndarray, nlist: int | None = None, seed: int = 0, train_rows: int | None = None) -> tuple[object, int]:
    """An IndexIVFFlat (inner product) over `features`, trained on a sample; (index, rows trained on)."""
    import faiss

    n, dim = features.shape
    nlist = nlist or ivf_lists(n)
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.own_fields = True
    quantizer.this.disown()  # the index frees its quantiser
    size = min(n, train_rows or TRAIN_PER_LIST * nlist)
    rng = np.random.default_rng(seed)
    sample = features if size >= n else features[np.sort(rng.choice(n, size=size, replace=False))]
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    for start in range(0, n, 65536):  # bounded temporary memory while adding
        index.add(np.ascontiguousarray(features[start : start + 65536], dtype=np.float32))
    return index, size


def index_dir(output_dir: str | os.PathLike[str]) -> Path:
    return Path(output_dir) / INDEX_DIR


def load(output_dir: str | os.PathLike[str]) -> Loaded | None:
    """The job's index, or None where none was built."""
    import faiss

    folder = index_dir(output_dir)
    try:
        info = IndexInfo(**json.loads((folder / "index.json").read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as e:
        raise PipelineError(f"index {folder / 'index.json'} unreadable: {e}; run `index --rebuild`") from None
    try:
        index = faiss.read_index(str(folder / info.file))
        both = np.load(folder / info.ids_file, allow_pickle=False)
    except (OSError, RuntimeError, ValueError) as e:
        raise PipelineError(f"index files in {folder} unreadable: {e}; run `index --rebuild`") from None
    if info.kind == "ivf":
        index.nprobe = info.nprobe
    return Loaded(info, index, both[0], both[1])


def staleness(loaded: Loaded, rows: list[DoneRow]) -> str | None:
    """Why the index does not answer for the done rows now, or None when it covers exactly them."""
    done = {r.id: row_key(r) for r in rows}
    have = dict(zip(loaded.ids.tolist(), loaded.keys.tolist()))
    missing = sum(1 for i in done if i not in have)
    gone = sum(1 for i, key in have.items() if done.get(i) != key)
    if not missing and not gone:
        return None
    parts = []
    if missing:
        parts.append(f"{missing} of the {len(done)} done videos are not in it")
    if gone:
        parts.append(f"{gone} of its {len(have)} rows are no longer done as indexed (redone or rescanned)")
    return f"the index is older than the done rows ({'; '.join(parts)}); run `index` to bring it up to date"


def _commit(folder: Path, info: IndexInfo, index: object, ids: np.ndarray, keys: np.ndarray) -> None:
    import faiss

    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / info.file, faiss.serialize_index(index).tobytes())
    atomic_write(folder / info.ids_file, npy_bytes(np.stack([ids, keys]).astype(np.int64)))
    atomic_write(folder / "index.json", json.dumps(asdict(info), indent=1).encode())
    fsync_dir(folder)
    for old in folder.iterdir():  # earlier generations: nothing names them any more
        if old.name.startswith(("index-", "ids-")) and old.name not in (info.file, info.ids_file):
            old.unlink(missing_ok=True)


def _next_generation(folder: Path) -> int:
    """One more than any generation whose files are there (a rebuild never reuses a name)."""
    numbers = [int(p.stem.split("-")[1]) for p in folder.glob("index-*.faiss") if p.stem.split("-")[1].isdigit()]
    return max(numbers, default=0) + 1


def build(output_dir: str | os.PathLike[str], db: str | None, ivf_min: int = IVF_MIN, rebuild: bool = False) -> IndexInfo:
    """Build the job's index from its done rows, or extend the one there with the rows done
    since; `rebuild` starts over. Nothing but OUTPUT_DIR/index/ is written."""
    import faiss

    if ivf_min < 1:
        raise PipelineError(f"ivf_min must be at least 1, got {ivf_min}")
    manifest = open_manifest(output_dir, db)
    try:
        rows = manifest.done_rows()
    finally:
        manifest.close()
    if not rows:
        raise PipelineError("no video is done yet: nothing to index (run `run` first)")
    feats = load_features(output_dir, db)  # the same rows, read from their shards
    by_id = {r.id: r for r in rows}
    ids = np.asarray(feats.ids, dtype=np.int64)
    keys = np.asarray([row_key(by_id[i]) for i in feats.ids], dtype=np.int64)
    kind = "ivf" if len(ids) >= ivf_min else "flat"
    folder = index_dir(output_dir)
    old = None if rebuild else load(output_dir)
    generation = _next_generation(folder)
    if old is not None and staleness(old, rows) is None and old.info.kind == kind:
        old.info.action = "unchanged"
        return old.info
    if old is not None and old.info.kind == kind and old.info.dim == feats.features.shape[1]:
        have = dict(zip(old.ids.tolist(), old.keys.tolist()))
        still = all(by_id.get(i) is not None and row_key(by_id[i]) == key for i, key in have.items())
        # An IVF quantiser trained on far fewer rows than it would now be given is rebuilt.
        fits = kind == "flat" or old.info.nlist >= ivf_lists(len(ids)) // 2
        if still and fits:
            new = np.asarray([pos for pos, i in enumerate(ids.tolist()) if i not in have], dtype=np.int64)
            index = old.index
            index.add(np.ascontiguousarray(feats.features[new]))  # type: ignore[attr-defined]
            info = IndexInfo(**{**asdict(old.info), "count": int(index.ntotal), "generation": generation,  # type: ignore[attr-defined]
                                "built_at": time.time(), "action": "extended"})
            _commit(folder, info, index, np.concatenate([old.ids, ids[new]]), np.concatenate([old.keys, keys[new]]))
            log.info("index extended by %d rows to %d (%s)", len(new), info.count, kind)
            return info
    dim = feats.features.shape[1]
    if kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(np.ascontiguousarray(feats.features))
        info = IndexInfo("flat", len(ids), dim, generation, built_at=time.time())
    else:
        index, trained = build_ivf(feats.features)
        nprobe, recall = choose_nprobe(index, feats.features)
        index.nprobe = nprobe
        info = IndexInfo("ivf", len(ids), dim, generation, nlist=index.nlist, nprobe=nprobe, recall_at_10=recall,
                         built_at=time.time(), trained_on=trained)
    _commit(folder, info, index, ids, keys)
    log.info("index built: %s over %d rows", kind, len(ids))
    return info
