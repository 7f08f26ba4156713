"""In-memory caches, one per process: features (LRU bounded by entries and bytes) and match results.

Keys are chosen by the caller so that content that changes gets a new key (WBIA: the annotation's
visual UUID); entries of an old key are then simply never asked for again and age out.
"""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .config import Config
from .extraction import features_nbytes
from .match_types import MatchResult, failure


def _frozen(feats: Mapping[str, Any]) -> Dict[str, Any]:
    """A private copy of a feature dict whose arrays are read-only views (no data is copied)."""
    out: Dict[str, Any] = {}
    for name, value in feats.items():
        if isinstance(value, np.ndarray):
            value = value.view()
            value.flags.writeable = False
        out[name] = value
    return out


class _BoundedLRU:
    """Thread-safe LRU bounded by entry count and by bytes (``max_bytes`` 0 = by entries only).

    ``size`` says how many bytes an entry holds; ``_lookup`` / ``_store`` do the bookkeeping.
    """

    def __init__(self, max_entries: int, max_bytes: int, size: Callable[[Any], int]):
        self._size = size
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: "OrderedDict[Any, Any]" = OrderedDict()
        self._nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def _lookup(self, key: Any) -> Any:
        with self._lock:
            value = self._entries.get(key)
            if value is None:
                self.misses += 1
                return None
            self._entries.move_to_end(key)
            self.hits += 1
            return value

    def _store(self, key: Any, value: Any, size: int) -> None:
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._nbytes -= self._size(old)
            self._entries[key] = value
            self._nbytes += size
            while self._entries and (len(self._entries) > self.max_entries
                                     or (self.max_bytes and self._nbytes > self.max_bytes)):
                _, evicted = self._entries.popitem(last=False)
                self._nbytes -= self._size(evicted)
                self.evictions += 1

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


class FeatureCache(_BoundedLRU):
    """Thread-safe LRU of features keyed by (annotation key, feature fingerprint).

    Bounded by entry count and optionally by bytes. ``get_or_compute`` returns every feature it was asked
    for, including ones computed in the same call and evicted right away when the request is larger than
    the cache (they are handed back directly, never read back).

    The cache keeps its own dict per entry and hands out a new dict of read-only arrays on every hit, so
    a caller that replaces or resizes an array cannot grow the cache past its byte bound (or change what
    the next caller gets): replacing a key changes only the caller's dict, writing into an array raises.
    """

    def __init__(self, max_entries: int = 10000, max_bytes: int = 0):
        super().__init__(max_entries, max_bytes, features_nbytes)

    def get(self, key: Any, fingerprint: str) -> Optional[dict]:
        feats = self._lookup((key, fingerprint))
        return None if feats is None else dict(feats)

    def put(self, key: Any, fingerprint: str, feats: dict) -> None:
        if self.max_entries <= 0:
            return
        feats = _frozen(feats)
        size = features_nbytes(feats)
        if self.max_bytes and size > self.max_bytes:
            return
        self._store((key, fingerprint), feats, size)

    def get_or_compute(self, keys: Sequence[Any], fingerprint: str,
                       compute: Callable[[List[Any]], List[dict]]) -> List[dict]:
        """Features for ``keys`` (in order): cached ones, plus ``compute(missing_keys)`` for the rest."""
        found: Dict[Any, dict] = {}
        for key in dict.fromkeys(keys):
            feats = self.get(key, fingerprint)
            if feats is not None:
                found[key] = feats
        missing = [key for key in dict.fromkeys(keys) if key not in found]
        if missing:
            computed = compute(missing)  # outside the lock: other threads keep reading
            if len(computed) != len(missing):
                raise RuntimeError(f"feature computation returned {len(computed)} results for {len(missing)} keys")
            for key, feats in zip(missing, computed):
                if feats is None:
                    raise RuntimeError(f"no features were computed for annotation {key!r}")
                found[key] = feats
                if cacheable(feats):
                    self.put(key, fingerprint, feats)
        return [found[key] for key in keys]

    def invalidate(self, keys: Sequence[Any]) -> int:
        """Forget every fingerprint's features of ``keys``; returns how many entries were dropped.

        A composite key ``(owner, version)`` (e.g. annotation UUID, visual UUID) is dropped by its owner.
        """
        targets = set(keys)
        with self._lock:
            doomed = [k for k in self._entries if _owner(k[0]) in targets or k[0] in targets]
            for k in doomed:
                self._nbytes -= features_nbytes(self._entries.pop(k))
        return len(doomed)

    def stats(self) -> Dict[str, int]:
        with self._lock:
            return {"size": len(self._entries), "bytes": self._nbytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions, "max_size": self.max_entries, "max_bytes": self.max_bytes}


def cacheable(feats: Mapping[str, Any]) -> bool:
    """Whether features may be kept: not those of a chip that failed (``error``: the image may be readable
    later) nor those computed while their annotation changed (``stale``)."""
    return failure(feats) is None and not feats.get("stale", False)


def _owner(key: Any) -> Any:
    return key[0] if isinstance(key, tuple) and len(key) == 2 else None


_CACHES: Dict[Tuple[int, int], FeatureCache] = {}
_CACHES_LOCK = threading.Lock()


def get_feature_cache(config: Config) -> FeatureCache:
    """The process-wide cache for this config's bounds (entries keep their feature fingerprint)."""
    bounds = (config["feature_cache_max_size"], config["feature_cache_max_bytes"])
    with _CACHES_LOCK:
        cache = _CACHES.get(bounds)
        if cache is None:
            cache = _CACHES[bounds] = FeatureCache(*bounds)
        return cache


def invalidate_features(keys: Sequence[Any]) -> int:
    """Drop ``keys`` from every process-wide cache (e.g. when WBIA recomputes an annotation's chip)."""
    with _CACHES_LOCK:
        caches = list(_CACHES.values())
    return sum(cache.invalidate(keys) for cache in caches)


def _match_nbytes(result: MatchResult) -> int:
    arrays = (result.matches, result.confidences)
    return 64 + sum(a.nbytes for a in arrays if isinstance(a, np.ndarray))


class MatchCache(_BoundedLRU):
    """Thread-safe LRU of MatchResults (with their matches), bounded by entries and bytes.

    Keeps the correspondences of pairs scored by a job so that review images of those pairs are drawn
    without running LightGlue again. Keys are the caller's, e.g. (query key, database key, match fingerprint).

    Like the feature cache it never hands out its own objects: ``put`` keeps a read-only copy of the arrays,
    ``get`` returns a new MatchResult over them, so a caller that replaces a field or writes into an array
    (which raises) can change neither the cache's byte accounting nor what the next caller gets.
    """

    def __init__(self, max_entries: int = 4096, max_bytes: int = 64 << 20):
        super().__init__(max_entries, max_bytes, _match_nbytes)

    def get(self, key: Any) -> Optional[MatchResult]:
        result = self._lookup(key)
        return None if result is None else dataclasses.replace(result)

    def put(self, key: Any, result: MatchResult) -> None:
        if result.matches is None or self.max_entries <= 0:
            return  # only results that can be drawn are worth keeping
        kept = dataclasses.replace(result, matches=_read_only_copy(result.matches),
                                   confidences=_read_only_copy(result.confidences))
        self._store(key, kept, _match_nbytes(kept))


def _read_only_copy(array: Optional[np.ndarray]) -> Optional[np.ndarray]:
    if array is None:
        return None
    out = np.array(array, copy=True)
    out.flags.writeable = False
    return out


_MATCH_CACHE = MatchCache()


def get_match_cache() -> MatchCache:
    """The process-wide match-result cache."""
    return _MATCH_CACHE
