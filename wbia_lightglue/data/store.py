"""On-disk feature store: ALIKED features that persist between runs of the standalone tool.

An entry is keyed by the *content* of the annotation, never by its path: the sha256 of the image file's
bytes plus the crop, under the config's ``feature_fingerprint``. Renaming or moving a photo keeps its
features; editing the file or changing a feature setting (model, keypoints, image size) misses and
re-extracts. One ``.npz`` per annotation, written atomically, so concurrent runs and interrupted runs
never leave a half-written entry behind::

    <root>/<feature fingerprint>/<sha[:2]>/<sha256 of the file>[_x_y_w_h].npz
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np

from ..engine.config import Config
from ..engine.extraction import InvalidChipError, OnError, check_on_error, extract_features
from ..engine.models import DeviceLike
from ..engine.shortlist import ShortlistIndex, extract_shortlist_features
from .dataset import Annotation
from .files import atomic_write
from .images import BBox, ImageReadError, decode_image, read_image_bytes

logger = logging.getLogger("wbia_lightglue")

DEFAULT_STORE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wbia_lightglue" / "features"
ARRAY_KEYS = ("keypoints", "descriptors", "keypoint_scores", "image_size")
# What a store holds: ALIKED features (LightGlue's input) or stage-1 RootSIFT features (engine.shortlist),
# each under its own fingerprint folder.
FeatureKind = Literal["aliked", "rootsift"]
SHORTLIST_ARRAY_KEYS = ("keypoints", "descriptors", "image_size")
# Photos decoded and extracted per step: bounds the memory held by decoded images on large datasets.
EXTRACT_CHUNK = 32


@dataclass
class StoreReport:
    """What one ``FeatureStore.features`` call did."""

    loaded: int = 0
    extracted: int = 0
    failed: List[str] = field(default_factory=list)  # one message per annotation that was skipped


@dataclass
class StoredFeatures:
    """Features of a list of annotations: the usable ones, aligned, plus what the store did.

    ``annotations[k]`` has features ``features[k]`` and store key ``keys[k]``; unusable annotations
    (unreadable file, empty crop, a chip too small) are left out and named in ``report.failed``.
    """

    annotations: List[Annotation]
    features: List[Dict[str, Any]]
    keys: List[str]
    report: StoreReport


def content_key(data: bytes, bbox: Optional[BBox] = None) -> str:
    """The store key of an annotation: sha256 of the image file bytes, plus the crop when there is one."""
    digest = hashlib.sha256(data).hexdigest()
    return digest if bbox is None else f"{digest}_{'_'.join(map(str, bbox))}"


class FeatureStore:
    """A folder of per-annotation feature files; see the module docstring for the layout."""

    def __init__(self, root: Union[str, Path, None] = None):
        self.root = Path(root) if root is not None else DEFAULT_STORE_DIR

    def entry_path(self, key: str, fingerprint: str) -> Path:
        return self.root / fingerprint / key[:2] / f"{key}.npz"

    @staticmethod
    def fingerprint(config: Config, kind: FeatureKind = "aliked") -> str:
        """The folder name of ``kind`` features under ``config``."""
        return config.feature_fingerprint if kind == "aliked" else f"rootsift-{config.shortlist_feature_fingerprint}"

    def load(self, key: str, fingerprint: str) -> Optional[Dict[str, Any]]:
        """The stored features, or None when absent or unreadable (then they are simply re-extracted)."""
        path = self.entry_path(key, fingerprint)
        if not path.is_file():
            return None
        names = SHORTLIST_ARRAY_KEYS if fingerprint.startswith("rootsift-") else ARRAY_KEYS
        try:
            with np.load(path) as data:
                feats = {name: data[name] for name in names}
        except (OSError, ValueError, KeyError) as exc:
            logger.warning("feature file %s is unreadable (%s); re-extracting", path, exc)
            return None
        feats["fingerprint"] = fingerprint
        return feats

    def save(self, key: str, fingerprint: str, feats: Dict[str, Any]) -> Path:
        """Write one entry atomically (temporary file + rename)."""
        names = SHORTLIST_ARRAY_KEYS if fingerprint.startswith("rootsift-") else ARRAY_KEYS
        arrays = {name: np.asarray(feats[name]) for name in names}
        return atomic_write(self.entry_path(key, fingerprint), lambda out: np.savez(out, **arrays))

    def features(
        self,
        sources: Sequence[Tuple[Union[str, Path], Optional[BBox]]],
        config: Config,
        *,
        device: DeviceLike = None,
        progress: bool = True,
        on_error: OnError = "skip",
        kind: FeatureKind = "aliked",
    ) -> Tuple[List[Optional[Dict[str, Any]]], List[Optional[str]], StoreReport]:
        """Features of each ``(image path, bbox)``: loaded when stored, otherwise extracted and stored.

        Returns the features (None for an annotation that was skipped: unreadable file, empty crop, or a
        chip too small to use; each is logged as a warning naming the file), the content keys (None when
        skipped), and a StoreReport with the counts. With ``on_error='raise'`` (a query, a pair) an unusable
        image raises ImageReadError instead of being skipped. ``kind='rootsift'``: stage-1 features.
        """
        check_on_error(on_error)
        fingerprint = self.fingerprint(config, kind)
        feats: List[Optional[dict]] = [None] * len(sources)
        keys: List[Optional[str]] = [None] * len(sources)
        report = StoreReport()
        missing: List[Tuple[int, bytes]] = []
        for pos, (path, bbox) in enumerate(sources):
            try:
                data = read_image_bytes(path)
            except ImageReadError as exc:
                self._skip(report, exc, on_error)
                continue
            keys[pos] = content_key(data, bbox)
            feats[pos] = self.load(keys[pos], fingerprint)
            if feats[pos] is not None:
                report.loaded += 1
            else:
                missing.append((pos, data))
        for start in range(0, len(missing), EXTRACT_CHUNK):
            self._extract_chunk(missing[start:start + EXTRACT_CHUNK], sources, keys, feats, report,
                                config, device, progress and len(missing) > 1, on_error, kind)
        logger.info("features: %d loaded from %s, %d extracted, %d skipped",
                    report.loaded, self.root, report.extracted, len(report.failed))
        return feats, keys, report

    def _extract_chunk(self, chunk: List[Tuple[int, bytes]], sources: Sequence[Tuple[Union[str, Path], Optional[BBox]]],
                       keys: List[Optional[str]], feats: List[Optional[Dict[str, Any]]], report: StoreReport,
                       config: Config, device: DeviceLike, progress: bool, on_error: OnError,
                       kind: FeatureKind = "aliked") -> None:
        chips, positions = [], []
        for pos, data in chunk:
            path, bbox = sources[pos]
            try:
                chips.append(decode_image(data, path, bbox))
                positions.append(pos)
            except ImageReadError as exc:
                keys[pos] = None
                self._skip(report, exc, on_error)
        names = [str(sources[pos][0]) for pos in positions]
        try:
            if kind == "aliked":
                outputs = extract_features(chips, config, keys=names, device=device, on_error=on_error,
                                           progress=progress)
            else:
                outputs = extract_shortlist_features(chips, config, keys=names, on_error=on_error)
        except InvalidChipError as exc:  # only with on_error='raise': the one image asked for is unusable
            raise ImageReadError(str(exc)) from exc
        for pos, out in zip(positions, outputs):
            if "error" in out:  # e.g. a chip too small to use (core has logged it): skipped like a bad file
                keys[pos] = None
                report.failed.append(out["error"])
                continue
            self.save(keys[pos], self.fingerprint(config, kind), out)
            feats[pos] = out
            report.extracted += 1

    @staticmethod
    def _skip(report: StoreReport, error: ImageReadError, on_error: OnError) -> None:
        if on_error == "raise":
            raise error
        logger.warning("%s; skipped", error)
        report.failed.append(str(error))


def annotation_features(
    annotations: Sequence[Annotation],
    store: FeatureStore,
    config: Config,
    *,
    device: DeviceLike = None,
    progress: bool = True,
    on_error: OnError = "skip",
    kind: FeatureKind = "aliked",
) -> StoredFeatures:
    """Features of ``annotations`` from ``store``; the unusable ones are dropped (and reported).

    ``on_error='raise'``: raise ImageReadError on the first unusable image instead of skipping it.
    ``kind='rootsift'``: the stage-1 features (engine.shortlist) instead of ALIKED's.
    """
    feats, keys, report = store.features([(a.path, a.bbox) for a in annotations], config,
                                         device=device, progress=progress, on_error=on_error, kind=kind)
    kept = [i for i, f in enumerate(feats) if f is not None]
    return StoredFeatures([annotations[i] for i in kept], [feats[i] for i in kept],  # type: ignore[misc]
                          [keys[i] for i in kept], report)  # type: ignore[misc]


def shortlist_index(store: FeatureStore, stored: StoredFeatures, config: Config, database: Union[str, Path], *,
                    device: Any = None, persist: bool = True) -> ShortlistIndex:
    """The stage-1 index of a database's annotations, persisted beside the feature store.

    File: ``<store root>/shortlist/<config.shortlist_fingerprint>/<digest of the database path>.npz``.
    ``stored`` holds the annotations' stage-1 (``kind='rootsift'``) features and content keys. An existing
    file is brought in step incrementally: annotations no longer in the database are removed, new ones
    added; nothing is rebuilt unless the index type must change. An unreadable or foreign file is rebuilt.
    """
    name = hashlib.sha256(str(Path(database).resolve()).encode()).hexdigest()[:16]
    path = store.root / "shortlist" / config.shortlist_fingerprint / f"{name}.npz"
    index: Optional[ShortlistIndex] = None
    if persist and path.is_file():
        try:
            index = ShortlistIndex.load(path, config, device=device)
        except ValueError as exc:
            logger.warning("%s; rebuilding it", exc)
    if index is None:
        index = ShortlistIndex(config, device=device)
    by_key = dict(zip(stored.keys, stored.features))
    added, removed = index.sync(list(by_key), lambda keys: [by_key[k] for k in keys])
    logger.info("stage-1 index %s: %d annotations (%d added, %d removed), %s, %d vectors",
                path if persist else "(in memory)", len(index), added, removed, index.kind, index.num_vectors)
    if persist and (added or removed or not path.is_file()):
        index.save(path)
    return index
