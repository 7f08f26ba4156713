"""WBIA's registries for this plugin: one ibs-method injector, the web-route and depc-table decorators.

Every module of the plugin registers through these, so ``CLASS_INJECT_KEY`` (which
``ibs.load_plugin_module`` reads) covers all of them. Importing this module applies the Python 3.11
shims and then imports wbia.
"""
from __future__ import annotations

from . import compat

compat.apply()

from wbia.control import controller_inject  # noqa: E402

PLUGIN_NAME = "wbia_lightglue._plugin"  # the injection key's module name, unchanged since the first release
CLASS_INJECT_KEY, register_ibs_method = controller_inject.make_ibs_register_decorator(PLUGIN_NAME)
register_api = controller_inject.get_wbia_flask_api(PLUGIN_NAME)
register_preproc_annot = controller_inject.register_preprocs["annot"]

FEATURES_TABLE = "LightGlueFeatures"
PAIRWISE_TABLE = "LightGlue"
FEATURE_COLUMNS = ("keypoints", "descriptors", "keypoint_scores", "image_size")
API_PREFIX = "/api/plugin/lightglue"
