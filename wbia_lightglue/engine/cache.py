"""The in-memory feature cache: a thread-safe LRU bounded by entries and bytes, one per process."""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from .config import Config
from .extraction import features_nbytes


def _frozen(feats: Mapping[str, Any]) -> Dict[str, Any]:
    """A private copy of a feature dict whose arrays are read-only views (no data is copied)."""
    out: Dict[str, Any] = {}
    for name, value in feats.items():
        if isinstance(value, np.ndarray):
            value = value.view()
            value.flags.writeable = False
        out[name] = value
    return out


class FeatureCache:
    """Thread-safe LRU of features keyed by (annotation key, feature fingerprint).

    Bounded by entry count and optionally by bytes. ``get_or_compute`` returns every feature it was asked
    for, including ones computed in the same call and evicted right away when the request is larger than
    the cache (they are handed back directly, never read back).

    The cache keeps its own dict per entry and hands out a new dict of read-only arrays on every hit, so
    a caller that replaces or resizes an array cannot grow the cache past its byte bound (or change what
    the next caller gets): replacing a key changes only the caller's dict, writing into an array raises.
    """

    def __init__(self, max_entries: int = 10000, max_bytes: int = 0):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: "OrderedDict[Tuple[Any, str], dict]" = OrderedDict()
        self._nbytes = 0
        self.hits = self.misses = self.evictions = 0

    def get(self, key: Any, fingerprint: str) -> Optional[dict]:
        with self._lock:
            feats = self._entries.get((key, fingerprint))
            if feats is None:
                self.misses += 1
                return None
            self._entries.move_to_end((key, fingerprint))
            self.hits += 1
            return dict(feats)

    def put(self, key: Any, fingerprint: str, feats: dict) -> None:
        if self.max_entries <= 0:
            return
        feats = _frozen(feats)
        size = features_nbytes(feats)
        if self.max_bytes and size > self.max_bytes:
            return
        with self._lock:
            old = self._entries.pop((key, fingerprint), None)
            if old is not None:
                self._nbytes -= features_nbytes(old)
            self._entries[(key, fingerprint)] = feats
            self._nbytes += size
            while len(self._entries) > self.max_entries or (self.max_bytes and self._nbytes > self.max_bytes):
                _, evicted = self._entries.popitem(last=False)
                self._nbytes -= features_nbytes(evicted)
                self.evictions += 1

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
                if "error" not in feats:  # a bad chip may be fixed later: do not pin its empty features
                    self.put(key, fingerprint, feats)
        return [found[key] for key in keys]

    def invalidate(self, keys: Sequence[Any]) -> int:
        """Forget every fingerprint's features of ``keys``; returns how many entries were dropped."""
        targets = set(keys)
        with self._lock:
            doomed = [k for k in self._entries if k[0] in targets]
            for k in doomed:
                self._nbytes -= features_nbytes(self._entries.pop(k))
        return len(doomed)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._nbytes = 0

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def stats(self) -> Dict[str, int]:
        with self._lock:
            return {"size": len(self._entries), "bytes": self._nbytes, "hits": self.hits, "misses": self.misses,
                    "evictions": self.evictions, "max_size": self.max_entries, "max_bytes": self.max_bytes}


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
