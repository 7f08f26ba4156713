"""On-disk feature store: ALIKED features that persist between runs of the standalone tool.

An entry is keyed by the *content* of the annotation, never by its path: the sha256 of the image file's
bytes plus the crop, under the config's ``feature_fingerprint``. Renaming or moving a photo keeps its
features; editing the file or changing a feature setting (model, keypoints, image size) misses and
re-extracts. One ``.npz`` per annotation, written atomically, so concurrent runs and interrupted runs
never leave a half-written entry behind::

    <root>/<feature fingerprint>/<sha[:2]>/<sha256 of the file>[_x_y_w_h].npz
    <root>/<feature fingerprint>/.tmp/       files being written (a killed writer's are removed later)

Faults: an entry that cannot be read or holds arrays of the wrong shape or type (truncated, bit-flipped,
empty) is re-extracted with a warning and overwritten. When the store cannot be written (full disk,
read-only, quota), the run warns once and goes on without storing. Photos are read, decoded and
extracted a chunk at a time, so memory follows the chunk, not the dataset.
"""
from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
from tqdm.auto import tqdm

from ..engine.config import Config
from ..engine.device import DeviceLike
from ..engine.extraction import InvalidChipError, OnError, check_on_error, extract_features
from ..engine.match_types import failure
from ..engine.stage1 import AnyIndex, extract_stage1_features, synced_index
from ..files import atomic_write, remove_stale_temp_files
from .dataset import Annotation
from .images import BBox, ImageReadError, decode_image, image_size, read_image_bytes

logger = logging.getLogger("wbia_lightglue")

