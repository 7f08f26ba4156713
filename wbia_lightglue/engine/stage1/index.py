"""Stage-1 index: one FAISS kNN index over the stage-1 descriptors of a whole database, keyed by strings.

A query searches it once and LNBNN voting (:mod:`.lnbnn`) turns the neighbours into a score per annotation.
The index is incremental (``add`` appends; ``remove`` drops an annotation's vectors), persisted with
``save`` / ``Stage1Index.load``, and picks its FAISS type by size (``shortlist_index='auto'``: exact flat
search up to ``AUTO_IVF_VECTORS`` vectors, IVF with 8-bit scalar quantisation beyond; ``ivfpq`` for the
largest databases). IVF indexes are trained on the vectors present when they are built and rebuilt from
the kept raw descriptors when the database has grown ``RETRAIN_GROWTH`` times since. On CUDA the exact
search runs in torch (or on faiss-gpu when that build is installed).

This module is over 400 lines because the index's storage, FAISS build and persistence (with the checks that
a loaded file is whole) share private state (slots, owners, keypoints); the scoring and the features live in
their own modules.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Collection, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ...files import STALE_TEMP_SECONDS, atomic_write, remove_stale_temp_files
from ..config import Config, ConfigError, ConfigLike, resolve_config
from .aggregated import AggregatedIndex
from .features import DIM
from .lnbnn import Neighbours, Stage1Scores, score_neighbours

logger = logging.getLogger("wbia_lightglue")

# auto: beyond this many annotations the per-descriptor index (IVF 8-bit + the raw descriptors, ~4 GB in memory at
# 10^4 x 1,500 descriptors) gives way to the aggregated one (VLAD candidates + LNBNN over them, :mod:`.aggregated`)
AUTO_AGGREGATED_ANNOTATIONS = 10_000
AUTO_IVF_VECTORS = 100_000  # exact flat search below: a 1,000-descriptor query costs ~0.3 s of one core there
MAX_LISTS = 4096  # IVF lists: 4 sqrt(vectors), at most this (k-means training time grows with lists x sample)
TRAIN_PER_LIST = 64  # training vectors per list (FAISS wants at least 39)
RETRAIN_GROWTH = 8  # an IVF index is rebuilt (re-trained) when the vectors have grown this much since training
PQ_BYTES = 32  # ivfpq: bytes per vector (vs 128 for the 8-bit scalar quantiser)
INDEX_FORMAT = 1
KINDS = ("flat", "ivf", "ivfpq")
SPOT_CHECKS = 256  # stored vectors of a flat index compared with the raw descriptors at load


class Stage1Index:
    """A FAISS kNN index over the stage-1 SIFT descriptors of a set of annotations, keyed by strings.

    Raw uint8 descriptors and keypoints are kept per annotation (128 + 8 bytes a descriptor), so the
    index can be rebuilt, re-trained and saved without re-extracting.
    """

    def __init__(self, config: ConfigLike = None, *, device: Any = None):
        config = resolve_config(config)
        self.kind_setting: str = config["shortlist_index"]
        self.fingerprint: str = config.shortlist_fingerprint
        self.nprobe = int(config["shortlist_nprobe"])
        self.k = int(config["shortlist_knn"])
        self.spatial = bool(config["shortlist_spatial"])
        self.device = device
        self._desc: Dict[str, np.ndarray] = {}
        self._xy: Dict[str, np.ndarray] = {}
        self._faiss: Any = None
        self._kind = ""  # the built kind: flat, ivf or ivfpq
        self._trained_on = 0
        self._slots: List[str] = []  # slot -> key (slots of removed keys stay, pointing at nothing)
        self._slot_of: Dict[str, int] = {}
        self._owner = np.zeros(0, np.int64)  # FAISS id -> slot
        self._vec_xy = np.zeros((0, 2), np.float32)  # FAISS id -> keypoint (x, y)
        self._gpu: Any = None  # torch copy of the flat vectors on CUDA, built lazily

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._desc)

    def __contains__(self, key: object) -> bool:
        return key in self._desc

    @property
    def keys(self) -> List[str]:
        return list(self._desc)

    @property
    def num_vectors(self) -> int:
        return int(self._faiss.ntotal) if self._faiss is not None else 0

    @property
    def kind(self) -> str:
        return self._kind

    def index_bytes(self) -> int:
        """Bytes of the FAISS index itself (serialised size; raw descriptors kept beside it not counted)."""
        import faiss

        return 0 if self._faiss is None else int(faiss.serialize_index(self._faiss).nbytes)

    def raw_bytes(self) -> int:
        return sum(d.nbytes for d in self._desc.values()) + sum(x.nbytes for x in self._xy.values())

    def _wanted_kind(self, vectors: int) -> str:
        # "aggregated" is AggregatedIndex's; a per-descriptor index built under it (a Ray shard) picks as auto
        if self.kind_setting not in ("auto", "aggregated"):
            return self.kind_setting
        return "flat" if vectors < AUTO_IVF_VECTORS else "ivf"

    def add(self, keys: Sequence[str], features: Sequence[Mapping[str, Any]]) -> int:
        """Add annotations (a key already present is replaced); returns the number added.

        Appends to the FAISS index; rebuilds only when the index kind must change or an IVF index has
        outgrown its training.
        """
        if len(keys) != len(features):
            raise ValueError(f"{len(keys)} keys but {len(features)} feature sets")
        replaced = [k for k in keys if k in self._desc]
        if replaced:
            self.remove(replaced)
        new_keys, new_desc, new_xy = [], [], []
        for key, feats in zip(keys, features):
            desc = np.ascontiguousarray(feats["descriptors"], np.uint8)
            if desc.ndim != 2 or desc.shape[1] != DIM:
                raise ValueError(f"annotation {key!r}: stage-1 descriptors must be [N x {DIM}], got {desc.shape}")
            self._desc[key] = desc
            self._xy[key] = np.asarray(feats["keypoints"], np.float32).reshape(-1, 2)
            new_keys.append(key)
            new_desc.append(desc)
            new_xy.append(self._xy[key])
        total = self.num_vectors + sum(len(d) for d in new_desc)
        kind = self._wanted_kind(total)
        outgrown = kind != "flat" and total >= RETRAIN_GROWTH * max(1, self._trained_on)
        if self._faiss is None or kind != self._kind or outgrown:
            self._rebuild()
        else:
            self._append(new_keys, new_desc, new_xy)
        return len(new_keys)

    def remove(self, keys: Collection[str]) -> int:
        """Drop annotations (unknown keys are ignored); returns the number removed."""
        import faiss

        gone = [k for k in keys if k in self._desc]
        if not gone:
            return 0
        slots = np.asarray([self._slot_of.pop(k) for k in gone], np.int64)
        for key in gone:
            del self._desc[key], self._xy[key]
        ids = np.flatnonzero(np.isin(self._owner, slots)).astype(np.int64)
        if self._kind == "flat":
            # IndexFlat renumbers on removal: keep the id -> slot arrays in step
            keep = np.ones(len(self._owner), bool)
            keep[ids] = False
            self._faiss.remove_ids(faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids)))
            self._owner, self._vec_xy = self._owner[keep], self._vec_xy[keep]
        elif len(ids):
            self._faiss.remove_ids(faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids)))  # IVF ids are stable
            self._owner[ids] = -1
        self._gpu = None
        return len(gone)

    def _append(self, keys: List[str], descs: List[np.ndarray], xys: List[np.ndarray]) -> None:
        if not keys:
            return
        owner = []
        for key, desc in zip(keys, descs):
            self._slot_of[key] = len(self._slots)
            self._slots.append(key)
            owner.append(np.full(len(desc), self._slot_of[key], np.int64))
        start = len(self._owner)
        self._owner = np.concatenate([self._owner, *owner])
        self._vec_xy = np.concatenate([self._vec_xy, *xys]).astype(np.float32)
        # float32 in steps of ~64 MiB: one float copy of a large database would take 4x its raw size
        step, pending, count = 1 << 17, [], 0
        for pos, desc in enumerate(descs):
            pending.append(desc)
            count += len(desc)
            if pending and (count >= step or pos == len(descs) - 1):
                vectors = np.concatenate(pending).astype(np.float32)
                if self._kind == "flat":
                    self._faiss.add(vectors)
                else:
                    self._faiss.add_with_ids(vectors, np.arange(start, start + len(vectors), dtype=np.int64))
                start += len(vectors)
                pending, count = [], 0
        self._gpu = None

    def _rebuild(self) -> None:
        """Build the FAISS index from scratch from the kept raw descriptors (training IVF on them)."""
        import faiss

        keys = list(self._desc)
        total = sum(len(self._desc[k]) for k in keys)
        kind = self._wanted_kind(total)
        if kind == "flat":
            index = faiss.IndexFlatL2(DIM)
        else:
            nlist = int(max(1, min(MAX_LISTS, 2 ** round(np.log2(max(1.0, 4 * np.sqrt(total)))))))
            nlist = max(1, min(nlist, total // 39)) if total >= 39 else 1  # FAISS wants >= 39 points per list
            quantizer = faiss.IndexFlatL2(DIM)
            if kind == "ivf":
                index = faiss.IndexIVFScalarQuantizer(quantizer, DIM, nlist, faiss.ScalarQuantizer.QT_8bit)
            else:
                index = faiss.IndexIVFPQ(quantizer, DIM, nlist, PQ_BYTES, 8)
            raw = np.concatenate([self._desc[k] for k in keys]) if keys else np.zeros((0, DIM), np.uint8)
            if len(raw) < max(nlist, 256 if kind == "ivfpq" else 1):
                raise ConfigError(f"shortlist_index {kind!r} needs more vectors to train ({len(raw)} present)")
            rng = np.random.default_rng(0)  # deterministic training: the same vectors give the same index
            limit = TRAIN_PER_LIST * nlist if kind == "ivf" else max(TRAIN_PER_LIST * nlist, 65536)
            if len(raw) > limit:
                raw = raw[np.sort(rng.choice(len(raw), limit, replace=False))]
            sample = raw.astype(np.float32)  # sampled first: float32 copies of every vector would be 4x the raw
            index.quantizer_trains_alone = 0
            index.train(sample)
            index.nprobe = min(self.nprobe, nlist)
            self._trained_on = total
            logger.info("stage-1 index: %s, %d lists, trained on %d vectors", kind, nlist, len(sample))
        self._faiss, self._kind = index, kind
        self._slots, self._slot_of = [], {}
        self._owner, self._vec_xy = np.zeros(0, np.int64), np.zeros((0, 2), np.float32)
        self._append(keys, [self._desc[k] for k in keys], [self._xy[k] for k in keys])

    # ------------------------------------------------------------------ search
    def knn(self, vectors: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        """(distances, FAISS ids) of the k nearest database vectors of each row; id -1 = none.

        Distances are L2 (not squared). Exact on a flat index; on CUDA the flat search runs in torch.
        """
        vectors = np.ascontiguousarray(vectors, np.float32)
        if self._faiss is None or self.num_vectors == 0 or len(vectors) == 0:
            return np.zeros((len(vectors), k), np.float32), np.full((len(vectors), k), -1, np.int64)
        if self._kind == "flat" and self._use_torch():
            return self._torch_knn(vectors, k)
        dist, ids = self._faiss.search(vectors, k)
        return np.sqrt(np.maximum(dist, 0)), ids

    def _use_torch(self) -> bool:
        if self.device is None:
            return False
        return str(self.device).startswith("cuda") or str(self.device) == "torch-cpu"

    def _torch_knn(self, vectors: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
        import torch

        device = torch.device("cpu" if str(self.device) == "torch-cpu" else str(self.device))
        if self._gpu is None:
            flat = self._faiss.reconstruct_n(0, self.num_vectors)
            base = torch.from_numpy(flat).to(device)
            self._gpu = (base, (base * base).sum(1))
        base, norms = self._gpu
        query = torch.from_numpy(vectors).to(device)
        k_eff = min(k, base.shape[0])
        dists: List[np.ndarray] = []
        ids: List[np.ndarray] = []
        for start in range(0, len(query), 4096):
            q = query[start:start + 4096]
            d2 = (q * q).sum(1, keepdim=True) - 2 * q @ base.T + norms[None]
            top_val, top_idx = torch.topk(d2, k_eff, dim=1, largest=False, sorted=True)
            dists.append(top_val.clamp_min(0).sqrt().cpu().numpy())
            ids.append(top_idx.cpu().numpy().astype(np.int64))
        dist, idx = np.concatenate(dists), np.concatenate(ids)
        if k_eff < k:
            dist = np.pad(dist, ((0, 0), (0, k - k_eff)))
            idx = np.pad(idx, ((0, 0), (0, k - k_eff)), constant_values=-1)
        return dist, idx

    def fetch(self, exclude: Collection[str] = ()) -> int:
        """Neighbours a search fetches per query descriptor: K + 1, twice that when a key of ``exclude`` is here."""
        return self.k + 1 + (self.k + 1 if any(k in self._slot_of for k in exclude) else 0)

    def neighbours(self, features: Mapping[str, Any], fetch: int) -> Neighbours:
        """The ``fetch`` nearest database descriptors of each query descriptor, as slots of ``slot_keys``."""
        desc = np.asarray(features["descriptors"], np.uint8)
        dist, ids = self.knn(desc.astype(np.float32), fetch)
        slots = np.where(ids >= 0, self._owner[np.maximum(ids, 0)], -1)
        xy = np.where((ids >= 0)[..., None], self._vec_xy[np.maximum(ids, 0)], 0) if len(self._vec_xy) else \
            np.zeros(ids.shape + (2,), np.float32)
        return Neighbours(dist, slots, xy.astype(np.float32))

    @property
    def slot_keys(self) -> List[str]:
        """Slot -> key (a removed key's slot keeps its name; no neighbour points at it)."""
        return list(self._slots)

    def search(self, features: Mapping[str, Any], exclude: Collection[str] = (),
               spatial_top: int = 50) -> Stage1Scores:
        """LNBNN scores of every indexed annotation for the query ``features`` (:mod:`.lnbnn`).

        ``exclude``: keys never voted for (e.g. the query itself when it is in the database); their
        neighbours are skipped, and more neighbours are fetched so the K + 1 are still filled.
        """
        desc = np.asarray(features["descriptors"], np.uint8)
        if len(desc) == 0 or self.num_vectors == 0:
            return Stage1Scores({key: 0.0 for key in self._desc}, 0)
        return score_neighbours(self.neighbours(features, self.fetch(exclude)), features, self._slots, self._slot_of,
                                self._desc, self.k, exclude, self.spatial, spatial_top)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Union[str, Path]) -> Path:
        """Write the index (FAISS index, raw descriptors, keys) to one ``.npz`` file, atomically."""
        import faiss

        keys = list(self._desc)
        counts = np.asarray([len(self._desc[k]) for k in keys], np.int64)
        arrays = {
            "format": np.asarray(INDEX_FORMAT), "fingerprint": np.asarray(self.fingerprint),
            "keys": np.asarray(keys, dtype=object).astype(str) if keys else np.zeros(0, "<U1"),
            "counts": counts,
            "descriptors": np.concatenate([self._desc[k] for k in keys]) if keys else np.zeros((0, DIM), np.uint8),
            "keypoints": np.concatenate([self._xy[k] for k in keys]) if keys else np.zeros((0, 2), np.float32),
            "slots": np.asarray(self._slots, dtype=str) if self._slots else np.zeros(0, "<U1"),
            "owner": self._owner, "vec_xy": self._vec_xy, "kind": np.asarray(self._kind),
            "trained_on": np.asarray(self._trained_on),
            "faiss": faiss.serialize_index(self._faiss) if self._faiss is not None else np.zeros(0, np.uint8),
        }
        return atomic_write(Path(path), lambda out: np.savez(out, **arrays))

    @classmethod
    def load(cls, path: Union[str, Path], config: ConfigLike = None, *, device: Any = None) -> "Stage1Index":
        """Read a saved index; ValueError when it was built under another stage-1 config or is unreadable.

        Unreadable covers a damaged file (truncated, flipped bytes: zip CRCs, FAISS's own checks) and a
        well-formed file whose arrays disagree with each other (``_check_whole``): every array's dtype and
        shape, the keys against the counts and descriptors, the FAISS id -> annotation map against the
        counts, the stored keypoints against the raw ones, and a sample of a flat index's vectors against
        the raw descriptors.
        """
        import faiss

        config = resolve_config(config)
        index = cls(config, device=device)
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != INDEX_FORMAT or str(data["fingerprint"]) != index.fingerprint:
                    raise _ForeignIndex(f"stage-1 index {path} was built with another config "
                                     f"(fingerprint {data['fingerprint']}, expected {index.fingerprint})")
                arrays = {name: data[name] for name in ("keys", "counts", "descriptors", "keypoints", "slots",
                                                         "owner", "vec_xy", "kind", "trained_on", "faiss")}
            problem = _array_problem(arrays)
            if problem is None:
                keys = [str(k) for k in arrays["keys"]]
                bounds = np.concatenate([[0], np.cumsum(arrays["counts"])])
                desc, xy = arrays["descriptors"], arrays["keypoints"]
                for i, key in enumerate(keys):
                    index._desc[key] = desc[bounds[i]:bounds[i + 1]]
                    index._xy[key] = xy[bounds[i]:bounds[i + 1]]
                index._slots = [str(s) for s in arrays["slots"]]
                index._owner, index._vec_xy = arrays["owner"], arrays["vec_xy"]
                index._kind, index._trained_on = str(arrays["kind"]), int(arrays["trained_on"])
                blob = arrays["faiss"]
                index._faiss = faiss.deserialize_index(blob) if blob.size else None
                index._slot_of = {k: i for i, k in enumerate(index._slots) if k in index._desc}
                problem = index._whole_problem()
        except _ForeignIndex:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged file raises BadZipFile, EOFError, KeyError, OSError,
            # numpy's ValueError (not an npy/npz, "pickled data"), FAISS's RuntimeError, MemoryError (a flipped
            # size) ...: all mean "rebuild it"
            raise ValueError(f"stage-1 index {path} is unreadable ({type(exc).__name__}: {str(exc)[:100]})") from exc
        if problem is not None:
            raise ValueError(f"stage-1 index {path} is damaged ({problem})")
        if index._faiss is not None and index._kind != "flat":
            index._faiss.nprobe = min(index.nprobe, index._faiss.nlist)
        return index

    def _whole_problem(self) -> Optional[str]:
        """Why the loaded index's parts disagree (None when they agree); the arrays' own shapes were checked."""
        total = sum(len(d) for d in self._desc.values())
        if self._faiss is None:
            return None if total == 0 and len(self._owner) == 0 else "no FAISS index but stored vectors"
        if self._faiss.d != DIM:
            return f"FAISS index of dimension {self._faiss.d}, expected {DIM}"
        live = self._owner >= 0
        if self._kind == "flat" and not live.all():
            return "flat index with removed ids"
        if int(self._faiss.ntotal) != int(live.sum()) or int(live.sum()) != total:
            return f"{self._faiss.ntotal} FAISS vectors, {int(live.sum())} owned, {total} raw descriptors"
        if len(self._owner) and int(self._owner.max()) >= len(self._slots):
            return "an owner beyond the slots"
        expected = np.zeros(len(self._slots), np.int64)
        for key, desc in self._desc.items():
            if key not in self._slot_of:
                return f"annotation {key!r} has no slot"
            expected[self._slot_of[key]] = len(desc)
        if not np.array_equal(np.bincount(self._owner[live], minlength=len(self._slots)), expected):
            return "the FAISS id -> annotation map disagrees with the counts"
        # the i-th id owned by a slot is its annotation's i-th descriptor / keypoint (ids are appended in order)
        ids = np.flatnonzero(live)
        slot = self._owner[ids]
        order = np.argsort(slot, kind="stable")
        starts = np.concatenate([[0], np.cumsum(expected)])[:-1]
        rank = np.empty(len(ids), np.int64)
        rank[order] = np.arange(len(ids)) - starts[slot[order]]
        offsets, at = np.zeros(len(self._slots), np.int64), 0
        for key in self._desc:  # raw arrays concatenated in key order
            offsets[self._slot_of[key]] = at
            at += len(self._desc[key])
        raw_pos = offsets[slot] + rank
        raw_xy = np.concatenate([self._xy[k] for k in self._desc]) if self._desc else np.zeros((0, 2), np.float32)
        if not np.array_equal(self._vec_xy[ids], raw_xy[raw_pos]):
            return "stored keypoints disagree with the raw ones"
        if self._kind == "flat" and len(ids):
            raw = np.concatenate(list(self._desc.values()))
            sample = np.unique(np.linspace(0, len(ids) - 1, min(SPOT_CHECKS, len(ids))).astype(np.int64))
            stored = np.stack([self._faiss.reconstruct(int(ids[i])) for i in sample])
            if not np.array_equal(stored, raw[raw_pos[sample]].astype(np.float32)):
                return "FAISS vectors disagree with the raw descriptors"
        return None

    def sync(self, keys: Sequence[str], features_of: Any) -> Tuple[int, int]:
        """Make the index hold exactly ``keys``: remove the others, add the missing ones.

        ``features_of(missing_keys)`` returns their stage-1 features. Returns (added, removed).
        """
        wanted = set(keys)
        removed = self.remove([k for k in self._desc if k not in wanted])
        missing = [k for k in dict.fromkeys(keys) if k not in self._desc]
        added = self.add(missing, features_of(missing)) if missing else 0
        if self._faiss is None:
            self._rebuild()
        return added, removed


