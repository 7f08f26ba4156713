"""The plugin's one door into WBIA: the Python 3.11 shims, WBIA's registries, the table and route names.

Importing this module applies the shims (:func:`compat.apply`) and only then imports wbia, so it is the
one module whose import order matters. Every other module of the plugin takes what it needs from WBIA
from here (``ut``, ``dtool``, ``const``, ``controller_inject``, ``AnnotMatch``) and registers through
the decorators below, so ``CLASS_INJECT_KEY`` (which ``ibs.load_plugin_module`` reads) covers all of them.
"""
from __future__ import annotations

from . import compat

compat.apply()

import utool as ut
from wbia import constants as const
from wbia import dtool
from wbia.algo.hots.chip_match import AnnotMatch
from wbia.control import controller_inject

PLUGIN_NAME = "wbia_lightglue._plugin"  # the injection key's module name, unchanged since the first release
CLASS_INJECT_KEY, register_ibs_method = controller_inject.make_ibs_register_decorator(PLUGIN_NAME)
register_api = controller_inject.get_wbia_flask_api(PLUGIN_NAME)
register_preproc_annot = controller_inject.register_preprocs["annot"]

FEATURES_TABLE = "LightGlueFeatures"
PAIRWISE_TABLE = "LightGlue"
FEATURE_COLUMNS = ("keypoints", "descriptors", "keypoint_scores", "image_size")
API_PREFIX = "/api/plugin/lightglue"

__all__ = [
    "API_PREFIX", "CLASS_INJECT_KEY", "FEATURES_TABLE", "FEATURE_COLUMNS", "PAIRWISE_TABLE", "PLUGIN_NAME",
    "AnnotMatch", "const", "controller_inject", "dtool", "register_api", "register_ibs_method",
    "register_preproc_annot", "ut",
]
