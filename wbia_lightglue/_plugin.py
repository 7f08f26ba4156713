"""The WBIA plugin's entry point: importing it registers everything with WBIA, once per process.

``import wbia_lightglue`` imports it as soon as wbia is imported; an open controller can attach it late
with ``ibs.load_plugin_module(wbia_lightglue._plugin); ibs._init_depcache()``. The code lives in
:mod:`wbia_lightglue.wbia_plugin`: importing its modules fills WBIA's registries (their decorators), and
this is the one place that installs the plugin's hook into WBIA (cache invalidation on ``delete_root``).
Otherwise this module only re-exports.
"""
from .wbia_plugin import invalidation
from .wbia_plugin.chips import QueryChipError
from .wbia_plugin.configs import resolve_config_path
from .wbia_plugin.features import (
    LightGlueFeaturesConfig,
    compute_lightglue_features,
    lightglue_compute_features,
    lightglue_features,
)
from .wbia_plugin.pairs import lightglue_calibrate, lightglue_evaluate, lightglue_match_scores
from .wbia_plugin.registry import (
    API_PREFIX,
    CLASS_INJECT_KEY,
    FEATURE_COLUMNS,
    FEATURES_TABLE,
    PAIRWISE_TABLE,
)
from .wbia_plugin.request import LightGlueConfig, LightGlueRequest, compute_lightglue_scores
from .wbia_plugin.routes import (
    lightglue_api_config,
    lightglue_api_feature_status,
    lightglue_api_match_scores,
    lightglue_review_query_chips_best,
)
from .wbia_plugin.stage1 import lightglue_stage1_scores

invalidation.install_invalidation_hook()

__all__ = [
    "API_PREFIX", "CLASS_INJECT_KEY", "FEATURE_COLUMNS", "FEATURES_TABLE", "PAIRWISE_TABLE",
    "LightGlueConfig", "LightGlueFeaturesConfig", "LightGlueRequest", "compute_lightglue_features",
    "compute_lightglue_scores", "lightglue_calibrate", "lightglue_compute_features", "lightglue_evaluate",
    "lightglue_features", "lightglue_match_scores", "lightglue_stage1_scores",
    "lightglue_api_config", "lightglue_api_feature_status", "lightglue_api_match_scores",
    "lightglue_review_query_chips_best", "resolve_config_path", "QueryChipError",
]