DEFAULT_STORE_DIR = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "wbia_lightglue" / "features"
ARRAY_KEYS = ("keypoints", "descriptors", "keypoint_scores", "image_size")
# What a store holds: ALIKED features (LightGlue's input) or stage-1 SIFT features (engine.stage1),
# each under its own fingerprint folder.
FeatureKind = Literal["aliked", "stage1"]
SHORTLIST_ARRAY_KEYS = ("keypoints", "descriptors", "image_size")
# Photos read, decoded and extracted per step: what is held in memory at once (raw bytes, then chips) is
# at most this many photos and this many decoded pixels, whatever the size of the dataset.
EXTRACT_CHUNK = 32
# What ``features(..., keep=False)`` returns for a usable annotation whose features are in the store (read back
# with ``FeatureStore.load`` when needed): a catalogue's features need not all be in memory at once.
STORED: Dict[str, Any] = {}
CHUNK_PIXELS = 1 << 28  # 268 megapixels: 805 MB of decoded BGR chips
STALE_TEMP_SECONDS = 600  # a temporary file this old belongs to a writer that was killed mid-save
TEMP_DIR = ".tmp"


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
    """A folder of per-annotation feature files; see the module docstring for the layout.

    ``writable`` turns False after the first failed write (that failure is the one warning).
    """

    def __init__(self, root: Union[str, Path, None] = None):
        self.root = Path(root) if root is not None else DEFAULT_STORE_DIR
        self.writable = True

    def entry_path(self, key: str, fingerprint: str) -> Path:
        return self.root / fingerprint / key[:2] / f"{key}.npz"

    def temp_dir(self, fingerprint: str) -> Path:
        return self.root / fingerprint / TEMP_DIR

    @staticmethod
    def fingerprint(config: Config, kind: FeatureKind = "aliked") -> str:
        """The folder name of ``kind`` features under ``config``."""
        return config.feature_fingerprint if kind == "aliked" else f"stage1-{config.shortlist_feature_fingerprint}"

    def load(self, key: str, fingerprint: str) -> Optional[Dict[str, Any]]:
        """The stored features, or None when absent or damaged (then they are re-extracted and overwritten)."""
        path = self.entry_path(key, fingerprint)
        if not path.is_file():  # also refuses a FIFO or device planted in the store
            return None
        names = SHORTLIST_ARRAY_KEYS if fingerprint.startswith("stage1-") else ARRAY_KEYS
        try:
            with np.load(path, allow_pickle=False) as data:
                feats = {name: data[name] for name in names}
        except Exception as exc:  # noqa: BLE001 - a damaged zip raises BadZipFile, EOFError, ValueError, KeyError,
            # NotImplementedError, RuntimeError, tokenize errors or MemoryError (a flipped shape): all mean re-extract
            logger.warning("feature file %s is unreadable (%s: %s); re-extracting", path, type(exc).__name__,
                           str(exc)[:100])
            return None
        problem = entry_problem(feats) if names is ARRAY_KEYS else shortlist_entry_problem(feats)
        if problem is not None:
            logger.warning("feature file %s is damaged (%s); re-extracting", path, problem)
            return None
        feats["fingerprint"] = fingerprint
        return feats

    def save(self, key: str, fingerprint: str, feats: Dict[str, Any]) -> Optional[Path]:
        """Write one entry atomically (temporary file + rename); None when the store cannot be written.

        The first failure (full disk, read-only, no permission, quota) is logged once and the store stops
        writing for the rest of its life: the features stay in memory and the run completes.
        """
        if not self.writable:
            return None
        names = SHORTLIST_ARRAY_KEYS if fingerprint.startswith("stage1-") else ARRAY_KEYS
        arrays = {name: np.asarray(feats[name]) for name in names}
        try:
            return atomic_write(self.entry_path(key, fingerprint), lambda out: np.savez(out, **arrays),
                                temp_dir=self.temp_dir(fingerprint))
        except OSError as exc:
            self.writable = False
            logger.warning("feature store %s cannot be written (%s); going on without storing features",
                           self.root, exc.strerror or exc)
            return None

    def features(
        self,
        sources: Sequence[Tuple[Union[str, Path], Optional[BBox]]],
        config: Config,
        *,
        device: DeviceLike = None,
        progress: bool = True,
        on_error: OnError = "skip",
        kind: FeatureKind = "aliked",
        keep: bool = True,
    ) -> Tuple[List[Optional[Dict[str, Any]]], List[Optional[str]], StoreReport]:
        """Features of each ``(image path, bbox)``: loaded when stored, otherwise extracted and stored.

        Returns the features (None for an annotation that was skipped: unreadable file, empty crop, or a
        chip too small to use; each is logged as a warning naming the file), the content keys (None when
        skipped), and a StoreReport with the counts. With ``on_error='raise'`` (a query, a pair) an unusable
        image raises ImageReadError instead of being skipped. ``kind='stage1'``: stage-1 features.
        ``keep=False``: features that are in the store come back as ``STORED`` (checked readable, not held).

        Photos are read once, in order; those not in the store wait in a chunk (at most EXTRACT_CHUNK photos
        and CHUNK_PIXELS pixels) that is decoded, extracted and released before the next one fills.
        """
        check_on_error(on_error)
        fingerprint = self.fingerprint(config, kind)
        removed = remove_stale_temp_files(self.temp_dir(fingerprint), STALE_TEMP_SECONDS)
        if removed:
            logger.info("feature store: removed %d temporary files left by an interrupted run", removed)
        feats: List[Optional[dict]] = [None] * len(sources)
        keys: List[Optional[str]] = [None] * len(sources)
        report = StoreReport()
        chunk: List[Tuple[int, bytes]] = []
        chunk_pixels = 0
        bar = tqdm(total=len(sources), desc="features", unit="photo", disable=not progress or len(sources) < 2)

        def flush() -> None:
            nonlocal chunk_pixels
            self._extract_chunk(chunk, sources, keys, feats, report, config, device, on_error, kind, keep)
            bar.update(len(chunk))
            chunk.clear()
            chunk_pixels = 0

        for pos, (path, bbox) in enumerate(sources):
            try:
                data = read_image_bytes(path)
            except ImageReadError as exc:
                self._skip(report, exc, on_error)
                bar.update(1)
                continue
            keys[pos] = content_key(data, bbox)
            feats[pos] = self.load(keys[pos], fingerprint)  # type: ignore[arg-type]
            if feats[pos] is not None:
                report.loaded += 1
                if not keep:
                    feats[pos] = STORED
                bar.update(1)
                continue
            pixels = _chip_pixels(data, bbox)
            if chunk and chunk_pixels + pixels > CHUNK_PIXELS:
                flush()
            chunk.append((pos, data))
            chunk_pixels += pixels
            if len(chunk) >= EXTRACT_CHUNK:
                flush()
        if chunk:
            flush()
        bar.close()
        logger.info("features: %d loaded from %s, %d extracted, %d skipped",
                    report.loaded, self.root, report.extracted, len(report.failed))
        return feats, keys, report

    def _extract_chunk(self, chunk: List[Tuple[int, bytes]], sources: Sequence[Tuple[Union[str, Path], Optional[BBox]]],
                       keys: List[Optional[str]], feats: List[Optional[Dict[str, Any]]], report: StoreReport,
                       config: Config, device: DeviceLike, on_error: OnError,
                       kind: FeatureKind = "aliked", keep: bool = True) -> None:
        photos = [(data, sources[pos][0], sources[pos][1]) for pos, data in chunk]
        for (pos, _), out in zip(chunk, extract_photos(photos, config, kind, device=device, on_error=on_error)):
            if isinstance(out, ImageReadError):  # not decodable: skipped (or raised) like an unreadable file
                keys[pos] = None
                self._skip(report, out, on_error)
            elif isinstance(out, str):  # e.g. a chip too small to use (core has logged it)
                keys[pos] = None
                report.failed.append(out)
            else:
                saved = self.save(keys[pos], self.fingerprint(config, kind), out)  # type: ignore[arg-type]
                feats[pos] = STORED if saved is not None and not keep else out
                report.extracted += 1

    @staticmethod
    def _skip(report: StoreReport, error: ImageReadError, on_error: OnError) -> None:
        if on_error == "raise":
            raise error
        logger.warning("%s; skipped", error)
        report.failed.append(str(error))


