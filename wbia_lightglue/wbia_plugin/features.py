"""ALIKED features of annotations: the ``LightGlueFeatures`` depc table and the ibs methods that read it.

Registered: ibs methods ``lightglue_compute_features`` and ``lightglue_features``; the depc table
``LightGlueFeatures`` (one row per annotation, config class ``LightGlueFeaturesConfig``).

Freshness across processes: features in memory are keyed by each annotation's visual UUID (WBIA renews it
on every image/bbox/theta edit); a chip that cannot be read is never stored; features computed while
their annotation changed are dropped (:func:`_drop_if_changed`).
"""
from __future__ import annotations

import logging
import uuid
from typing import Any, Iterator, List, Sequence, Tuple

import numpy as np

from .. import core
from .chips import annot_chips, annot_uuids, image_path
from .configs import ConfigPath, as_config, features_depc_config, from_depc_config
from .registry import (
    FEATURE_COLUMNS,
    FEATURES_TABLE,
    const,
    dtool,
    register_ibs_method,
    register_preproc_annot,
    ut,
)
from .state import STATE

logger = logging.getLogger("wbia_lightglue")

FeatureKey = Tuple[uuid.UUID, uuid.UUID]  # (annotation UUID, visual UUID)


@register_ibs_method
def lightglue_compute_features(ibs, aid_list: Sequence[int], config_path: ConfigPath = None) -> List[dict]:
    """ALIKED features of each annotation's chip, computed now (no cache, no SQLite).

    An annotation whose image is missing or unreadable, or whose chip is empty, gets empty features
    (every score against it is 0) and a logged warning naming it; the others are unaffected.
    """
    return compute_features(ibs, list(aid_list), as_config(config_path))


@register_ibs_method
def lightglue_features(ibs, aid_list: Sequence[int], config_path: ConfigPath = None,
                       use_depc: bool = True) -> List[dict]:
    """Features of each annotation, in order (never None): in-memory LRU, then SQLite, then computed.

    The in-memory cache is keyed by (annotation UUID, visual UUID) and the config's feature
    fingerprint, so an edited annotation is never served its old features by any process. With
    ``use_depc`` the misses are read from (or computed into) the ``LightGlueFeatures`` table. An
    annotation whose chip cannot be computed gets empty features with an ``error`` entry; they are
    neither cached nor stored, so a later request tries again.
    """
    return features_with_keys(ibs, list(aid_list), as_config(config_path), use_depc)[1]


def compute_features(ibs, aids: List[int], config: core.Config) -> List[dict]:
    """``lightglue_compute_features`` under a resolved config."""
    chips = annot_chips(ibs, aids)
    readable = [i for i, chip in enumerate(chips) if chip is not None]
    feats = [core.empty_features(config, error=f"annotation {aid}: no chip (image {image_path(ibs, aid)} "
                                               "is missing or unreadable)") for aid in aids]
    extracted = core.extract_features([chips[i] for i in readable], config, keys=[aids[i] for i in readable],
                                      on_error="skip") if readable else []
    for i, one in zip(readable, extracted):
        feats[i] = one
    return feats


def feature_keys(ibs, aids: Sequence[int]) -> List[FeatureKey]:
    """(annotation UUID, visual UUID) of each annotation: the in-memory key of its features.

    WBIA gives an annotation a new visual UUID whenever its image, bbox/verts or theta change, before it
    deletes the annotation's derived rows, and every process reads it from the database. So a changed
    chip has a new key in every process (a job-engine worker included), never the old entry.
    """
    aids = list(aids)
    uuids = annot_uuids(ibs, aids)
    visual = ibs.get_annot_visual_uuids(aids)
    return list(zip(uuids, visual))


def features_with_keys(ibs, aids: List[int], config: core.Config,
                       use_depc: bool = True) -> Tuple[List[FeatureKey], List[dict]]:
    """The feature keys of ``aids`` and their features (``lightglue_features`` under a resolved config)."""
    keys = feature_keys(ibs, aids)
    aid_of = dict(zip(keys, aids))

    def compute(missing: List[FeatureKey]) -> List[dict]:
        missing_aids = [aid_of[k] for k in missing]
        if use_depc:
            feats = _stored_features(ibs, missing_aids, config)
        else:
            feats = compute_features(ibs, missing_aids, config)
        _drop_if_changed(ibs, missing_aids, missing, feats, config, use_depc)
        return feats

    return keys, core.get_feature_cache(config).get_or_compute(keys, config.feature_fingerprint, compute)