class _ForeignIndex(ValueError):
    """A readable index file built under another stage-1 config (or format version)."""


def _array_problem(arrays: Mapping[str, np.ndarray]) -> Optional[str]:
    """Why the arrays of a saved index cannot be one (None when dtypes, shapes and counts agree)."""
    keys, counts, desc, xy = arrays["keys"], arrays["counts"], arrays["descriptors"], arrays["keypoints"]
    owner, vec_xy, slots = arrays["owner"], arrays["vec_xy"], arrays["slots"]
    checks = [
        (keys.ndim == 1 and keys.dtype.kind == "U", f"keys {keys.dtype} {keys.shape}"),
        (counts.shape == keys.shape and counts.dtype == np.int64, f"counts {counts.dtype} {counts.shape}"),
        (desc.dtype == np.uint8 and desc.ndim == 2 and desc.shape[1] == DIM, f"descriptors {desc.dtype} {desc.shape}"),
        (xy.dtype == np.float32 and xy.shape == (len(desc), 2), f"keypoints {xy.dtype} {xy.shape}"),
        (slots.ndim == 1 and slots.dtype.kind == "U", f"slots {slots.dtype} {slots.shape}"),
        (owner.dtype == np.int64 and owner.ndim == 1, f"owner {owner.dtype} {owner.shape}"),
        (vec_xy.dtype == np.float32 and vec_xy.shape == (len(owner), 2), f"vec_xy {vec_xy.dtype} {vec_xy.shape}"),
        (arrays["faiss"].dtype == np.uint8 and arrays["faiss"].ndim == 1, "faiss blob"),
        (arrays["kind"].shape == () and str(arrays["kind"]) in KINDS + ("",), f"kind {arrays['kind']!r}"),
        (arrays["trained_on"].shape == () and arrays["trained_on"].dtype.kind in "iu", "trained_on"),
    ]
    for ok, what in checks:
        if not ok:
            return f"bad array: {what}"
    if len(set(keys.tolist())) != len(keys):
        return "a key appears twice"
    if (counts < 0).any() or int(counts.sum()) != len(desc):
        return f"counts sum to {int(counts.sum())} for {len(desc)} descriptors"
    if len(owner) and int(owner.min()) < -1:
        return "a negative owner"
    if not (np.isfinite(xy).all() and np.isfinite(vec_xy).all()):
        return "non-finite keypoints"
    return None


