"""What the plugin keeps in memory between calls, in one object: :data:`STATE`.

It is per process: WBIA's job-engine workers and the web server each have their own, and none of it is
needed for correctness across processes (every entry is keyed so that another process's edit cannot be
served stale: by feature fingerprint, or by the annotation's visual UUID, which WBIA renews with the chip).
The feature and match caches themselves belong to the engine (``core.get_feature_cache``,
``core.get_match_cache``).
"""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Dict, Iterator, Optional, Sequence, Set, Tuple

if TYPE_CHECKING:
    from ..engine.stage1 import AnyIndex


class PluginState:
    """The plugin's per-process memory; each field says why it exists.

    ``failures``: why the chip of an annotation failed in the last feature computation, by (aid, feature
    fingerprint). The LightGlueFeatures table stores nothing for a failed chip (the failure may be
    momentary), so the reader of the table learns the reason here (:meth:`remember_failure`,
    :meth:`pop_failure`; depc computes in the reader's own process).

    ``stage1_indexes``: the live stage-1 index of each (database directory, stage-1 fingerprint), so a
    query does not reload it from the database's cache folder. Its keys are visual UUIDs.

    ``indexed_as``: (database directory, aid) -> the visual UUID under which the annotation's stage-1
    descriptors were indexed. WBIA renews the visual UUID *before* it calls ``delete_root``, so the
    invalidation hook needs the old one to drop them (:meth:`forget_indexed`).
    """

    def __init__(self) -> None:
        self.failures: Dict[Tuple[int, str], str] = {}
        self._failures_lock = threading.Lock()  # the dict is shared by every thread of the process
        self.stage1_indexes: Dict[Tuple[str, str], "AnyIndex"] = {}
        self.indexed_as: Dict[Tuple[str, int], str] = {}

    def remember_failure(self, aid: int, feature_fingerprint: str, error: str) -> None:
        with self._failures_lock:
            self.failures[(aid, feature_fingerprint)] = error

    def pop_failure(self, aid: int, feature_fingerprint: str) -> Optional[str]:
        with self._failures_lock:
            return self.failures.pop((aid, feature_fingerprint), None)

    def forget_indexed(self, dbdir: str, aids: Sequence[int]) -> Set[str]:
        """The visual UUIDs ``aids`` of database ``dbdir`` were indexed under, no longer remembered."""
        return {self.indexed_as.pop((dbdir, int(aid)), "") for aid in aids} - {""}

    def indexes_of(self, dbdir: str) -> Iterator["AnyIndex"]:
        """The live stage-1 indexes of database ``dbdir`` (one per stage-1 fingerprint)."""
        return (index for (index_dbdir, _), index in self.stage1_indexes.items() if index_dbdir == dbdir)


STATE = PluginState()