def extract_photos(photos: Sequence[Tuple[bytes, Union[str, Path], Optional[BBox]]], config: Config,
                   kind: FeatureKind = "aliked", *, device: DeviceLike = None,
                   on_error: OnError = "skip") -> List[Union[Dict[str, Any], str, ImageReadError]]:
    """Features of each photo given as ``(file bytes, path, bbox)``, decoded and extracted here (nothing stored).

    Each result is the features, the error message of a chip that cannot be used (too small), or the
    ImageReadError of bytes that do not decode (a truncated JPEG); ``on_error='raise'`` raises that instead.
    What a store extracts for the photos it misses, and what a worker of a cluster extracts for a driver.
    """
    out: List[Union[Dict[str, Any], str, ImageReadError]] = []
    chips, positions = [], []
    for pos, (data, path, bbox) in enumerate(photos):
        try:
            chips.append(decode_image(data, path, bbox, config["max_image_pixels"]))
            positions.append(pos)
            out.append("")
        except ImageReadError as exc:
            if on_error == "raise":
                raise
            out.append(exc)
    if not chips:
        return out
    names = [str(photos[pos][1]) for pos in positions]
    try:
        if kind == "aliked":
            outputs = extract_features(chips, config, keys=names, device=device, on_error=on_error, progress=False)
        else:
            outputs = extract_stage1_features(chips, config, keys=names, on_error=on_error)
    except InvalidChipError as exc:  # only with on_error='raise': the one image asked for is unusable
        raise ImageReadError(str(exc)) from exc
    for pos, feats in zip(positions, outputs):
        error = failure(feats)
        out[pos] = error if error is not None else feats  # type: ignore[assignment]
    return out


def entry_problem(feats: Dict[str, Any]) -> Optional[str]:
    """What is wrong with the arrays of a stored entry (None when they are features this package wrote)."""
    kpts, desc, scores, size = (np.asarray(feats[name]) for name in ARRAY_KEYS)
    if kpts.dtype != np.float32 or kpts.ndim != 2 or kpts.shape[1] != 2:
        return f"keypoints {kpts.dtype} {kpts.shape}, expected float32 [N x 2]"
    n = len(kpts)
    if desc.dtype != np.float32 or desc.shape != (n, 128):
        return f"descriptors {desc.dtype} {desc.shape}, expected float32 [{n} x 128]"
    if scores.dtype != np.float32 or scores.shape != (n,):
        return f"keypoint_scores {scores.dtype} {scores.shape}, expected float32 [{n}]"
    if size.dtype.kind not in "iu" or size.shape != (2,) or not (size > 0).all():
        return f"image_size {size.dtype} {size.shape}, expected two positive integers"
    if not (np.isfinite(kpts).all() and np.isfinite(desc).all() and np.isfinite(scores).all()):
        return "non-finite values"
    return None