def _drop_if_changed(ibs, aids: List[int], keys: List[FeatureKey], feats: List[dict],
                     config: core.Config, stored: bool) -> None:
    """Features computed while their annotation changed may come from the old chip: keep them out of
    the in-memory cache and delete their SQLite rows.

    WBIA changes the visual UUID first and deletes derived rows after; a row written late, after that
    deletion, is caught here because the UUID is read again after the write (an edit later than this read
    deletes the row itself).
    """
    now = feature_keys(ibs, aids)
    changed = [i for i, (before, after) in enumerate(zip(keys, now)) if before != after]
    if not changed:
        return
    for i in changed:
        feats[i] = {**feats[i], "stale": True}
    changed_aids = [aids[i] for i in changed]
    if stored:
        ibs.depc_annot.delete_property(FEATURES_TABLE, changed_aids, config=features_depc_config(config))
    logger.info("annotations %s changed while their features were computed; those features are not kept",
                changed_aids)


def _stored_features(ibs, aids: List[int], config: core.Config) -> List[dict]:
    depc_config = features_depc_config(config)
    rows = ibs.depc_annot.get(FEATURES_TABLE, aids, None, config=depc_config)
    # Rows from before failed chips were kept out of the table: empty, of a (0, 0) chip. Retry them once.
    pinned = [aid for aid, row in zip(aids, rows) if _is_failed_row(row)]
    if pinned:
        logger.info("annotations %s: stored features of a chip that had failed; computing them again", pinned)
        ibs.depc_annot.delete_property(FEATURES_TABLE, pinned, config=depc_config)
        again = dict(zip(pinned, ibs.depc_annot.get(FEATURES_TABLE, pinned, None, config=depc_config)))
        rows = [again.get(aid, row) for aid, row in zip(aids, rows)]
    feats = []
    for aid, row in zip(aids, rows):
        if _is_missing_row(row):
            error = STATE.pop_failure(aid, config.feature_fingerprint)
            feats.append(core.empty_features(config, error=error or f"annotation {aid}: no chip"))
        else:
            feats.append(_row_to_features(row, config))
    return feats


def _is_missing_row(row: Any) -> bool:
    return row is None or any(value is None for value in row)


def _is_failed_row(row: Any) -> bool:
    return not _is_missing_row(row) and len(row[0]) == 0 and not np.all(np.asarray(row[3]) > 0)


def _row_to_features(row: Tuple[np.ndarray, ...], config: core.Config) -> dict:
    feats = {name: np.asarray(value) for name, value in zip(FEATURE_COLUMNS, row)}
    feats["fingerprint"] = config.feature_fingerprint
    return feats


class LightGlueFeaturesConfig(dtool.Config):
    """Config of the LightGlueFeatures table: the config file and the feature fingerprint of its contents."""

    _param_info_list = [
        ut.ParamInfo("config_path", None),
        ut.ParamInfo("fingerprint", None),
    ]


@register_preproc_annot(
    tablename=FEATURES_TABLE,
    parents=[const.ANNOTATION_TABLE],
    colnames=list(FEATURE_COLUMNS),
    coltypes=[np.ndarray] * len(FEATURE_COLUMNS),
    configclass=LightGlueFeaturesConfig,
    fname="lightglue",
    chunksize=64,
)
def compute_lightglue_features(depc, aid_list: Sequence[int], config=None) -> Iterator[tuple]:
    """depc: one row (keypoints, descriptors, keypoint_scores, image_size) per annotation."""
    config = config or {}
    lightglue_config = from_depc_config(config)
    expected = config["fingerprint"] if "fingerprint" in config else None
    if expected is not None and expected != lightglue_config.feature_fingerprint:
        raise core.ConfigError(
            f"config {lightglue_config.source} changed while features were requested "
            f"(fingerprint {lightglue_config.feature_fingerprint}, expected {expected})")
    aids = list(aid_list)
    for aid, feats in zip(aids, compute_features(depc.controller, aids, lightglue_config)):
        error = core.failure(feats)
        if error is not None:
            # Not stored: an image unreadable for a moment must not score 0 until its bbox changes.
            STATE.remember_failure(aid, lightglue_config.feature_fingerprint, error)
            yield None
        else:
            yield tuple(feats[name] for name in FEATURE_COLUMNS)
