"""Forgetting in-memory state when WBIA deletes an annotation's derived data (a chip edit or a deletion).

:func:`install_invalidation_hook` wraps ``dtool.DependencyCache.delete_root`` once; the plugin's entry
point (:mod:`wbia_lightglue._plugin`) calls it when the plugin is registered. Stored rows need no help:
WBIA's own ``delete_root`` deletes the annotation's LightGlueFeatures and LightGlue rows.
"""
from __future__ import annotations

import functools
import logging
from typing import Sequence

from .. import core
from .registry import const, dtool
from .state import STATE

logger = logging.getLogger("wbia_lightglue")


def install_invalidation_hook() -> None:
    """Forget in-memory features whenever WBIA deletes an annotation's derived data (idempotent).

    WBIA calls ``depc_annot.delete_root(aids)`` (via ``notify_root_changed(..., force_delete=True)``)
    when an annotation's bbox, verts or theta change, and when an annotation is deleted; that call
    also deletes the stored LightGlueFeatures and LightGlue rows. WBIA has no callback registry for
    it, so the method is wrapped once, for annotation caches only.
    """
    original = dtool.DependencyCache.delete_root
    if getattr(original, "_lightglue_invalidates", False):
        return

    @functools.wraps(original)
    def delete_root(depc, root_rowids, *args, **kwargs):
        if depc.root == const.ANNOTATION_TABLE and depc.controller is not None:
            forget_annotations(depc.controller, list(root_rowids))
        return original(depc, root_rowids, *args, **kwargs)

    delete_root._lightglue_invalidates = True
    dtool.DependencyCache.delete_root = delete_root


def forget_annotations(ibs, aids: Sequence[int]) -> None:
    """Drop the cached features of ``aids`` and their descriptors in the live stage-1 indexes."""
    uuids = [u for u in ibs.get_annot_uuids(list(aids)) if u is not None]
    dropped = core.invalidate_features(uuids)
    if dropped:
        logger.info("dropped %d cached feature entries of %d annotations whose chips changed", dropped, len(uuids))
    # their stage-1 descriptors go too (keyed by the visual UUID the chip had until now)
    dbdir = str(ibs.get_dbdir())
    visual = STATE.forget_indexed(dbdir, aids)
    for index in STATE.indexes_of(dbdir):
        if visual and index.remove(visual):
            logger.info("dropped %d annotations from the stage-1 index (chips changed)", len(visual))
