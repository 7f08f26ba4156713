"""The effective configuration: one schema of named keys, validation that names the file, key and value,
and two fingerprints (of the values that change features, and of those that change match scores).

Every key is optional; a JSON file overrides the defaults it names (default file:
``/v_config/lightglue/config.json``, or ``$WBIA_LIGHTGLUE_CONFIG_DIR/config.json``).

About 410 lines because the schema, the checked reading of a file and the fingerprints of what each key changes
(including the stage-1 detector ``"auto"`` stands for) must stay one place: every caller keys stored results by them.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Tuple, Union

DEFAULT_CONFIG_DIR = Path(os.environ.get("WBIA_LIGHTGLUE_CONFIG_DIR", "/v_config/lightglue"))
DEFAULT_CONFIG_PATH = DEFAULT_CONFIG_DIR / "config.json"

MODEL_NAMES = ("aliked-n16", "aliked-t16", "aliked-n16rot", "aliked-n32")
DEVICES = ("auto", "cpu", "cuda")
SCORE_NAMES = ("confidence_sum", "match_count", "inlier_count", "inlier_confidence_sum")
NAME_SCORES = ("max", "sum", "mean_top3")
CPU_PRECISIONS = ("fp32", "bf16")
SHORTLIST_SOURCES = ("index", "hotspotter")
# auto: hesaff when pyhesaff imports, else sift (one warning); the fingerprints see the detector it resolves to
SHORTLIST_DETECTORS = ("auto", "hesaff", "sift")
SHORTLIST_INDEXES = ("auto", "flat", "ivf", "ivfpq", "aggregated")
FUSIONS = ("sum_log1p", "logistic", "lightglue")

# Bumped whenever extraction code changes its output for the same config (invalidates stored features).
FEATURE_CODE_VERSION = 1


class ConfigError(ValueError):
    """A config file or value is invalid; the message names the file, key and value.

    ``public`` is the same message without the offending value, for callers who did not write the file
    (a web request naming a server-side config): it names the file and key, never their contents.
    """

    def __init__(self, message: str, public: Optional[str] = None):
        super().__init__(message)
        self.public = public if public is not None else message


@dataclass(frozen=True)
class KeySpec:
    """One config key: its default, its JSON type and the values it may take."""

    default: Any
    kind: str  # 'string', 'integer', 'number' or 'boolean'
    allowed: Callable[[Any], bool] = lambda value: True
    allowed_text: str = ""

    def type_ok(self, value: Any) -> bool:
        if self.kind == "boolean":
            return isinstance(value, bool)
        if isinstance(value, bool):
            return False
        if self.kind == "integer":
            return isinstance(value, int)
        if self.kind == "number":  # JSON reads NaN, Infinity and 1e400 (= inf): none is a usable setting
            return isinstance(value, int) or (isinstance(value, float) and math.isfinite(value))
        return isinstance(value, str)


def _choice(*names: str) -> Tuple[Callable[[Any], bool], str]:
    return (lambda value: value in names), f"one of {', '.join(names)}"


def _adaptive(value: float) -> bool:
    """-1 disables the mechanism; otherwise a confidence in (0, 1]."""
    return value == -1 or 0 < value <= 1


_CUDA_INDEX = re.compile(r"cuda:(0|[1-9][0-9]{0,2})", re.ASCII)  # ASCII digits only: '①'.isdigit() is True


def device_name_ok(value: str) -> bool:
    """auto, cpu, cuda, or cuda:N with N a plain decimal index below 1000."""
    return value in DEVICES or _CUDA_INDEX.fullmatch(value) is not None


SPECS: Dict[str, KeySpec] = {
    "model_name": KeySpec("aliked-n16", "string", *_choice(*MODEL_NAMES)),
    "max_num_keypoints": KeySpec(2048, "integer", lambda v: 1 <= v <= 16384, "1..16384"),
    "detection_threshold": KeySpec(0.0, "number", lambda v: 0 <= v < 1, "0 <= x < 1"),
    "depth_confidence": KeySpec(0.95, "number", _adaptive, "-1 (off) or 0 < x <= 1"),
    "width_confidence": KeySpec(0.99, "number", _adaptive, "-1 (off) or 0 < x <= 1"),
    "filter_threshold": KeySpec(0.1, "number", lambda v: 0 <= v < 1, "0 <= x < 1"),
    # score screening (matcher.BatchedLightGlue.match): after screen_layer layers, a pair whose confidence
    # sum is below screen_score stops there; 0 = off. Opt-in: 2 / 10 held on nyala (benchmarks/screen_nyala.py)
    # but the bar is absolute and cost the synthetic demo 17 Rank-1 points, so the default stays exact
    "screen_layer": KeySpec(0, "integer", lambda v: 0 <= v <= 8, "0 (off) .. 8"),
    "screen_score": KeySpec(10.0, "number", lambda v: v >= 0, ">= 0"),
    "image_size": KeySpec(512, "integer", lambda v: 64 <= v <= 4096, "64..4096"),
    "feature_cache_max_size": KeySpec(10000, "integer", lambda v: 0 <= v <= 10**9,
                                      "0..1000000000 (0 disables the cache)"),
    # ~1 MiB per annotation at 2048 keypoints: 10,000 entries alone could take 10 GiB
    "feature_cache_max_bytes": KeySpec(2 << 30, "integer", lambda v: 0 <= v <= 1 << 50,
                                       "0..2**50 (0 = no byte bound)"),
    "device": KeySpec("auto", "string", device_name_ok, "auto, cpu, cuda or cuda:N"),
    "compile": KeySpec(True, "boolean"),
    "mixed_precision": KeySpec(True, "boolean"),
    "cpu_precision": KeySpec("fp32", "string", *_choice(*CPU_PRECISIONS)),
    "batch_memory_mb": KeySpec(0, "integer", lambda v: 0 <= v <= 1 << 24, "0..16777216 (0 = automatic)"),
    "score": KeySpec("confidence_sum", "string", *_choice(*SCORE_NAMES)),
    "score_match_threshold": KeySpec(0.5, "number", lambda v: 0 <= v < 1, "0 <= x < 1"),
    "name_score": KeySpec("max", "string", *_choice(*NAME_SCORES)),
    # standalone tool: a photo whose header claims more pixels is skipped unread (decompression bombs);
    # 160 MP decodes to 480 MB of BGR. OpenCV itself refuses more than 2**30.
    "max_image_pixels": KeySpec(160_000_000, "integer", lambda v: 1 <= v <= 1 << 30, "1..2**30 (1073741824)"),
    # WBIA: the synchronous match-score route refuses larger databases (0 = automatic from the device and
    # keypoints, see wbia_plugin.routes.sync_database_limit); bigger queries go through the job engine
    "web_max_database": KeySpec(0, "integer", lambda v: 0 <= v <= 100_000, "0 (automatic) .. 100000"),
    # two-stage identification (engine.stage1, engine.fusion): stage 1 ranks the whole database with a
    # kNN index (or WBIA's HotSpotter), LightGlue scores only its top shortlist_k, the two scores are fused.
    # shortlist_k = 0: exhaustive LightGlue, exactly the one-stage scores. The default 15 is the longest shortlist
    # whose query against 10^4 annotations stays under 15 s on a 2-core CPU at 2048 keypoints (benchmarks README:
    # the default two-stage score); a database of at most 15 annotations is matched in full, and still fused
    "shortlist_k": KeySpec(15, "integer", lambda v: 0 <= v <= 100000, "0 (exhaustive) .. 100000"),
    "shortlist_source": KeySpec("index", "string", *_choice(*SHORTLIST_SOURCES)),
    # stage-1 features on the chip downsized to a long edge of at most shortlist_image_size: Hessian-affine
    # SIFT (pyhesaff, HotSpotter's detector) or OpenCV's DoG RootSIFT; at most shortlist_features a chip.
    # Defaults chosen on part A of benchmarks/two_stage.py (hesaff at 500 px with the spatial check); "auto"
    # is hesaff wherever pyhesaff is installed (wbia-lightglue setup-hesaff), so a plain pip install still runs
    "shortlist_detector": KeySpec("auto", "string", *_choice(*SHORTLIST_DETECTORS)),
    "shortlist_image_size": KeySpec(500, "integer", lambda v: 64 <= v <= 8192, "64..8192"),
    "shortlist_features": KeySpec(4000, "integer", lambda v: 16 <= v <= 20000, "16..20000"),
    "shortlist_knn": KeySpec(4, "integer", lambda v: 1 <= v <= 64, "1..64"),  # LNBNN K (+1 normaliser)
    "shortlist_index": KeySpec("auto", "string", *_choice(*SHORTLIST_INDEXES)),
    "shortlist_nprobe": KeySpec(16, "integer", lambda v: 1 <= v <= 65536, "1..65536"),
    "shortlist_spatial": KeySpec(True, "boolean"),
    "fusion": KeySpec("sum_log1p", "string", *_choice(*FUSIONS)),
    # fusion 'logistic': P(same) = sigmoid(bias + w_lightglue * log1p(lightglue) + w_stage1 * log1p(stage 1))
    "fusion_bias": KeySpec(0.0, "number"),
    "fusion_w_lightglue": KeySpec(1.0, "number", lambda v: v >= 0, ">= 0"),
    "fusion_w_stage1": KeySpec(1.0, "number", lambda v: v >= 0, ">= 0"),
}
DEFAULTS: Dict[str, Any] = {key: spec.default for key, spec in SPECS.items()}

FEATURE_KEYS = ("model_name", "max_num_keypoints", "detection_threshold", "image_size")
MATCH_KEYS = ("depth_confidence", "width_confidence", "filter_threshold", "screen_layer", "screen_score", "score",
              "score_match_threshold")
# what the stage-1 index holds (keys its persisted file); the pair table's match scores do not depend on them
SHORTLIST_FEATURE_KEYS = ("shortlist_detector", "shortlist_image_size", "shortlist_features")
SHORTLIST_INDEX_KEYS = ("shortlist_index",)
# what turns pair scores into the ranking (two-stage); with shortlist_k = 0 none of them matters
RANKING_KEYS = ("shortlist_k", "shortlist_source", "shortlist_knn", "shortlist_nprobe", "shortlist_spatial",
                "fusion", "fusion_bias", "fusion_w_lightglue", "fusion_w_stage1", "name_score")
# Bumped whenever stage-1 (RootSIFT) extraction changes its output for the same config.
SHORTLIST_CODE_VERSION = 1


# exhaustive: LightGlue against every database annotation; two_stage: stage 1, LightGlue on its shortlist, fusion
Mode = Literal["exhaustive", "two_stage"]


class Config(Mapping):
    """Read-only effective configuration (a mapping; keys are also attributes).

    ``source`` is the file it was read from (None for the built-in defaults).
    """

    _values: Dict[str, Any]
    source: Optional[str]

    def __init__(self, values: Mapping[str, Any], source: Optional[str] = None):
        merged = dict(DEFAULTS)
        merged.update(values)
        validate(merged, source)
        # JSON has one number type: store floats as floats so 1 and 1.0 fingerprint alike.
        for key, spec in SPECS.items():
            if spec.kind == "number":
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
        raise AttributeError("Config is read-only; use .replace(**changes)")

    def __repr__(self) -> str:
        return f"Config({self._values!r}, source={self.source!r})"

    def __reduce__(self) -> Tuple[Any, ...]:
        """Pickled as its values and source (``__getattr__`` would otherwise recurse while unpickling)."""
        return (Config, (dict(self._values), self.source))

    def __hash__(self) -> int:
        return hash(self.fingerprint)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self) == dict(other)

    def replace(self, **changes: Any) -> "Config":
        """A new config with ``changes`` applied (validated)."""
        return Config({**self._values, **changes}, source=self.source)

    def to_dict(self) -> Dict[str, Any]:
        return dict(self._values)

    @property
    def feature_fingerprint(self) -> str:
        """Digest of the values that change extracted features."""
        return digest({"v": FEATURE_CODE_VERSION, **{k: self._values[k] for k in FEATURE_KEYS}})

    @property
    def match_fingerprint(self) -> str:
        """Digest of the values that change match scores (features included)."""
        return digest({"features": self.feature_fingerprint, **{k: self._values[k] for k in MATCH_KEYS}})

    @property
    def stage1_detector(self) -> str:
        """The stage-1 detector ``shortlist_detector`` stands for here: ``"hesaff"`` or ``"sift"``.

        ``"auto"`` resolves to ``"hesaff"`` when pyhesaff imports, else to ``"sift"`` (one warning a process);
        ``"hesaff"`` without pyhesaff is a ConfigError naming the fix.
        """
        return resolve_detector(self._values["shortlist_detector"])

    @property
    def shortlist_feature_fingerprint(self) -> str:
        """Digest of the values that change stage-1 features (``auto`` as the detector it resolves to)."""
        values = {k: self._values[k] for k in SHORTLIST_FEATURE_KEYS}
        values["shortlist_detector"] = self.stage1_detector  # "auto" with pyhesaff keys what "hesaff" did
        return digest({"v": SHORTLIST_CODE_VERSION, **values})

    @property
    def shortlist_fingerprint(self) -> str:
        """Digest of the values that change the stage-1 index (keys its persisted file)."""
        return digest({"features": self.shortlist_feature_fingerprint,
                       **{k: self._values[k] for k in SHORTLIST_INDEX_KEYS}})

    @property
    def mode(self) -> Mode:
        """How a query is identified under this config; THE one place that decides it.

        ``"two_stage"`` when ``shortlist_k`` > 0 (stage 1 ranks the database, LightGlue scores its top
        ``shortlist_k``, the scores are fused), else ``"exhaustive"`` (LightGlue against every annotation).
        """
        return "two_stage" if self._values["shortlist_k"] > 0 else "exhaustive"

    @property
    def pair_score_fingerprint(self) -> str:
        """Digest of everything that changes a pair's ranking score (what a calibration maps to a probability).

        Exhaustive: the match fingerprint (the score is LightGlue's). Two-stage: match scores, stage 1 and the
        fusion, but not the name score (which combines pair scores into an individual's).
        """
        if self.mode == "exhaustive":
            return self.match_fingerprint
        return digest({"match": self.match_fingerprint, "shortlist": self.shortlist_fingerprint,
                       **{k: self._values[k] for k in RANKING_KEYS if k != "name_score"}})

    @property
    def ranking_fingerprint(self) -> str:
        """Digest of everything that changes the final ranking: match scores, stage 1 and fusion.

        With ``shortlist_k = 0`` (exhaustive) the stage-1 and fusion keys do not matter and are left out.
        """
        if self.mode == "exhaustive":
            return digest({"match": self.match_fingerprint, "name_score": self._values["name_score"]})
        return digest({"match": self.match_fingerprint, "shortlist": self.shortlist_fingerprint,
                       **{k: self._values[k] for k in RANKING_KEYS}})

    @property
    def fingerprint(self) -> str:
        return digest(self._values)


# A config, a mapping of overrides, a path to a JSON file, or None (defaults / the default file).
ConfigLike = Union[Config, Mapping[str, Any], str, Path, None]


def digest(values: Mapping[str, Any]) -> str:
    """A stable 16-hex-digit digest of JSON-serialisable values."""
    blob = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


_warned_fallback = False  # the "auto" fallback is reported once a process


def resolve_detector(name: str) -> str:
    """A ``shortlist_detector`` value as a concrete detector: ``"hesaff"`` or ``"sift"``.

    ``"auto"``: ``"hesaff"`` when pyhesaff imports, else ``"sift"`` with one logged warning saying how to get
    Hessian-affine. ``"hesaff"`` without pyhesaff: ConfigError naming ``wbia-lightglue setup-hesaff``.
    """
    global _warned_fallback
    if name == "sift":
        return name
    from .stage1 import hesaff  # lazily: pyhesaff loads a shared library

    if hesaff.available():
        return "hesaff"
    if name == "hesaff":
        raise ConfigError(f"shortlist_detector 'hesaff': {hesaff.MISSING}, or set shortlist_detector to 'auto' "
                          "or 'sift'")
    if not _warned_fallback:
        _warned_fallback = True
        logging.getLogger("wbia_lightglue").warning(
            "stage 1 uses OpenCV SIFT (shortlist_detector 'auto'): %s (its shortlists were better on nyala, "
            "benchmarks/README.md)", hesaff.MISSING)
    return "sift"


def validate(values: Mapping[str, Any], source: Optional[str] = None) -> None:
    """Raise ConfigError naming the file, key and value for the first invalid entry."""
    where = f"config {source}" if source else "config"
    for key, value in values.items():
        spec = SPECS.get(key)
        if spec is None:
            valid = _valid_keys(str(key))
            raise ConfigError(f"{where}: unknown key {_short(key)} (value {_short(value)}); {valid}",
                              public=f"{where}: unknown key {_short(key, 40)}; {valid}")
        if not spec.type_ok(value):
            expected = f"must be a{' finite' if isinstance(value, float) and spec.kind == 'number' else ''} {spec.kind}"
            raise ConfigError(f"{where}: key {key!r} {expected}, got {_short(value)}",
                              public=f"{where}: key {key!r} {expected}")
        if not spec.allowed(value):
            raise ConfigError(f"{where}: key {key!r} has value {_short(value)}; expected {spec.allowed_text}",
                              public=f"{where}: key {key!r} has a value outside {spec.allowed_text}")


def _valid_keys(key: str) -> str:
    """The valid keys for an unknown-key message: the closest ones first, then every key (one line)."""
    import difflib

    closest = difflib.get_close_matches(key[:100], SPECS, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(map(repr, closest))}? " if closest else ""
    return f"{hint}valid keys: {', '.join(sorted(SPECS))}"


def _short(value: Any, limit: int = 60) -> str:
    """repr of a value for a message, cut to ``limit`` characters (a file may hold anything)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


MAX_CONFIG_BYTES = 1 << 20  # a config file is a few hundred bytes; refuse to read a huge one


def load_config(config_path: Union[Config, str, Path, None] = None, **overrides: Any) -> Config:
    """Effective config: defaults, overridden by a JSON file, then by keyword ``overrides``.

    With ``config_path=None`` the default file (``/v_config/lightglue/config.json``) is read when it
    exists, otherwise the built-in defaults apply. A path that was asked for and does not exist is an error.
    Every problem with the file (not a regular file, too large, not UTF-8, not JSON, nested too deeply,
    a key twice, a bad key or value) is a one-line ConfigError naming the file.
    """
    if isinstance(config_path, Config):
        return config_path.replace(**overrides) if overrides else config_path
    if config_path is None:
        path = DEFAULT_CONFIG_PATH
        if not path.exists():
            return Config(overrides)
    else:
        path = Path(config_path)
    values = _read_json_object(path)
    return Config({**values, **overrides}, source=str(path))


def _read_json_object(path: Path) -> Dict[str, Any]:
    try:
        info = path.stat()
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, ValueError) as exc:  # ValueError: NUL in the path; OSError: e.g. name too long
        raise ConfigError(f"config file {path} cannot be read: {getattr(exc, 'strerror', None) or exc}") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO would block, /dev/zero never ends
        raise ConfigError(f"config file {path} is not a regular file")
    if info.st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"config file {path} is {info.st_size:,} bytes; a config is at most {MAX_CONFIG_BYTES:,}")
    try:
        with open(path, "rb") as handle:
            text = handle.read(MAX_CONFIG_BYTES + 1).decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {exc.start})") from None
    try:
        values = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not valid JSON: line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is nested too deeply to be a config") from None
    except ValueError as exc:  # a duplicate key (below), or an integer of more than 4300 digits
        raise ConfigError(f"config file {path} is not a usable config: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, got {type(values).__name__}")
    return values


def _no_duplicate_keys(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    seen: Dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise ValueError(f"key {_short(key)} appears twice")
        seen[key] = value
    return seen


def resolve_config(config: ConfigLike) -> Config:
    """Accept a config, a plain mapping of overrides, a path, or None (defaults / default file)."""
    if isinstance(config, Config):
        return config
    if isinstance(config, Mapping):
        return Config(config)
    return load_config(config)
