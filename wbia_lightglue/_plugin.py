"""The WBIA plugin's entry point: importing it registers everything with WBIA.

``import wbia_lightglue`` imports it as soon as wbia is imported; an open controller can attach it late
with ``ibs.load_plugin_module(wbia_lightglue._plugin); ibs._init_depcache()``. The code lives in
:mod:`wbia_lightglue.wbia_plugin`; this module only re-exports it.
"""
from .wbia_plugin.plugin import (
    LightGlueConfig,
    LightGlueFeaturesConfig,
    LightGlueRequest,
    QueryChipError,
    compute_lightglue_features,
    compute_lightglue_scores,
    lightglue_calibrate,
    lightglue_compute_features,
    lightglue_evaluate,
    lightglue_features,
    lightglue_match_scores,
)
from .wbia_plugin.registry import (
    API_PREFIX,
    CLASS_INJECT_KEY,
    FEATURE_COLUMNS,
    FEATURES_TABLE,
    PAIRWISE_TABLE,
)
from .wbia_plugin.routes import (
    lightglue_api_config,
    lightglue_api_feature_status,
    lightglue_api_match_scores,
    lightglue_review_query_chips_best,
    resolve_config_path,
)

__all__ = [
    "API_PREFIX", "CLASS_INJECT_KEY", "FEATURE_COLUMNS", "FEATURES_TABLE", "PAIRWISE_TABLE",
    "LightGlueConfig", "LightGlueFeaturesConfig", "LightGlueRequest", "compute_lightglue_features",
    "compute_lightglue_scores", "lightglue_calibrate", "lightglue_compute_features", "lightglue_evaluate",
    "lightglue_features", "lightglue_match_scores",
    "lightglue_api_config", "lightglue_api_feature_status", "lightglue_api_match_scores",
    "lightglue_review_query_chips_best", "resolve_config_path", "QueryChipError",
]
