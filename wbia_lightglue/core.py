"""WBIA-free core of wbia-lightglue: the public face of :mod:`wbia_lightglue.engine`.

    config = load_config()                                   # defaults + /v_config/lightglue/config.json
    feats = extract_features([chip_bgr, ...], config)        # list of feature dicts
    scores = match_scores(feats[0], feats[1:], config)       # one raw score per database entry, input order

This module only re-exports; each name lives in the engine module that owns it. Importing it imports
neither torch nor wbia: models are built lazily (WBIA forks job-engine processes).
"""
from .engine.cache import FeatureCache, MatchCache, cacheable, get_feature_cache, get_match_cache, invalidate_features
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
from .engine.device import matcher_dtype, resolve_device
from .engine.extraction import (
    InvalidChipError,
    OnError,
    empty_features,
    extract_features,
    features_nbytes,
    prepare_chip,
    resize_long_edge,
)
from .engine.match_types import MatchResult
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
]
