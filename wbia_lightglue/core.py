"""WBIA-free core of wbia-lightglue: the one public face for users of the library.

    config = load_config()                                   # defaults + /v_config/lightglue/config.json
    feats = extract_features([chip_bgr, ...], config)        # list of Features records
    scores = match_scores(feats[0], feats[1:], config)       # one raw score per database entry, input order

    source = store_source("photos/", config)                 # a database folder/CSV and the feature store
    scored = score_query(Annotation(Path("new.jpg"), "?"), source, config)   # the pipeline, mode from config
    ranking = rank_individuals(scored.scores, [a.individual for a in scored.candidates], config["name_score"])

This module only re-exports; each name lives in the module that owns it (``engine`` for the algorithms,
``engine.stage1`` for stage 1, ``pipeline`` for identification). Importing it imports neither torch nor
wbia: models are built lazily (WBIA forks job-engine processes).
"""
from .data.dataset import Annotation, Dataset, load_dataset
from .engine.cache import FeatureCache, MatchCache, cacheable, get_feature_cache, get_match_cache, invalidate_features
from .engine.calibration import Calibration, CalibrationError, load_calibration, save_calibration
from .engine.config import (
    CPU_PRECISIONS,
    DEFAULT_CONFIG_DIR,
    DEFAULT_CONFIG_PATH,
    DEFAULTS,
    DEVICES,
    FEATURE_CODE_VERSION,
    FEATURE_KEYS,
    MATCH_KEYS,
    MODEL_NAMES,
    NAME_SCORES,
    SCORE_NAMES,
    SPECS,
    Config,
    ConfigError,
    ConfigLike,
    KeySpec,
    load_config,
    resolve_config,
    validate,
)
from .engine.device import DeviceLike, OutOfDeviceMemory, matcher_dtype, resolve_device
from .engine.extraction import (
    InvalidChipError,
    OnError,
    empty_features,
    extract_features,
    features_nbytes,
    prepare_chip,
    resize_long_edge,
)
from .engine.fusion import FusionFitError, fit_logistic, fuse, shortlist_positions
from .engine.match_types import FeatureMapping, Features, MatchResult, Stage1Features, failure
from .engine.memory import MemoryEstimate, check_memory, estimate_memory
from .engine.models import MODELS, ModelRegistry, get_extractor, get_lightglue, get_matcher
from .engine.scoring import (
    FeatureMismatchError,
    check_features,
    geometric_inliers,
    match_pairs,
    match_scores,
    match_settings,
    name_scores,
    pair_score,
    score_of_matches,
)
from .engine.stage1 import Stage1Index, Stage1Scores, build_index, extract_stage1_features
from .pipeline import (
    EvidenceSource,
    QueryScores,
    RankedIndividual,
    calibration_for,
    rank_individuals,
    score_matrix,
    score_query,
)
from .pipeline.files import StoreSource, store_source

__all__ = [
    "CPU_PRECISIONS", "DEFAULT_CONFIG_DIR", "DEFAULT_CONFIG_PATH", "DEFAULTS", "DEVICES", "FEATURE_CODE_VERSION",
    "FEATURE_KEYS", "MATCH_KEYS", "MODEL_NAMES", "NAME_SCORES", "SCORE_NAMES", "SPECS", "Config", "ConfigError",
    "ConfigLike", "KeySpec", "load_config", "resolve_config", "validate",
    "InvalidChipError", "OnError", "empty_features", "extract_features", "features_nbytes", "prepare_chip",
    "resize_long_edge",
    "MODELS", "ModelRegistry", "get_extractor", "get_lightglue", "get_matcher", "matcher_dtype", "resolve_device",
    "FeatureCache", "MatchCache", "cacheable", "get_feature_cache", "get_match_cache", "invalidate_features",
    "MatchResult", "FeatureMismatchError", "check_features", "geometric_inliers", "match_pairs", "match_scores",
    "match_settings", "name_scores", "pair_score", "score_of_matches",
    "DeviceLike", "OutOfDeviceMemory", "MemoryEstimate", "check_memory", "estimate_memory",
    "Features", "FeatureMapping", "Stage1Features", "failure",
    "Calibration", "CalibrationError", "load_calibration", "save_calibration",
    "FusionFitError", "fit_logistic", "fuse", "shortlist_positions",
    "Stage1Index", "Stage1Scores", "build_index", "extract_stage1_features",
    "Annotation", "Dataset", "load_dataset",
    "EvidenceSource", "QueryScores", "RankedIndividual", "calibration_for", "rank_individuals", "score_matrix",
    "score_query", "StoreSource", "store_source",
]
