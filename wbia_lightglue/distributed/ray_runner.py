"""A batch identify on an existing Ray cluster (``identify QUERIES DATABASE --output DIR --ray ADDRESS``), and
the same machinery for ``extract --ray`` (:meth:`RaySource.extract` fills the driver's store) and ``evaluate --ray``
(``evaluation.datasets.score_dataset``: :meth:`RaySource.extract`, :meth:`RaySource.stage1_index` per comparison
group, :meth:`RaySource.matcher` for the pairs). A loopback ADDRESS is a cluster on this machine's loopback
(``local_cluster``); the driver then binds to 127.0.0.1 too (:func:`connect`).

The driver (the machine running the command) runs the same batch as a local run: ``pipeline.batch.identify_batch``
calls ``pipeline.stages.score_query`` for each query, which plans, fuses and ranks there; its evidence comes
from :class:`RaySource`, whose work runs on the cluster (Ray core tasks and actors only):

* **features**: ``Extractor`` actors, one per node, each building the models once, extract ALIKED and (two-stage)
  stage-1 features of chunks of photos. The driver sends the photo bytes, so workers need no access to the
  photos; the arrays come back and the driver writes them into its content-keyed feature store, so a rerun
  (or a local run) finds them there. The actors are released once the photos are done.
* **stage 1**: a :class:`~.sharded_stage1.ShardedIndex`: ``Stage1Shard`` actors, each the ``engine.stage1``
  index of a part of the database, return nearest neighbours that the driver merges and votes on once: the
  scores of one index over the whole database (see ``sharded_stage1``).
* **LightGlue**: one ``lightglue_pairs`` task per query scores its shortlisted pairs (exhaustive: every
  candidate), the same call on the same list as a local run.

Fault tolerance: tasks are retried (``RETRIES``), actors restarted with their calls retried (a shard's reads are
asked again while it is unreachable during its restart); their inputs are objects the driver put (it owns them,
so they survive a worker node). The driver journals each query as it
finishes (``pipeline.batch.Journal``): a dead worker node loses nothing and duplicates nothing, a dead driver
loses at most the queries in flight and a rerun keeps the rest.
"""
from __future__ import annotations

import logging
import os
import sys
from collections import OrderedDict
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from ..data.dataset import Annotation, Dataset, DatasetError
from ..data.images import BBox, ImageReadError, read_image_bytes
from ..data.store import FeatureKind, FeatureStore, StoreReport, content_key, extract_photos
from ..engine.config import Config, Mode
from ..engine.scoring import match_scores
from ..pipeline.files import besides_the_query, check_stage1_source
from .local_cluster import LOOPBACK, LOOPBACK_ENV, is_loopback_address
from .sharded_stage1 import ShardedIndex, Stage1Shard

logger = logging.getLogger("wbia_lightglue")

RETRIES = 3  # a task re-run, an actor restarted (and its call retried), after its worker or node died
EXTRACT_CHUNK = 8  # photos per extraction call (bytes in, arrays out: what one call holds in memory)
IN_FLIGHT = 2  # extraction calls queued per extractor (the next chunk waits while one runs)
REF_CACHE = 4096  # ALIKED features of database annotations kept in the object store (least recently used out)

Photo = Tuple[bytes, str, Optional[BBox]]


# ---------------------------------------------------------------------------------------------- on the workers
class Extractor:
    """A worker's extractor (an actor): the models are built by its first chunk and kept for the next ones."""

    def __init__(self, config: Config):
        self.config = config

    def extract(self, photos: Sequence[Photo], kinds: Sequence[FeatureKind]) -> List[Dict[str, Any]]:
        """For each photo, per kind: its features, or the message of why it cannot be used."""
        results: List[Dict[str, Any]] = [{} for _ in photos]
        for kind in kinds:
            for row, out in zip(results, extract_photos(photos, self.config, kind)):
                row[kind] = str(out) if isinstance(out, (str, ImageReadError)) else out
        return results

    def ready(self) -> bool:
        return True


def lightglue_pairs(config: Config, query: Mapping[str, Any], *candidates: Mapping[str, Any]) -> List[float]:
    """A task: raw LightGlue scores of the query against each candidate (models built once per worker)."""
    return [float(v) for v in match_scores(query, list(candidates), config, progress=False)]