def shortlist_entry_problem(feats: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a stored stage-1 (RootSIFT) entry (None when it looks as written)."""
    kpts, desc, size = (np.asarray(feats[name]) for name in SHORTLIST_ARRAY_KEYS)
    if kpts.ndim != 2 or kpts.shape[1] != 2 or desc.ndim != 2 or len(desc) != len(kpts):
        return f"keypoints {kpts.shape} and descriptors {desc.shape} do not pair up"
    if size.shape != (2,) or not np.isfinite(kpts).all():
        return "image_size or keypoints malformed"
    return None


def _chip_pixels(data: bytes, bbox: Optional[BBox]) -> int:
    """Pixels the decoded chip will hold (header size, or the box); 0 when unknown (decoding will say why)."""
    if bbox is not None:
        return bbox[2] * bbox[3]
    size = image_size(data)
    return size[0] * size[1] if size else 0


def annotation_features(
    annotations: Sequence[Annotation],
    store: FeatureStore,
    config: Config,
    *,
    device: DeviceLike = None,
    progress: bool = True,
    on_error: OnError = "skip",
    kind: FeatureKind = "aliked",
    keep: bool = True,
) -> StoredFeatures:
    """Features of ``annotations`` from ``store``; the unusable ones are dropped (and reported).

    ``on_error='raise'``: raise ImageReadError on the first unusable image instead of skipping it.
    ``kind='stage1'``: the stage-1 features (engine.stage1) instead of ALIKED's. ``keep=False``: those in the
    store come back as ``STORED`` (``stored_features`` reads them back a chunk at a time).
    """
    feats, keys, report = store.features([(a.path, a.bbox) for a in annotations], config,
                                         device=device, progress=progress, on_error=on_error, kind=kind, keep=keep)
    kept = [i for i, f in enumerate(feats) if f is not None]
    return StoredFeatures([annotations[i] for i in kept], [feats[i] for i in kept],  # type: ignore[misc]
                          [keys[i] for i in kept], report)  # type: ignore[misc]


def shortlist_index(store: FeatureStore, stored: StoredFeatures, config: Config, database: Union[str, Path], *,
                    device: Any = None, persist: bool = True) -> AnyIndex:
    """The stage-1 index of a database's annotations, persisted beside the feature store.

    File: ``<store root>/shortlist/<config.shortlist_fingerprint>/<digest of the database path>.npz``.
    ``stored`` holds the annotations' stage-1 (``kind='stage1'``) features and content keys. An existing
    file is brought in step incrementally: annotations no longer in the database are removed, new ones
    added; nothing is rebuilt unless the index type must change. An unreadable or foreign file is rebuilt.
    """
    name = hashlib.sha256(str(Path(database).resolve()).encode()).hexdigest()[:16]
    path = store.root / "shortlist" / config.shortlist_fingerprint / f"{name}.npz"
    by_key = dict(zip(stored.keys, stored.features))
    fingerprint = store.fingerprint(config, "stage1")

    def features_of(keys: List[str]) -> List[Dict[str, Any]]:
        return [stored_features(store, key, fingerprint, by_key[key]) for key in keys]

    index, added, removed = synced_index(path if persist else None, config, list(by_key), features_of,
                                         device=device)
    logger.info("stage-1 index %s: %d annotations (%d added, %d removed), %s, %d vectors",
                path if persist else "(in memory)", len(index), added, removed, index.kind, index.num_vectors)
    return index


def stored_features(store: FeatureStore, key: str, fingerprint: str, held: Dict[str, Any]) -> Dict[str, Any]:
    """``held`` itself, or (when it is ``STORED``) the entry read back from the store."""
    if held is not STORED:
        return held
    feats = store.load(key, fingerprint)
    if feats is None:
        raise ValueError(f"the features of {key} were in the store {store.root} a moment ago and are gone "
                         "(removed or damaged meanwhile); run again")
    return feats
