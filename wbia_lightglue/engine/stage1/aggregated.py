"""Stage 1 at catalogue scale: one aggregated vector per annotation picks candidates, LNBNN ranks them.

Per-descriptor voting over a whole catalogue does not fit one machine at the default stage-1 settings (~1,500
Hessian-affine descriptors an annotation: 1.5 x 10^8 vectors at 10^5 annotations, 19 GB raw, 77 GB as the
float32 FAISS wants). This index keeps in memory only one VLAD vector per annotation (64 visual words x 128 =
8,192 dimensions, power- and intra-normalised, float16 in FAISS: 16 KiB an annotation) and keeps the
descriptors themselves on disk, append-only. A query:

1. its VLAD vector is compared with every annotation's (inner product, FAISS scalar-quantised flat scan);
2. the top ``candidates`` annotations' descriptors are read from disk and LNBNN (:mod:`.lnbnn`, then the
   spatial check) scores them as :class:`~.index.Stage1Index` scores a database; annotations outside the
   candidates score 0. The K + 1 neighbours of a query descriptor are looked for among the candidates'
   descriptors of its ``probes`` nearest visual words (the words VLAD already uses; all 64 = exact kNN):
   ~20x less work than exact kNN, so that more candidates fit a query's time.

So the scores of the candidates are LNBNN over the candidates' descriptors (the normaliser is the K+1-th
neighbour among them, not among the whole catalogue): ``benchmarks/scale.py`` measures how far its top 20
are from exact LNBNN over every vector.

Files: ``<path>`` (a small ``.npz``: keys, offsets, vocabulary, and the names of the two sidecars),
``<stem>.<n>.vectors`` (descriptors + keypoints, append-only; a new name only when compacted) and
``<stem>.<n>.vlad`` (the FAISS index of VLAD vectors, rewritten on each save). The ``.npz`` is replaced
atomically after its sidecars are complete, so a killed save leaves the previous index readable; sidecars
no ``.npz`` names are removed at the next save. Adding annotations appends to the vectors file and the VLAD
index (nothing is re-trained: the vocabulary is fixed when the index is first filled); removing marks their
bytes dead, and the vectors file is compacted when more than half of it is dead.

This module is over 400 lines because the in-memory VLAD index, the vectors file and the saved ``.npz`` share
private state (rows, offsets, the file's owned length) that search, growth, compaction and the load checks all
keep in step; the voting itself is :mod:`.lnbnn`'s.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import (
    Any,
    Callable,
    Collection,
    Dict,
    Iterator,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

import numpy as np

from ...files import atomic_write
from ..config import ConfigError, ConfigLike, resolve_config
from .features import DIM
from .lnbnn import Neighbours, Stage1Scores, score_neighbours

logger = logging.getLogger("wbia_lightglue")

WORDS = 64  # VLAD visual words: 8,192 dimensions (16 KiB an annotation in float16)
# Chosen on the left flanks of ../shared/data/nyala (benchmarks/aggregated_settings.py: 599 photos, 40 queries;
# benchmarks/scale.py reports on right flanks): 100 / 200 / 400 candidates kept 0.40 / 0.56 / 0.71 of exact
# LNBNN's top 20 (3 probes); at 400, probes 2 / 3 / 5 kept 0.66 / 0.71 / 0.75 for 0.66 / 0.73 / 1.04 s a query.
CANDIDATES = 400  # annotations LNBNN re-scores per query
PROBES = 3  # words a query descriptor's neighbours are looked for in (of WORDS; WORDS = exact kNN)
TRAIN_SAMPLE = 100_000  # descriptors the vocabulary is trained on (k-means, deterministic)
MIN_TRAIN = WORDS * 8  # fewer descriptors than this cannot train a vocabulary
ADD_CHUNK = 500  # annotations whose features are asked for at once while building: memory follows the chunk
RECORD = DIM + 8 + 1  # bytes a descriptor takes in the vectors file: 128 uint8, keypoint (x, y) float32, its word
FORMAT = 2
SPOT_CHECKS = 4  # annotations whose VLAD vector is recomputed from the vectors file at load


class AggregatedIndex:
    """Stage-1 index for catalogues: VLAD candidates, then LNBNN over the candidates' descriptors (on disk)."""

    kind = "aggregated"

    def __init__(self, config: ConfigLike = None, *, device: Any = None, candidates: int = CANDIDATES,
                 probes: int = PROBES, home: Optional[Path] = None):
        """``home``: where the index will be saved; its vectors file is written beside it from the start (else in
        a private temporary folder, copied there at the first ``save``)."""
        config = resolve_config(config)
        self.fingerprint: str = config.shortlist_fingerprint
        self.k = int(config["shortlist_knn"])
        self.spatial = bool(config["shortlist_spatial"])
        self.candidates = int(candidates)
        self.probes = int(probes)
        self.device = device  # the kNN of a query against its candidates runs in FAISS on CPU whatever the device
        self._keys: List[str] = []  # row of the VLAD index -> key
        self._row: Dict[str, int] = {}
        self._offset = np.zeros(0, np.int64)  # row -> byte offset in the vectors file
        self._count = np.zeros(0, np.int64)  # row -> descriptors
        self._centroids: Optional[np.ndarray] = None  # [WORDS x DIM] float32
        self._vlad: Any = None  # FAISS IndexScalarQuantizer (fp16, inner product), one vector per row
        self._vectors: Optional[Path] = None  # the vectors file
        self._vectors_end = 0  # bytes of it this index owns (a killed writer's tail beyond is ignored)
        self._dead = 0  # bytes of removed annotations still in the vectors file
        self._scratch: Optional[str] = None  # a private folder holding the vectors file until the first save
        self._home = Path(home) if home is not None else None
        self._handle: Any = None

    # ------------------------------------------------------------------ contents
    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._row

    @property
    def keys(self) -> List[str]:
        return list(self._keys)

    @property
    def empty(self) -> bool:
        """Never filled: no vocabulary yet (nothing to save)."""
        return self._vlad is None

    @property
    def num_vectors(self) -> int:
        return int(self._count.sum())

    def index_bytes(self) -> int:
        """Bytes held in memory for search: the VLAD codes plus the per-annotation arrays."""
        codes = 0 if self._vlad is None else int(self._vlad.ntotal) * int(self._vlad.code_size)
        return codes + self._offset.nbytes + self._count.nbytes + WORDS * DIM * 4

    def raw_bytes(self) -> int:
        """Bytes of live descriptors + keypoints in the vectors file (on disk, not in memory)."""
        return self.num_vectors * RECORD

    # ------------------------------------------------------------------ building
    def add(self, keys: Sequence[str], features: Sequence[Mapping[str, Any]]) -> int:
        """Add annotations (a key already present is replaced); returns the number added."""
        if len(keys) != len(features):
            raise ValueError(f"{len(keys)} keys but {len(features)} feature sets")
        descs, xys = [], []
        for key, feats in zip(keys, features):
            desc = np.ascontiguousarray(feats["descriptors"], np.uint8)
            if desc.ndim != 2 or desc.shape[1] != DIM:
                raise ValueError(f"annotation {key!r}: stage-1 descriptors must be [N x {DIM}], got {desc.shape}")
            xy = np.ascontiguousarray(feats["keypoints"], np.float32).reshape(-1, 2)
            if len(xy) != len(desc):
                raise ValueError(f"annotation {key!r}: {len(xy)} keypoints for {len(desc)} descriptors")
            descs.append(desc)
            xys.append(xy)
        if not keys:
            return 0
        if len(set(keys)) != len(keys):
            raise ValueError("a key appears twice among the annotations added")
        self.remove([k for k in keys if k in self._row])
        if self._centroids is None:
            self._train(descs)
        vlads, words = self.encode(descs)
        handle = self._writer()
        handle.seek(self._vectors_end)
        handle.truncate()  # a tail a killed writer left beyond what the index owns
        offsets = np.empty(len(keys), np.int64)
        for i, (desc, xy, word) in enumerate(zip(descs, xys, words)):
            offsets[i] = handle.tell()
            handle.write(desc.tobytes())
            handle.write(xy.tobytes())
            handle.write(word.tobytes())
        handle.flush()
        self._vectors_end = handle.tell()
        start = len(self._keys)
        self._keys.extend(keys)
        self._row.update({key: start + i for i, key in enumerate(keys)})
        self._offset = np.concatenate([self._offset, offsets])
        self._count = np.concatenate([self._count, np.asarray([len(d) for d in descs], np.int64)])
        self._vlad.add(vlads)
        return len(keys)

    def add_stream(self, keys: Sequence[str], features_of: Callable[[List[str]], Sequence[Mapping[str, Any]]],
                   chunk: int = ADD_CHUNK, progress: Optional[Callable[[int], None]] = None) -> int:
        """``add`` in chunks of ``chunk`` annotations, asking ``features_of(chunk_keys)`` for each: a build
        holds one chunk of descriptors in memory, not the whole database."""
        added = 0
        for start in range(0, len(keys), chunk):
            part = list(keys[start:start + chunk])
            added += self.add(part, features_of(part))
            if progress is not None:
                progress(len(part))
        return added

    def remove(self, keys: Collection[str]) -> int:
        """Drop annotations (unknown keys are ignored); returns the number removed."""
        rows = sorted({self._row[k] for k in keys if k in self._row})
        if not rows:
            return 0
        import faiss

        ids = np.asarray(rows, np.int64)
        self._vlad.remove_ids(faiss.IDSelectorBatch(len(ids), faiss.swig_ptr(ids)))  # renumbers like a flat index
        self._dead += int(self._count[ids].sum()) * RECORD
        keep = np.ones(len(self._keys), bool)
        keep[ids] = False
        self._keys = [k for k, kept in zip(self._keys, keep) if kept]
        self._row = {k: i for i, k in enumerate(self._keys)}
        self._offset, self._count = self._offset[keep], self._count[keep]
        if self._dead * 2 > self._vectors_end:
            self._compact()
        return len(rows)

    def sync(self, keys: Sequence[str], features_of: Callable[[List[str]], Sequence[Mapping[str, Any]]]
             ) -> Tuple[int, int]:
        """Make the index hold exactly ``keys`` (features asked for a chunk at a time); returns (added, removed)."""
        from tqdm.auto import tqdm

        wanted = set(keys)
        removed = self.remove([k for k in self._keys if k not in wanted])
        missing = [k for k in dict.fromkeys(keys) if k not in self._row]
        with tqdm(total=len(missing), desc="stage-1 index", unit="annot", disable=len(missing) <= ADD_CHUNK) as bar:
            added = self.add_stream(missing, features_of, progress=bar.update)
        return added, removed

    def _train(self, descs: Sequence[np.ndarray]) -> None:
        import faiss

        pool = np.concatenate(descs) if descs else np.zeros((0, DIM), np.uint8)
        if len(pool) < MIN_TRAIN:
            raise ConfigError(f"shortlist_index 'aggregated' needs at least {MIN_TRAIN} descriptors to train its "
                              f"vocabulary ({len(pool)} in the first annotations added)")
        rng = np.random.default_rng(0)  # the same first annotations give the same vocabulary
        if len(pool) > TRAIN_SAMPLE:
            pool = pool[np.sort(rng.choice(len(pool), TRAIN_SAMPLE, replace=False))]
        kmeans = faiss.Kmeans(DIM, WORDS, niter=20, seed=1234, verbose=False)
        kmeans.train(pool.astype(np.float32))
        self._centroids = np.ascontiguousarray(kmeans.centroids, np.float32)
        self._vlad = faiss.IndexScalarQuantizer(WORDS * DIM, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
        logger.info("stage-1 aggregated index: %d-word vocabulary trained on %d descriptors", WORDS, len(pool))

    def vlad(self, descs: Sequence[np.ndarray]) -> np.ndarray:
        """The VLAD vector of each descriptor set: [len(descs) x WORDS*DIM] float32, unit length (0 if empty)."""
        return self.encode(descs)[0]

    def encode(self, descs: Sequence[np.ndarray]) -> Tuple[np.ndarray, List[np.ndarray]]:
        """(VLAD vectors [len(descs) x WORDS*DIM] float32, each descriptor's nearest word (uint8) per set).

        VLAD: residuals to the nearest word summed per word, signed square root, each word's block
        L2-normalised (intra-normalisation: no single bursty word dominates), then the whole vector.
        """
        from scipy.sparse import csr_matrix

        assert self._centroids is not None
        words: List[np.ndarray] = []
        out = np.zeros((len(descs), WORDS, DIM), np.float32)
        counts = np.asarray([len(d) for d in descs], np.int64)
        if counts.sum():
            flat = np.concatenate(descs).astype(np.float32)
            # nearest word = argmax of 2 x.c - |c|^2: one BLAS product
            word = np.argmax(flat @ (2 * self._centroids.T) - (self._centroids ** 2).sum(1), axis=1)
            words = np.split(word.astype(np.uint8), np.cumsum(counts)[:-1])
            group = np.repeat(np.arange(len(descs)) * WORDS, counts) + word  # (annotation, word) of each
            cells = out.reshape(-1, DIM)
            # sum of residuals = sum of the word's descriptors - their count x the word (a sparse one-hot product)
            onehot = csr_matrix((np.ones(len(flat), np.float32), (group, np.arange(len(flat)))),
                                shape=(len(cells), len(flat)))
            cells[:] = onehot @ flat
            cells -= np.bincount(group, minlength=len(cells))[:, None] * np.tile(self._centroids, (len(descs), 1))
        out = np.sign(out) * np.sqrt(np.abs(out))
        out /= np.maximum(np.linalg.norm(out, axis=2, keepdims=True), 1e-12)
        out = out.reshape(len(descs), WORDS * DIM)
        out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
        if not words:
            words = [np.zeros(0, np.uint8) for _ in descs]
        return np.ascontiguousarray(out, np.float32), words

    # ------------------------------------------------------------------ the vectors file
    def _writer(self) -> Any:
        if self._vectors is None and self._home is not None:
            self._vectors = _unused_vectors_name(self._home)
            self._vectors.touch()
        if self._vectors is None:
            self._scratch = tempfile.mkdtemp(prefix="wbia-lightglue-stage1-")
            weakref.finalize(self, shutil.rmtree, self._scratch, True)
            self._vectors = Path(self._scratch) / "index.0.vectors"
            self._vectors.touch()
        if self._handle is None or self._handle.closed or self._handle.mode != "r+b":
            if self._handle is not None:
                self._handle.close()
            self._handle = open(self._vectors, "r+b")
            weakref.finalize(self, self._handle.close)
        return self._handle

    def _reader(self) -> Any:
        if self._handle is None or self._handle.closed:
            assert self._vectors is not None
            self._handle = open(self._vectors, "rb")
            weakref.finalize(self, self._handle.close)
        return self._handle

    def read(self, row: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(descriptors [N x 128] uint8, keypoints [N x 2] float32, words [N] uint8) of the annotation at ``row``,
        from disk."""
        count, offset = int(self._count[row]), int(self._offset[row])
        handle = self._reader()
        handle.seek(offset)
        blob = handle.read(count * RECORD)
        if len(blob) != count * RECORD:
            raise ValueError(f"stage-1 vectors file {self._vectors} ends inside annotation {self._keys[row]!r}")
        desc = np.frombuffer(blob, np.uint8, count * DIM).reshape(count, DIM)
        xy = np.frombuffer(blob, np.float32, count * 2, offset=count * DIM).reshape(count, 2)
        return desc, xy, np.frombuffer(blob, np.uint8, count, offset=count * (DIM + 8))

    def iter_rows(self, chunk_vectors: int = 1 << 21) -> Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """(rows, descriptors, keypoints) of every annotation, ``chunk_vectors`` descriptors at a time (reads
        the vectors file in order: what an exact search over every vector streams through)."""
        order = np.argsort(self._offset, kind="stable")
        batch: List[int] = []
        size = 0
        for row in order:
            batch.append(int(row))
            size += int(self._count[row])
            if size >= chunk_vectors or row == order[-1]:
                parts = [self.read(r) for r in batch]
                yield (np.asarray(batch, np.int64), np.concatenate([p[0] for p in parts]),
                       np.concatenate([p[1] for p in parts]))
                batch, size = [], 0

    def _compact(self) -> None:
        """Rewrite the vectors file without the dead bytes, under a new name (the saved index keeps its own)."""
        assert self._vectors is not None
        stem, number = self._vectors.name.rsplit(".", 2)[0], int(self._vectors.name.rsplit(".", 2)[1])
        target = self._vectors.with_name(f"{stem}.{number + 1}.vectors")
        offsets = np.empty_like(self._offset)
        with open(target, "wb") as out:
            for row in np.argsort(self._offset, kind="stable"):
                offsets[row] = out.tell()
                out.write(b"".join(part.tobytes() for part in self.read(int(row))))
            end = out.tell()
        if self._handle is not None:
            self._handle.close()
            self._handle = None
        self._vectors, self._offset, self._vectors_end, self._dead = target, offsets, end, 0
        logger.info("stage-1 aggregated index: vectors file compacted into %s", target)

    # ------------------------------------------------------------------ search
    def candidate_rows(self, features: Mapping[str, Any], exclude: Collection[str] = (),
                       candidates: Optional[int] = None) -> np.ndarray:
        """Rows of the annotations whose VLAD vectors are nearest the query's (best first), ``exclude`` left out."""
        wanted = self.candidates if candidates is None else int(candidates)
        desc = np.asarray(features["descriptors"], np.uint8)
        if not len(self._keys) or len(desc) == 0:
            return np.zeros(0, np.int64)
        excluded = {self._row[k] for k in exclude if k in self._row}
        fetch = min(len(self._keys), wanted + len(excluded))
        _, rows = self._vlad.search(self.vlad([desc]), fetch)
        rows = rows[0][rows[0] >= 0]
        return np.asarray([r for r in rows if r not in excluded][:wanted], np.int64)

    def search(self, features: Mapping[str, Any], exclude: Collection[str] = (), spatial_top: int = 50,
               candidates: Optional[int] = None, probes: Optional[int] = None) -> Stage1Scores:
        """Stage-1 scores of every annotation: LNBNN over the VLAD candidates' descriptors, 0 for the rest."""
        scores = dict.fromkeys(self._keys, 0.0)
        rows = self.candidate_rows(features, exclude, candidates)
        desc = np.asarray(features["descriptors"], np.uint8)
        parts = [self.read(int(r)) for r in rows]
        if not parts or not sum(len(p[0]) for p in parts):
            return Stage1Scores(scores, 0)
        owner = np.repeat(np.arange(len(rows)), [len(p[0]) for p in parts])
        database_xy = np.concatenate([p[1] for p in parts])
        dist, ids = self.knn(desc.astype(np.float32), np.concatenate([p[0] for p in parts]).astype(np.float32),
                             np.concatenate([p[2] for p in parts]), self.k + 1,
                             self.probes if probes is None else int(probes))
        table = neighbour_table(dist, ids, owner, database_xy)
        keys = [self._keys[int(r)] for r in rows]
        result = score_neighbours(table, features, keys, {key: i for i, key in enumerate(keys)}, keys, self.k,
                                  (), self.spatial, spatial_top)
        scores.update(result.scores)
        return Stage1Scores(scores, result.votes)

    def knn(self, query: np.ndarray, database: np.ndarray, database_words: np.ndarray, fetch: int,
            probes: int) -> Tuple[np.ndarray, np.ndarray]:
        """(L2 distances, database ids) of each query row's ``fetch`` nearest, looked for among the database
        vectors of its ``probes`` nearest words (all words: exact). Id -1 where fewer were found."""
        import faiss

        assert self._centroids is not None
        if probes >= WORDS:
            dist2, ids = faiss.knn(query, database, min(fetch, len(database)))
            return _padded(np.sqrt(np.maximum(dist2, 0)), ids, fetch)
        _, probed = faiss.knn(query, self._centroids, probes)
        order = np.argsort(database_words, kind="stable")
        bounds = np.searchsorted(database_words[order], np.arange(WORDS + 1))
        dist = np.full((len(query), probes * fetch), np.inf, np.float32)
        ids = np.full((len(query), probes * fetch), -1, np.int64)
        for word in np.unique(probed):
            members = order[bounds[word]:bounds[word + 1]]
            if not len(members):
                continue
            rows, probe = np.nonzero(probed == word)
            dist2, found = faiss.knn(query[rows], database[members], min(fetch, len(members)))
            cols = probe[:, None] * fetch + np.arange(found.shape[1])[None]
            dist[rows[:, None], cols] = np.sqrt(np.maximum(dist2, 0))
            ids[rows[:, None], cols] = np.where(found >= 0, members[np.maximum(found, 0)], -1)
        best = np.argsort(dist, axis=1, kind="stable")[:, :fetch]
        dist, ids = np.take_along_axis(dist, best, 1), np.take_along_axis(ids, best, 1)
        return _padded(np.where(ids >= 0, dist, 0), ids, fetch)

    # ------------------------------------------------------------------ persistence
    def save(self, path: Union[str, Path]) -> Path:
        """Write the index beside ``path``: the sidecars first, then the ``.npz`` naming them (atomically)."""
        import faiss

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._vlad is None:
            raise ValueError("an empty aggregated index has no vocabulary to save; add annotations first")
        assert self._centroids is not None
        if self._handle is not None:
            self._handle.flush()
        vectors = self._vectors
        assert vectors is not None
        if vectors.parent.resolve() != path.parent.resolve() or not vectors.name.startswith(path.stem + "."):
            # first save here: the vectors file moves beside the index, under the index's name
            target = _unused_vectors_name(path)
            with open(vectors, "rb") as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 24)
            if self._handle is not None:
                self._handle.close()
                self._handle = None
            self._vectors = vectors = target
        number = int(vectors.name.rsplit(".", 2)[1])
        vlad_name = f"{path.stem}.{number}-{os.getpid()}-{np.random.default_rng().integers(1 << 30)}.vlad"
        faiss.write_index(self._vlad, str(path.with_name(vlad_name)))
        arrays = {
            "format": np.asarray(FORMAT), "fingerprint": np.asarray(self.fingerprint), "kind": np.asarray(self.kind),
            "keys": np.asarray(self._keys, dtype=str) if self._keys else np.zeros(0, "<U1"),
            "offset": self._offset, "count": self._count, "centroids": self._centroids,
            "vectors": np.asarray(vectors.name), "vectors_end": np.asarray(self._vectors_end),
            "dead": np.asarray(self._dead), "vlad": np.asarray(vlad_name),
        }
        atomic_write(path, lambda out: np.savez(out, **arrays))
        for other in path.parent.glob(f"{path.stem}.*"):
            if other.suffix in (".vlad", ".vectors") and other.name not in (vlad_name, vectors.name):
                other.unlink(missing_ok=True)  # sidecars of earlier saves or of a killed one
        return path

    @classmethod
    def load(cls, path: Union[str, Path], config: ConfigLike = None, *, device: Any = None) -> "AggregatedIndex":
        """Read a saved index; ValueError when built under another stage-1 config, unreadable or incomplete."""
        import faiss

        path = Path(path)
        index = cls(config, device=device)
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != FORMAT or str(data["fingerprint"]) != index.fingerprint:
                    raise ValueError(f"stage-1 index {path} was built with another config "
                                     f"(fingerprint {data['fingerprint']}, expected {index.fingerprint})")
                keys, offset, count = data["keys"], data["offset"], data["count"]
                centroids = data["centroids"]
                vectors, vlad_name = path.with_name(str(data["vectors"])), path.with_name(str(data["vlad"]))
                end, dead = int(data["vectors_end"]), int(data["dead"])
            vlad = faiss.read_index(str(vlad_name))
        except ValueError:
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged or missing file: rebuild it
            raise ValueError(f"stage-1 index {path} is unreadable ({type(exc).__name__}: {str(exc)[:100]})") from exc
        problem = None
        if keys.ndim != 1 or offset.shape != keys.shape or count.shape != keys.shape or centroids.shape != (WORDS, DIM):
            problem = "arrays of the wrong shape"
        elif vlad.d != WORDS * DIM or int(vlad.ntotal) != len(keys):
            problem = f"{vlad.ntotal} VLAD vectors of dimension {vlad.d} for {len(keys)} annotations"
        elif not vectors.is_file() or vectors.stat().st_size < end:
            problem = f"vectors file {vectors.name} missing or shorter than the {end} bytes the index owns"
        elif len(keys) and (int((offset + count * RECORD).max()) > end or int(offset.min()) < 0 or (count < 0).any()):
            problem = "an annotation's descriptors lie beyond the vectors file"
        elif len(set(keys.tolist())) != len(keys):
            problem = "a key appears twice"
        if problem is not None:
            raise ValueError(f"stage-1 index {path} is damaged ({problem})")
        index._keys = [str(k) for k in keys]
        index._row = {k: i for i, k in enumerate(index._keys)}
        index._offset, index._count = offset.astype(np.int64), count.astype(np.int64)
        index._centroids, index._vlad = np.ascontiguousarray(centroids, np.float32), vlad
        index._vectors, index._vectors_end, index._dead = vectors, end, dead
        # the vectors file is the one these keys were written to: a few annotations' VLAD vectors recomputed
        for row in np.unique(np.linspace(0, len(keys) - 1, min(SPOT_CHECKS, len(keys))).astype(np.int64)):
            stored = vlad.reconstruct(int(row))
            if float(stored @ index.vlad([index.read(int(row))[0]])[0]) < 0.99 * float(stored @ stored):
                raise ValueError(f"stage-1 index {path} is damaged (annotation {index._keys[row]!r}'s descriptors "
                                 "disagree with its VLAD vector)")
        return index


def neighbour_table(dist: np.ndarray, ids: np.ndarray, owner: np.ndarray, xy: np.ndarray) -> Neighbours:
    """The :class:`Neighbours` of a kNN over concatenated descriptors: ``owner[i]`` / ``xy[i]`` are the annotation
    slot / keypoint of descriptor ``i``; id -1 (none found) becomes slot -1."""
    found = ids >= 0
    safe = np.maximum(ids, 0)
    return Neighbours(np.asarray(dist, np.float32), np.where(found, owner[safe], -1),
                      np.where(found[..., None], xy[safe], 0).astype(np.float32))


def _unused_vectors_name(home: Path) -> Path:
    """``<stem>.<n>.vectors`` beside ``home`` with a number no file there has yet: the vectors file a saved index
    names stays intact until the index replacing it is saved."""
    home.parent.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name.rsplit(".", 2)[1]) for p in home.parent.glob(f"{home.stem}.*.vectors")
             if p.name.rsplit(".", 2)[1].isdigit()]
    return home.with_name(f"{home.stem}.{max(taken, default=-1) + 1}.vectors")


def _padded(dist: np.ndarray, ids: np.ndarray, fetch: int) -> Tuple[np.ndarray, np.ndarray]:
    """``fetch`` columns (id -1, distance 0 where fewer neighbours exist)."""
    if ids.shape[1] < fetch:
        dist = np.pad(dist, ((0, 0), (0, fetch - ids.shape[1])))
        ids = np.pad(ids, ((0, 0), (0, fetch - ids.shape[1])), constant_values=-1)
    return dist.astype(np.float32), ids