# ---------------------------------------------------------------------------------------------- on the driver
def connect(address: str, *, progress: bool = True) -> None:
    """Join the Ray cluster at ``address`` (``host:port`` of its head) as a driver.

    A loopback address (``127.0.0.1:PORT``) means a cluster on this machine's loopback
    (``local_cluster``): the driver binds to ``127.0.0.1`` as well, which needs :data:`local_cluster.LOOPBACK_ENV`
    set before ray is imported (else Ray rewrites the address into the machine's routable one).
    """
    loopback = is_loopback_address(address)
    if loopback:
        if "ray" in sys.modules and any(os.environ.get(k) != v for k, v in LOOPBACK_ENV.items()):
            raise RuntimeError(f"a loopback Ray address ({address}) needs {LOOPBACK_ENV} set before ray is "
                               "imported, and ray is already imported: set it in the environment")
        os.environ.update(LOOPBACK_ENV)
    import ray

    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=progress, logging_level=logging.WARNING,
                 _node_ip_address=LOOPBACK if loopback else None)
    nodes = [n for n in ray.nodes() if n["Alive"]]
    logger.info("ray cluster %s: %d nodes, %s CPUs", address, len(nodes), ray.cluster_resources().get("CPU", 0))


class RaySource:
    """Evidence for photos of ``database`` from a Ray cluster (see the module docstring).

    Has what a batch's source has (``pipeline.batch.BatchSource``): ``database``, ``store``, ``config`` and
    ``database_report``. Nothing reaches the cluster before the first query (a batch whose every query is in
    the journal never connects); then every photo of ``database`` and ``queries`` the store lacks is extracted.
    """

    def __init__(self, address: str, database: Dataset, queries: Optional[Dataset], store: FeatureStore,
                 config: Config, *, progress: bool = True, shards: Optional[int] = None):
        check_stage1_source(config)
        self.address, self.database, self.queries, self.store, self.config = address, database, queries, store, config
        self.progress, self.num_shards = progress, shards
        self.database_report = StoreReport()
        self._remote: Dict[str, Any] = {}  # ray.remote wrappers of the classes and the task above
        self._ready = False
        self._keys: Dict[int, Optional[str]] = {}  # id(annotation) -> content key (None: unreadable)
        self._errors: Dict[Tuple[str, FeatureKind], str] = {}  # (key, kind) -> why it has no features
        self._unsaved: Dict[Tuple[str, FeatureKind], Dict[str, Any]] = {}  # store not writable: held here
        self._db: List[Annotation] = []  # database annotations with the mode's features
        self._db_keys: List[str] = []  # their distinct keys: the stage-1 slots
        self._slot_of: Dict[str, int] = {}
        self._index: Optional[ShardedIndex] = None  # stage 1 over the database (two-stage mode)
        self._indexes: List[ShardedIndex] = []  # every sharded index started (released by close)
        self._matched: Dict[int, Any] = {}  # matcher(): position -> ObjectRef of its ALIKED features
        self._refs: "OrderedDict[str, Any]" = OrderedDict()  # key -> ObjectRef of its ALIKED features
        self._query: Optional[Tuple[int, str, Dict[str, Any]]] = None  # id(query), key, its features by kind

    # ------------------------------------------------------------------ EvidenceSource
    def candidates(self, query: Annotation, mode: Mode) -> List[Annotation]:
        self._prepare()
        self._query = None
        self._ensure([query])  # a query the batch did not announce
        key = self._keys.get(id(query))
        if key is None:
            read_image_bytes(query.path)  # raises the ImageReadError a local run gives
        assert key is not None
        kinds = self._kinds()
        feats: Dict[str, Any] = {kind: self._features(key, kind, raise_error=True) for kind in kinds}
        self._query = (id(query), key, feats)
        return besides_the_query(key, self._db, [self._keys[id(a)] for a in self._db], self.database)

    def stage1_scores(self, query: Annotation, candidates: Sequence[Annotation]) -> List[float]:
        assert self._query is not None and self._query[0] == id(query), "candidates() is called first"
        _, key, feats = self._query
        keys = [self._keys[id(a)] or "" for a in candidates]
        if self._index is None:
            return [0.0] * len(candidates)
        return self._index.search(feats["stage1"], exclude=[key]).ranked(keys).tolist()

    def lightglue_scores(self, query: Annotation, candidates: Sequence[Annotation]) -> List[float]:
        import ray

        assert self._query is not None and self._query[0] == id(query), "candidates() is called first"
        query_ref = ray.put(self._query[2]["aliked"])
        refs = [self._aliked_ref(self._keys[id(a)] or "") for a in candidates]
        usable = [k for k, ref in enumerate(refs) if ref is not None]
        scores = [0.0] * len(candidates)  # no ALIKED features: LightGlue scores 0
        if usable:
            task = self._remote["lightglue"].remote(self.config, query_ref, *[refs[k] for k in usable])
            for k, value in zip(usable, ray.get(task)):
                scores[k] = value
        return scores

    def close(self) -> None:
        """Release the shard actors (the cluster itself stays up)."""
        for index in self._indexes:
            index.close()
        self._index, self._indexes = None, []
        self._refs.clear()
        self._matched.clear()

    # ------------------------------------------------------------------ for extract and evaluate
    def extract(self, annotations: Sequence[Annotation], kinds: Sequence[FeatureKind] = ("aliked",)) -> StoreReport:
        """The features of ``kinds`` the store lacks for ``annotations``, extracted on the cluster and stored.

        Returns what happened for the first kind (loaded from the store, extracted, skipped), as
        ``FeatureStore.features`` reports a local extraction.
        """
        self._connect()
        return self._ensure(annotations, database=len(annotations), kinds=tuple(kinds))

    def stage1_index(self, keys: Sequence[str], features: Sequence[Mapping[str, Any]]) -> ShardedIndex:
        """A stage-1 index of ``keys`` sharded over the cluster's nodes (released by ``close``)."""
        self._connect()
        nodes = self._nodes()
        index = ShardedIndex(self._remote["shard"], self.config, keys, features, self.num_shards or nodes)
        self._indexes.append(index)
        logger.info("stage 1: %d annotations in %d shards", len(index.keys), len(index.shards))
        return index

    def matcher(self, features: Sequence[Mapping[str, Any]]) -> Callable[[int, List[int]], List[float]]:
        """``match(i, [j, ...])``: LightGlue scores of item i against items j of ``features``, one task a call
        (the one batched ``match_scores`` call a local run makes); each item's features are put once."""
        import ray

        self._connect()

        def ref(i: int) -> Any:
            if i not in self._matched:
                self._matched[i] = ray.put(features[i])
            return self._matched[i]

        def match(i: int, partners: List[int]) -> List[float]:
            task = self._remote["lightglue"].remote(self.config, ref(i), *[ref(j) for j in partners])
            return list(ray.get(task))

        return match

    # ------------------------------------------------------------------ the first query
    def _kinds(self) -> Tuple[FeatureKind, ...]:
        return ("stage1", "aliked") if self.config.mode == "two_stage" else ("aliked",)

    def _prepare(self) -> None:
        if self._ready:
            return
        self._connect()
        annotations = list(self.database.annotations) + (list(self.queries.annotations) if self.queries else [])
        self.database_report = self._ensure(annotations, database=len(self.database.annotations))
        kind = self._kinds()[0]
        self._db = [a for a in self.database.annotations
                    if self._keys.get(id(a)) is not None and (self._keys[id(a)], kind) not in self._errors]
        if not self._db:
            raise DatasetError(f"database {self.database.source} has no usable annotation")
        self._db_keys = list(dict.fromkeys(self._keys[id(a)] or "" for a in self._db))
        self._slot_of = {key: slot for slot, key in enumerate(self._db_keys)}
        if self.config.mode == "two_stage":
            self._index = self.stage1_index(self._db_keys, [self._features(key, "stage1") for key in self._db_keys])
        self._ready = True

    def _connect(self) -> None:
        """Join the cluster (once); the remote forms of the actors and the task."""
        if self._remote:
            return
        connect(self.address, progress=self.progress)  # first: it sets what ray reads when imported
        import ray

        self._remote = {
            "extractor": ray.remote(num_cpus=1, max_restarts=RETRIES, max_task_retries=RETRIES)(Extractor),
            "shard": ray.remote(num_cpus=0, max_restarts=RETRIES, max_task_retries=RETRIES)(Stage1Shard),
            "lightglue": ray.remote(num_cpus=1, max_retries=RETRIES)(lightglue_pairs),
        }

    def _nodes(self) -> int:
        import ray

        return max(1, len([n for n in ray.nodes() if n["Alive"]]))

    def _ensure(self, annotations: Sequence[Annotation], database: int = 0,
                kinds: Optional[Tuple[FeatureKind, ...]] = None) -> StoreReport:
        """Content keys of ``annotations``; what the store lacks extracted on the cluster and stored.

        Returns what happened to the first ``database`` of them (the database), for the first of ``kinds``
        (default: the mode's).
        """
        kinds = kinds or self._kinds()
        report = StoreReport()
        queued = set()
        todo: List[Tuple[int, Photo, List[FeatureKind]]] = []
        for pos, annot in enumerate(annotations):
            if id(annot) in self._keys:
                continue
            try:
                data = read_image_bytes(annot.path)
            except ImageReadError as exc:
                self._keys[id(annot)] = None
                if pos < database:
                    logger.warning("%s; skipped", exc)
                    report.failed.append(str(exc))
                continue
            key = self._keys[id(annot)] = content_key(data, annot.bbox)
            missing = [kind for kind in kinds if not self._stored(key, kind)]
            if missing and key not in queued:
                queued.add(key)
                todo.append((pos, (data, str(annot.path), annot.bbox), missing))
            elif pos < database:
                report.loaded += 1
        if todo:
            extracted = self._extract_on_cluster(todo)
            for pos, _, _ in todo:
                if pos >= database:
                    continue
                key = self._keys[id(annotations[pos])] or ""
                error = self._errors.get((key, kinds[0]))
                if error is not None:
                    logger.warning("%s; skipped", error)
                    report.failed.append(error)
                elif pos in extracted:
                    report.extracted += 1
                else:
                    report.loaded += 1
        if database:
            logger.info("features: %d loaded from %s, %d extracted on the cluster, %d skipped",
                        report.loaded, self.store.root, report.extracted, len(report.failed))
        return report

    def _extract_on_cluster(self, todo: List[Tuple[int, Photo, List[FeatureKind]]]) -> set:
        """Extract ``todo``'s photos on one extractor per node; store what comes back. Returns the positions done."""
        import ray
        from tqdm.auto import tqdm

        nodes = self._nodes()
        workers = [self._remote["extractor"].options(scheduling_strategy="SPREAD").remote(self.config)
                   for _ in range(min(nodes, len(todo)))]
        chunks = [todo[i:i + EXTRACT_CHUNK] for i in range(0, len(todo), EXTRACT_CHUNK)]
        pending: Dict[Any, List[Tuple[int, Photo, List[FeatureKind]]]] = {}
        done: set = set()
        bar = tqdm(total=len(todo), desc="features (cluster)", unit="photo", disable=not self.progress)
        queue = list(reversed(chunks))
        try:
            while queue or pending:
                while queue and len(pending) < IN_FLIGHT * len(workers):
                    chunk = queue.pop()
                    worker = workers[(len(chunks) - len(queue)) % len(workers)]  # round robin
                    kinds = sorted({kind for _, _, missing in chunk for kind in missing})
                    pending[worker.extract.remote([photo for _, photo, _ in chunk], kinds)] = chunk
                ready, _ = ray.wait(list(pending), num_returns=1)
                chunk = pending.pop(ready[0])
                for (pos, photo, missing), row in zip(chunk, ray.get(ready[0])):
                    key = content_key(photo[0], photo[2])
                    for kind in missing:
                        self._keep(key, kind, row[kind])
                    done.add(pos)
                bar.update(len(chunk))
        finally:
            bar.close()
            for worker in workers:  # their CPUs go to the LightGlue tasks
                ray.kill(worker)
        return done

    # ------------------------------------------------------------------ features on the driver
    def _stored(self, key: str, kind: FeatureKind) -> bool:
        return (key, kind) in self._errors or (key, kind) in self._unsaved or \
            self.store.entry_path(key, self.store.fingerprint(self.config, kind)).is_file()

    def _keep(self, key: str, kind: FeatureKind, value: Union[str, Dict[str, Any]]) -> None:
        if isinstance(value, str):
            self._errors[(key, kind)] = value
        elif self.store.save(key, self.store.fingerprint(self.config, kind), value) is None:
            self._unsaved[(key, kind)] = value

    def _features(self, key: str, kind: FeatureKind, raise_error: bool = False) -> Dict[str, Any]:
        error = self._errors.get((key, kind))
        if error is not None and raise_error:
            raise ImageReadError(error)
        feats = self._unsaved.get((key, kind)) or self.store.load(key, self.store.fingerprint(self.config, kind))
        if feats is None:  # damaged since it was checked: extracted again on the cluster
            photo = next(a for a in self._all() if self._keys.get(id(a)) == key)
            self._extract_on_cluster([(0, (read_image_bytes(photo.path), str(photo.path), photo.bbox), [kind])])
            return self._features(key, kind, raise_error)
        return feats

    def _all(self) -> Iterable[Annotation]:
        yield from self.database.annotations
        if self.queries is not None:
            yield from self.queries.annotations

    def _aliked_ref(self, key: str) -> Any:
        """The object-store copy of a database annotation's ALIKED features (None: it has none)."""
        import ray

        if (key, "aliked") in self._errors:
            return None
        if key in self._refs:
            self._refs.move_to_end(key)
            return self._refs[key]
        self._refs[key] = ray.put(self._features(key, "aliked"))
        if len(self._refs) > REF_CACHE:
            self._refs.popitem(last=False)
        return self._refs[key]


def ray_source(address: str, database: Union[str, Dataset], queries: Optional[Dataset], config: Config,
               cache_dir: Union[str, None, Any] = None, *, progress: bool = True,
               shards: Optional[int] = None) -> RaySource:
    """A RaySource over a database folder/CSV (or a loaded Dataset), with the driver's store at ``cache_dir``."""
    from ..data.dataset import load_dataset

    dataset = database if isinstance(database, Dataset) else load_dataset(database)
    return RaySource(address, dataset, queries, FeatureStore(cache_dir), config, progress=progress, shards=shards)
