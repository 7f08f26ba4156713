"""The pipeline's source for photo files: features from the content-keyed store, the database's stage-1 index.

Queries and candidates are :class:`~wbia_lightglue.data.dataset.Annotation` objects. Features are read from
(or extracted into) the :class:`~wbia_lightglue.data.store.FeatureStore`: ALIKED features for LightGlue,
stage-1 SIFT features for the persisted stage-1 index of the database (``data.store.shortlist_index``). A
query photo that is itself in the database (same file contents and crop) is left out of its candidates.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ..data.dataset import Annotation, Dataset, DatasetError
from ..data.store import FeatureKind, FeatureStore, StoredFeatures, StoreReport, annotation_features, shortlist_index
from ..engine.config import Config, ConfigError, Mode
from ..engine.extraction import OnError
from ..engine.scoring import match_scores
from ..engine.stage1 import AnyIndex

logger = logging.getLogger("wbia_lightglue")


def check_stage1_source(config: Config) -> None:
    """Outside WBIA the stage-1 source can only be the project's own index (checked before any work)."""
    if config.mode == "two_stage" and config["shortlist_source"] != "index":
        raise ConfigError(f"config key 'shortlist_source' has value {config['shortlist_source']!r}: HotSpotter "
                          "is WBIA's and only available inside WBIA; use 'index' here")


def besides_the_query(query_key: str, annotations: Sequence[Annotation], keys: Sequence[Optional[str]],
                      database: Dataset) -> List[Annotation]:
    """The database annotations a query is ranked against: all but the query photo itself (same store key),
    with a log line when it was there; DatasetError when nothing is left."""
    others = [a for a, key in zip(annotations, keys) if key != query_key]
    if len(others) < len(annotations):
        logger.info("the query photo is itself in the database; it is left out of the ranking")
    if not others:
        raise DatasetError(f"database {database.source} has no usable annotation besides the query")
    return others


class StoreSource:
    """Evidence for photos of ``database`` (see the module docstring); one instance serves many queries.

    ``database_report`` / ``query_report`` say what the store did (loaded, extracted, skipped) for the
    database and for the last query, for the features the mode needed.

    The database's features (and in two-stage mode its stage-1 index) are loaded by the first query and
    kept; what a query brings (its own features, in two-stage mode its shortlist's ALIKED features) is held
    until the next query starts, so memory does not grow with the number of queries.
    """

    def __init__(self, database: Dataset, store: FeatureStore, config: Config, *, progress: bool = True,
                 pair_progress: Optional[bool] = None):
        check_stage1_source(config)
        self.database, self.store, self.config, self.progress = database, store, config, progress
        # a bar over each query's LightGlue pairs (default: as ``progress``; a batch has its own bar over queries)
        self.pair_progress = progress if pair_progress is None else pair_progress
        self.database_report = StoreReport()
        self.query_report = StoreReport()
        self._db: Optional[StoredFeatures] = None  # the database's features of the kind the mode needs
        self._index: Optional[AnyIndex] = None
        self._key: Dict[int, str] = {}  # id(annotation) -> store key
        self._aliked: Dict[str, Dict[str, Any]] = {}  # store key -> ALIKED features held in memory
        self._query_stage1: Dict[int, Any] = {}  # id(query) -> its stage-1 features and key
        self._last_query: Optional[Tuple[int, str, bool]] = None  # id, store key, whether it is in the database

    # ------------------------------------------------------------------ EvidenceSource
    def candidates(self, query: Annotation, mode: Mode) -> List[Annotation]:
        kind: FeatureKind = "stage1" if mode == "two_stage" else "aliked"
        self._forget_last_query(mode)
        q = annotation_features([query], self.store, self.config, progress=False, on_error="raise", kind=kind)
        if self._db is None:
            # stage 1: the database's features are read back from the store as the index needs them, a chunk at
            # a time (a catalogue's do not fit in memory); ALIKED's stay in memory (exhaustive mode uses all)
            self._db = annotation_features(self.database.annotations, self.store, self.config,
                                           progress=self.progress, kind=kind, keep=kind == "aliked")
            self.database_report = self._db.report
            self._key.update({id(a): k for a, k in zip(self._db.annotations, self._db.keys)})
            if kind == "aliked":
                self._aliked.update(zip(self._db.keys, self._db.features))
            else:
                self._index = shortlist_index(self.store, self._db, self.config, self.database.source)
        self.query_report = q.report
        if kind == "aliked":
            self._aliked[q.keys[0]] = q.features[0]
        else:
            self._query_stage1[id(query)] = (q.features[0], q.keys[0])
        others = besides_the_query(q.keys[0], self._db.annotations, self._db.keys, self.database)
        self._key[id(query)] = q.keys[0]
        self._last_query = (id(query), q.keys[0], len(others) < len(self._db.annotations))
        return others

    def close(self) -> None:
        """Nothing to release: everything lives in this process (``pipeline.batch.BatchSource``)."""

    def _forget_last_query(self, mode: Mode) -> None:
        """Drop what the previous query left in memory; the database's own features stay."""
        if self._last_query is None:
            return
        query_id, key, in_database = self._last_query
        self._last_query = None
        self._key.pop(query_id, None)
        self._query_stage1.pop(query_id, None)
        if mode == "two_stage":  # ALIKED features are read per query (the query's and its shortlist's)
            self._aliked.clear()
        elif not in_database:
            self._aliked.pop(key, None)

    def stage1_scores(self, query: Annotation, candidates: Sequence[Annotation]) -> List[float]:
        assert self._index is not None, "candidates() is called first"
        feats, key = self._query_stage1[id(query)]
        return self._index.search(feats, exclude=[key]).ranked([self._key[id(a)] for a in candidates]).tolist()

    def lightglue_scores(self, query: Annotation, candidates: Sequence[Annotation]) -> List[float]:
        query_features = self.features([query], on_error="raise")[0]
        assert query_features is not None  # on_error="raise": an unusable query photo raised
        feats = self.features(candidates)
        usable = {k: f for k, f in enumerate(feats) if f is not None}
        values = match_scores(query_features, list(usable.values()), self.config, progress=self.pair_progress)
        scores = [0.0] * len(candidates)  # no ALIKED features: LightGlue scores 0
        for k, value in zip(usable, values):
            scores[k] = value
        return scores

    # ------------------------------------------------------------------ features for pictures
    def features(self, annotations: Sequence[Annotation],
                 on_error: OnError = "skip") -> List[Optional[Dict[str, Any]]]:
        """ALIKED features of ``annotations`` (from memory, else from the store; None where unusable)."""
        missing = [a for a in annotations if self._key.get(id(a)) not in self._aliked]
        if missing:
            stored = annotation_features(missing, self.store, self.config, progress=False, on_error=on_error)
            for annotation, key, feats in zip(stored.annotations, stored.keys, stored.features):
                self._key[id(annotation)] = key
                self._aliked[key] = feats
        return [self._aliked.get(self._key.get(id(a), "")) for a in annotations]


def store_source(database: Union[str, Path, Dataset], config: Config, cache_dir: Union[str, Path, None] = None,
                 *, progress: bool = True, pair_progress: Optional[bool] = None) -> StoreSource:
    """A StoreSource over a database folder/CSV (or a loaded Dataset) and the store at ``cache_dir``."""
    from ..data.dataset import load_dataset

    dataset = database if isinstance(database, Dataset) else load_dataset(database)
    return StoreSource(dataset, FeatureStore(cache_dir), config, progress=progress, pair_progress=pair_progress)