AnyIndex = Union[Stage1Index, AggregatedIndex]


def wanted_class(config: Config, annotations: int) -> type:
    """The index class for ``annotations`` under ``shortlist_index``: ``aggregated`` (or ``auto`` beyond
    ``AUTO_AGGREGATED_ANNOTATIONS``) -> :class:`AggregatedIndex`, else :class:`Stage1Index`."""
    setting = config["shortlist_index"]
    if setting == "aggregated" or (setting == "auto" and annotations > AUTO_AGGREGATED_ANNOTATIONS):
        return AggregatedIndex
    return Stage1Index


def load_index(path: Union[str, Path], config: ConfigLike = None, *, device: Any = None) -> AnyIndex:
    """A saved stage-1 index of either class (its ``kind`` says which); ValueError as their ``load``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            kind = str(data["kind"])
    except Exception as exc:  # noqa: BLE001 - unreadable: the caller rebuilds it
        raise ValueError(f"stage-1 index {path} is unreadable ({type(exc).__name__}: {str(exc)[:100]})") from exc
    if kind == AggregatedIndex.kind:
        return AggregatedIndex.load(path, config, device=device)
    return Stage1Index.load(path, config, device=device)


@contextmanager
def _writer_lock(path: Optional[Path]) -> Iterator[None]:
    """One process at a time loads, syncs and saves an index in ``path``'s folder (an aggregated index appends to
    its vectors file in place: two writers would interleave). The folder itself is locked: no lock file."""
    if path is None:
        yield
        return
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(folder, fcntl.LOCK_EX)
        yield
    finally:
        os.close(folder)  # releases the lock


def synced_index(path: Optional[Path], config: Config, keys: Sequence[str],
                 features_of: Callable[[List[str]], Sequence[Mapping[str, Any]]], *,
                 index: Optional[AnyIndex] = None, device: Any = None) -> Tuple[AnyIndex, int, int]:
    """The index saved at ``path``, brought in step with ``keys``, and saved again when it changed.

    Load -> sync -> save, the one implementation (the standalone store and WBIA's database both use it):
    a file built under another stage-1 config, or damaged (truncated, flipped bytes, garbage arrays), is
    reported once with its path and rebuilt; a failed save (full disk, read-only) warns and the run goes on
    with the index in memory. Temporary files of a save killed midway (``atomic_write``'s, older than
    ``STALE_TEMP_SECONDS``) are removed from the folder. ``path`` None: in memory only. ``index``: one
    already live in this process (then the file is not read). Returns (index, added, removed).
    """
    if path is not None:
        removed_temp = remove_stale_temp_files(path.parent, STALE_TEMP_SECONDS)
        if removed_temp:
            logger.info("stage-1 index folder %s: removed %d temporary file(s) of a killed save", path.parent,
                        removed_temp)
    with _writer_lock(path):
        if index is None and path is not None and path.is_file():
            try:
                index = load_index(path, config, device=device)
            except ValueError as exc:
                logger.warning("%s; rebuilding it", exc)
        wanted = wanted_class(config, len(set(keys)))
        if index is not None and not isinstance(index, wanted):
            logger.info("stage-1 index: %d annotations, rebuilding it as %s", len(set(keys)), wanted.__name__)
            index = None
        if index is None:
            index = AggregatedIndex(config, device=device, home=path) if wanted is AggregatedIndex else \
                Stage1Index(config, device=device)
        added, removed = index.sync(list(keys), features_of)
        if path is not None and (added or removed or not path.is_file()) and not (
                isinstance(index, AggregatedIndex) and index.empty):
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                index.save(path)
            except OSError as exc:
                logger.warning("stage-1 index %s could not be saved (%s); it is rebuilt next time", path, exc)
    return index, added, removed


def stage1_device(config: Config, device: Any = None) -> Optional[str]:
    """Where the exact stage-1 search runs: 'cuda...' (torch / faiss-gpu) or None (FAISS on CPU)."""
    from ..device import resolve_device

    resolved = resolve_device(config, device)
    return str(resolved) if resolved.type == "cuda" else None


def build_index(keys: Sequence[str], features: Sequence[Mapping[str, Any]], config: ConfigLike = None, *,
                device: Any = None) -> AnyIndex:
    """A new index of ``keys`` (a convenience for one-shot use), of the class ``shortlist_index`` wants."""
    config = resolve_config(config)
    if wanted_class(config, len(keys)) is AggregatedIndex:
        aggregated = AggregatedIndex(config, device=device)
        aggregated.add(list(keys), list(features))
        return aggregated
    return build_descriptor_index(keys, features, config, device=device)


def build_descriptor_index(keys: Sequence[str], features: Sequence[Mapping[str, Any]], config: ConfigLike = None, *,
                           device: Any = None) -> Stage1Index:
    """A new per-descriptor index of ``keys`` whatever the size (a shard of a database sharded across actors)."""
    index = Stage1Index(config, device=device)
    index.add(list(keys), list(features))
    if index._faiss is None:
        index._rebuild()
    return index
