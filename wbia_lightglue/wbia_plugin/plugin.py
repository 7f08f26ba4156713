"""Wildbook IA glue: ibs methods, dependency-cache tables, the LightGlue query request, cache invalidation.

It holds no algorithm: features, scores and name scores come from :mod:`wbia_lightglue.core`, the
evaluation protocol and calibration from :mod:`wbia_lightglue.evaluation`, review images from
:mod:`wbia_lightglue.evaluation.drawing`. The web routes are in :mod:`.routes`.

Registered here:

* ibs methods ``lightglue_compute_features``, ``lightglue_features``, ``lightglue_match_scores``,
  ``lightglue_evaluate``, ``lightglue_calibrate``;
* depc tables ``LightGlueFeatures`` (per annotation) and ``LightGlue`` (per annotation pair, with the
  request class used by ``ibs.query_chips(..., cfgdict={'pipeline_root': 'LightGlue'})`` and by WBIA's
  job engine for Wildbook, whose review images it draws).

Freshness across processes: features in memory are keyed by each annotation's visual UUID (WBIA renews it
on every image/bbox/theta edit); a chip that cannot be read is never stored; features computed while
their annotation changed are dropped.

Two-stage mode (config ``shortlist_k`` > 0): a request first ranks every database annotation with stage 1
(``shortlist_source``: the plugin's FAISS RootSIFT index, ``lightglue_stage1_scores``, or WBIA's own
HotSpotter through ``ibs.query_chips`` with the default pipeline), computes the ``LightGlue`` pair table
(raw confidence sums, as always) only for each query's top ``shortlist_k``, and builds the AnnotMatch from
the fused scores (``engine.fusion``); annotations outside the shortlist keep their stage-1 evidence.
"""
from __future__ import annotations

import functools
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from .registry import (  # first: applies the Python 3.11 shims before wbia is imported
    FEATURE_COLUMNS,
    FEATURES_TABLE,
    PAIRWISE_TABLE,
    register_ibs_method,
    register_preproc_annot,
)

import numpy as np  # noqa: E402
import utool as ut  # noqa: E402
import wbia  # noqa: E402
from wbia import constants as const  # noqa: E402
from wbia import dtool  # noqa: E402

from .. import core  # noqa: E402
from ..engine import fusion  # noqa: E402
from ..engine.stage1 import Stage1Index, extract_stage1_features  # noqa: E402
from ..evaluation import calibration, drawing  # noqa: E402
from ..evaluation.protocol import DEFAULT_RANKS, evaluate_scores, score_feature_pairs  # noqa: E402

logger = logging.getLogger("wbia_lightglue")

ConfigPath = Union[core.Config, str, Path, None]


# ============================================================================ annotations and chips
def _annot_chips(ibs, aids: Sequence[int]) -> List[Optional[np.ndarray]]:
    """BGR chips in ``aids`` order; None (and a warning naming the annotation) where there is none.

    WBIA computes chips in one batch and one unreadable image fails the whole batch, so on failure
    each annotation is retried alone to isolate the bad ones.
    """
    try:
        chips = _chips(ibs, list(aids))
    except Exception as exc:  # noqa: BLE001 - any image error; isolated below
        logger.info("chip batch failed (%s); computing the %d chips one by one", exc, len(aids))
        chips = [_one_chip(ibs, aid) for aid in aids]
    for aid, chip in zip(aids, chips):
        if chip is None:
            logger.warning("annotation %d: no chip (image %s missing or unreadable); it scores 0",
                           aid, _image_path(ibs, aid))
    return chips


def _chips(ibs, aids: List[int]) -> List[np.ndarray]:
    # ibs.get_annot_chips without depc.get's own retries (three tries, 1-3 s apart, per call): a failed
    # chip is never stored here and the next request reads the image again, so waiting buys nothing and
    # cost a failing query job ~8 s per attempt (WBIA runs a failing job six times).
    return list(ibs.depc_annot.get("chips", aids, "img", num_retries=1))


def _one_chip(ibs, aid: int) -> Optional[np.ndarray]:
    try:
        return _chips(ibs, [aid])[0]
    except Exception as exc:  # noqa: BLE001 - a corrupt or missing file raises many kinds of error
        logger.warning("annotation %d: its chip cannot be computed from image %s (%s: %s); it scores 0",
                       aid, _image_path(ibs, aid), type(exc).__name__, exc)
        return None


def _image_path(ibs, aid: int) -> Optional[str]:
    try:
        return ibs.get_annot_image_paths([aid])[0]
    except Exception:  # noqa: BLE001 - only used in a message
        return None


def _annot_uuids(ibs, aids: Sequence[int]) -> List[uuid.UUID]:
    """Annotation UUIDs (the feature cache key: stable, and unique across databases in one process)."""
    uuids = ibs.get_annot_uuids(list(aids))
    unknown = [aid for aid, u in zip(aids, uuids) if u is None]
    if unknown:
        raise ValueError(f"unknown annotation ids: {unknown}")
    return list(uuids)


# ============================================================================ features
@register_ibs_method
def lightglue_compute_features(ibs, aid_list: Sequence[int], config_path: ConfigPath = None) -> List[dict]:
    """ALIKED features of each annotation's chip, computed now (no cache, no SQLite).

    An annotation whose image is missing or unreadable, or whose chip is empty, gets empty features
    (every score against it is 0) and a logged warning naming it; the others are unaffected.
    """
    config = core.load_config(config_path)
    aids = list(aid_list)
    chips = _annot_chips(ibs, aids)
    readable = [i for i, chip in enumerate(chips) if chip is not None]
    feats = [core.empty_features(config, error=f"annotation {aid}: no chip (image {_image_path(ibs, aid)} "
                                               "is missing or unreadable)") for aid in aids]
    extracted = core.extract_features([chips[i] for i in readable], config, keys=[aids[i] for i in readable],
                                      on_error="skip") if readable else []
    for i, one in zip(readable, extracted):
        feats[i] = one
    return feats


def _feature_keys(ibs, aids: Sequence[int]) -> List[Tuple[uuid.UUID, uuid.UUID]]:
    """(annotation UUID, visual UUID) of each annotation: the in-memory key of its features.

    WBIA gives an annotation a new visual UUID whenever its image, bbox/verts or theta change, before it
    deletes the annotation's derived rows, and every process reads it from the database. So a changed
    chip has a new key in every process (a job-engine worker included), never the old entry.
    """
    aids = list(aids)
    uuids = _annot_uuids(ibs, aids)
    visual = ibs.get_annot_visual_uuids(aids)
    return list(zip(uuids, visual))


def _features_with_keys(ibs, aids: List[int], config: core.Config,
                        use_depc: bool = True) -> Tuple[List[Tuple[uuid.UUID, uuid.UUID]], List[dict]]:
    keys = _feature_keys(ibs, aids)
    aid_of = dict(zip(keys, aids))

    def compute(missing: List[Tuple[uuid.UUID, uuid.UUID]]) -> List[dict]:
        missing_aids = [aid_of[k] for k in missing]
        if use_depc:
            feats = _stored_features(ibs, missing_aids, config)
        else:
            feats = ibs.lightglue_compute_features(missing_aids, config)
        _drop_if_changed(ibs, missing_aids, missing, feats, config, use_depc)
        return feats

    return keys, core.get_feature_cache(config).get_or_compute(keys, config.feature_fingerprint, compute)


def _drop_if_changed(ibs, aids: List[int], keys: List[Tuple[uuid.UUID, uuid.UUID]], feats: List[dict],
                     config: core.Config, stored: bool) -> None:
    """Features computed while their annotation changed may come from the old chip: keep them out of
    the in-memory cache and delete their SQLite rows.

    WBIA changes the visual UUID first and deletes derived rows after; a row written late, after that
    deletion, is caught here because the UUID is read again after the write (an edit later than this read
    deletes the row itself).
    """
    now = _feature_keys(ibs, aids)
    changed = [i for i, (before, after) in enumerate(zip(keys, now)) if before != after]
    if not changed:
        return
    for i in changed:
        feats[i] = {**feats[i], "stale": True}
    changed_aids = [aids[i] for i in changed]
    if stored:
        ibs.depc_annot.delete_property(FEATURES_TABLE, changed_aids, config=_features_depc_config(config))
    logger.info("annotations %s changed while their features were computed; those features are not kept",
                changed_aids)


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
    config = core.load_config(config_path)
    return _features_with_keys(ibs, list(aid_list), config, use_depc)[1]


def _features_depc_config(config: core.Config) -> Dict[str, Any]:
    # The fingerprint makes SQLite rows follow the file's *contents*: editing a config file that
    # changes the features stores new rows instead of returning stale ones.
    return {"config_path": config.source, "fingerprint": config.feature_fingerprint}


# Why the chips of the last computation failed, by (aid, feature fingerprint): the depc table stores
# nothing for them (a failure may be momentary), so the reader learns the reason here (same process).
_FAILED: Dict[Tuple[int, str], str] = {}
_FAILED_LOCK = threading.Lock()


def _stored_features(ibs, aids: List[int], config: core.Config) -> List[dict]:
    depc_config = _features_depc_config(config)
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
            with _FAILED_LOCK:
                error = _FAILED.pop((aid, config.feature_fingerprint), None)
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
    lightglue_config = core.load_config(config["config_path"] if "config_path" in config else None)
    expected = config["fingerprint"] if "fingerprint" in config else None
    if expected is not None and expected != lightglue_config.feature_fingerprint:
        raise core.ConfigError(
            f"config {lightglue_config.source} changed while features were requested "
            f"(fingerprint {lightglue_config.feature_fingerprint}, expected {expected})")
    aids = list(aid_list)
    for aid, feats in zip(aids, depc.controller.lightglue_compute_features(aids, lightglue_config)):
        if "error" in feats:
            # Not stored: an image unreadable for a moment must not score 0 until its bbox changes.
            with _FAILED_LOCK:
                _FAILED[(aid, lightglue_config.feature_fingerprint)] = feats["error"]
            yield None
        else:
            yield tuple(feats[name] for name in FEATURE_COLUMNS)


# ============================================================================ scores
def _scores_one_to_many(ibs, qaid: int, daids: Sequence[int], config: core.Config) -> List[Optional[float]]:
    """One batched LightGlue call: the query against every database annotation.

    None where a side has no usable features right now (its chip failed, or changed while it was
    computed): that pair scores 0 for this request and is not stored, so a later request scores it again.
    The correspondences are kept in the process's match cache, so review images of these pairs (drawn
    by the same job) need no second LightGlue run.
    """
    if not daids:
        return []
    keys, feats = _features_with_keys(ibs, [qaid, *daids], config)
    results = core.match_pairs(feats[0], feats[1:], config, return_matches=True)
    scores = [core.pair_score(result, feats[0], db, config) for result, db in zip(results, feats[1:])]
    usable = [core.cacheable(feats[0]) and core.cacheable(db) for db in feats[1:]]
    cache = core.get_match_cache()
    for k in np.argsort(scores, kind="stable"):  # best last: the most recently used survive eviction
        if usable[k]:
            cache.put(_match_key(keys[0], keys[1 + k], config), results[k])
    return [score if ok else None for score, ok in zip(scores, usable)]


def _match_key(query_key: Any, database_key: Any, config: core.Config) -> Tuple[Any, Any, str]:
    return (query_key, database_key, config.match_fingerprint)


def _pair_matches(ibs, qaid: int, daid: int, config: core.Config) -> Tuple[List[dict], core.MatchResult, bool]:
    """Features of both annotations and their LightGlue result: from the match cache, else matched now
    (once: the result is cached for the other versions of the review image). Also says which."""
    keys, feats = _features_with_keys(ibs, [qaid, daid], config)
    cache = core.get_match_cache()
    key = _match_key(keys[0], keys[1], config)
    result = cache.get(key)
    if result is not None:
        return feats, result, True
    result = core.match_pairs(feats[0], [feats[1]], config, return_matches=True)[0]
    if core.cacheable(feats[0]) and core.cacheable(feats[1]):
        cache.put(key, result)
    return feats, result, False


@register_ibs_method
def lightglue_match_scores(ibs, qaid: int, daid_list: Sequence[int], config_path: ConfigPath = None) -> List[float]:
    """Raw scores (config ``score``; default: sum of match confidences) of ``qaid`` vs each daid, in order.

    The query is never matched with itself: where it appears among the daids its score is 0.
    """
    config = core.load_config(config_path)
    daids = list(daid_list)
    return [0.0 if score is None else score for score in _scores_by_daid(ibs, qaid, daids, config)]


def _scores_by_daid(ibs, qaid: int, daids: List[int], config: core.Config) -> List[Optional[float]]:
    others = list(dict.fromkeys(d for d in daids if d != qaid))
    by_daid = dict(zip(others, _scores_one_to_many(ibs, qaid, others, config)))
    return [by_daid.get(d, 0.0) for d in daids]


def _pair_scores(ibs, qaids: Sequence[int], daids: Sequence[int], config: core.Config) -> List[Optional[float]]:
    """Scores of the pairs (qaids[k], daids[k]): one batched call per distinct query (None: not storable)."""
    positions: Dict[int, List[int]] = {}
    for k, qaid in enumerate(qaids):
        positions.setdefault(qaid, []).append(k)
    scores: List[Optional[float]] = [0.0] * len(qaids)
    for qaid, ks in positions.items():
        row = _scores_by_daid(ibs, qaid, [daids[k] for k in ks], config)
        for k, score in zip(ks, row):
            scores[k] = score
    return scores


@register_ibs_method
def lightglue_evaluate(ibs, aid_list: Sequence[int], config_path: ConfigPath = None,
                       ranks: Sequence[int] = DEFAULT_RANKS) -> float:
    """Rank-1 accuracy of 1-vs-all identification over ``aid_list``, labelled by name.

    Uses the project's one evaluation protocol (:mod:`wbia_lightglue.evaluation`): each unordered
    pair is scored once; unnamed annotations (nid <= 0) are never a correct match; queries without
    another sighting are skipped and counted. The full table (CMC, mAP, skipped) is logged.
    """
    config = core.load_config(config_path)
    aids = list(aid_list)
    nids = ibs.get_annot_nids(aids)
    ibs.lightglue_features(aids, config)  # every annotation's features first, in one extraction batch
    logger.info("lightglue_evaluate: %d annotations, %d names, config %s", len(aids),
                len({n for n in nids if n is not None and n > 0}), config.source or "defaults")

    scores = _all_pair_scores(ibs, aids, config)
    report = evaluate_scores(scores, nids, ids=aids, ranks=ranks, name_score=config["name_score"])
    logger.info("lightglue_evaluate (aids %s):\n%s", _abbreviate(aids), report.table())
    return report.rank1


def _all_pair_scores(ibs, aids: List[int], config: core.Config) -> np.ndarray:
    """Symmetric score matrix of ``aids``, each unordered pair scored once (evaluation.score_all_pairs)."""
    return score_feature_pairs(ibs.lightglue_features(aids, config), config)


@register_ibs_method
def lightglue_calibrate(ibs, aid_list: Sequence[int], config_path: ConfigPath = None,
                        output: Union[str, Path, None] = None) -> str:
    """Fit score -> P(same individual) on every pair of ``aid_list`` (labels = names) and save it.

    Unnamed annotations take part in no pair. The calibration is saved beside the config file
    (``calibration.calibration_path``: ``<config>.calibration.json``, for the defaults
    ``<config dir>/config.calibration.json``) unless ``output`` names a file; returns the path.
    Once saved, ``lightglue_api_match_scores`` returns probabilities beside the raw scores.
    """
    config = core.load_config(config_path)
    aids = list(aid_list)
    nids = ibs.get_annot_nids(aids)
    scores, same = calibration.labelled_pairs(_all_pair_scores(ibs, aids, config), nids)
    fitted = calibration.fit(scores, same, config, annotations=len(aids))
    return str(calibration.save_calibration(fitted, config, output))


def _abbreviate(items: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


# ============================================================================ pairwise table and request
class LightGlueConfig(dtool.Config):  # the name makes the table and pipeline_root 'LightGlue'
    """Config of the LightGlue pairwise table and query request.

    ``config_path``: the plugin config file (None: the default file or built-in defaults).
    ``name_score``: how a name's annotation scores become its name score ('max' or 'sum', ...).
    ``fingerprint`` is filled in by the request from the file's contents (stored scores follow edits).
    """

    _param_info_list = [
        ut.ParamInfo("config_path", None),
        ut.ParamInfo("name_score", "max", valid_values=list(core.NAME_SCORES)),
        ut.ParamInfo("fingerprint", None),
    ]


def _annot_match(ibs, qaid: int, daids: Sequence[int], scores: Sequence[float], name_score: str):
    """A WBIA AnnotMatch with annotation scores and name scores (core.name_scores over the daids' nids)."""
    cm = wbia.AnnotMatch()
    cm.qaid = qaid
    cm.qnid = ibs.get_annot_nids(qaid)
    cm.daid_list = np.asarray(daids, dtype=np.int64)
    cm.dnid_list = np.asarray(ibs.get_annot_nids(list(daids)), dtype=np.int64)
    cm._update_daid_index()
    cm._update_unique_nid_index()
    per_name = core.name_scores(scores, cm.dnid_list.tolist(), name_score)
    cm.set_cannonical_name_score(np.asarray(scores, dtype=float),
                                 np.asarray([per_name[nid] for nid in cm.unique_nids], dtype=float))
    return cm


class QueryChipError(ValueError):
    """A query annotation has no usable chip (missing or unreadable image)."""


class LightGlueRequest(dtool.base.VsOneSimilarityRequest):
    """``depc_annot.new_request('LightGlue', qaids, daids, cfg)``; also ``pipeline_root='LightGlue'``.

    Pairs are (query, database) with the query itself left out; ``execute()`` returns one AnnotMatch
    per query (in first-appearance order) and computes only pairs not already stored.
    """

    _symmetric = False
    _tablename = PAIRWISE_TABLE

    @classmethod
    def new(cls, depc, qaid_list, daid_list, cfgdict=None, tablename=None):
        cfgdict = dict(cfgdict or {})
        # Requests also arrive from the web (query_config_dict of the engine routes), so config_path
        # is held to the config directory here too.
        from .routes import resolve_config_path

        path = resolve_config_path(cfgdict.get("config_path"))
        cfgdict["config_path"] = None if path is None else str(path)
        # Read the config now: a bad file fails the request up front, and the fingerprint of its
        # contents keys the stored scores.
        config = core.load_config(path)
        cfgdict["fingerprint"] = config.match_fingerprint
        return super().new(depc, qaid_list, daid_list, cfgdict, tablename)

    def execute(request, parent_rowids=None, use_cache=None, postprocess=True, **kwargs):
        """The AnnotMatches. One-stage: every pair (WBIA's own execute). Two-stage: stage 1, the pairs of the
        shortlist, fusion. A query whose chip cannot be computed fails the request with the reason (its
        scores would all be 0, a ranking that means nothing); a bad database annotation scores 0."""
        ibs = request.depc.controller
        config = core.load_config(request.config["config_path"])
        qaids = [int(q) for q in dict.fromkeys(np.asarray(request.qaids).tolist())]
        for qaid, feats in zip(qaids, ibs.lightglue_features(qaids, config)):
            if "error" in feats:
                raise QueryChipError(f"query annotation {qaid} ({_annot_uuids(ibs, [qaid])[0]}): {feats['error']}; "
                                     "nothing to match")
        if config["shortlist_k"] == 0 or not postprocess:
            return super().execute(parent_rowids, use_cache=use_cache, postprocess=postprocess, **kwargs)
        grouped: Dict[int, List[int]] = {}
        for qaid, daid in parent_rowids if parent_rowids is not None else request.parent_rowids:
            grouped.setdefault(int(qaid), []).append(int(daid))
        cms = []
        for qaid, daids in grouped.items():
            stage1 = ibs.lightglue_stage1_scores(qaid, daids, config)

            def stored_pairs(positions: List[int], qaid: int = qaid, daids: List[int] = daids) -> List[float]:
                pairs = [(qaid, daids[p]) for p in positions]
                rows = super(LightGlueRequest, request).execute(pairs, use_cache=use_cache, postprocess=False)
                return [float(row[0] if isinstance(row, (tuple, list)) else row) for row in rows]

            scored = fusion.two_stage_scores({}, [], stage1, config, lightglue=stored_pairs)
            logger.info("two-stage query %d: stage 1 (%s) over %d annotations, LightGlue on %d",
                        qaid, config["shortlist_source"], len(daids), int(scored.shortlisted.sum()))
            cms.append(_annot_match(ibs, qaid, daids, scored.fused.tolist(), request.config["name_score"]))
        return cms

    def postprocess_execute(request, table, parent_rowids, rowids, result_list):
        ibs = request.depc.controller
        grouped: Dict[int, Tuple[List[int], List[float]]] = {}
        for (qaid, daid), row in zip(parent_rowids, result_list):
            daids, scores = grouped.setdefault(qaid, ([], []))
            daids.append(daid)
            score = row[0] if isinstance(row, (tuple, list)) else row
            scores.append(0.0 if score is None else score)  # None: not stored (a chip failed), scores 0 now
        name_score = request.config["name_score"]
        return [_annot_match(ibs, qaid, daids, scores, name_score) for qaid, (daids, scores) in grouped.items()]

    def render_single_result(request, cm, aid, **kwargs):
        """The review image of (query, ``aid``) as WBIA asks for it: HxWx3 uint8 BGR.

        WBIA's ``ensure_review_image`` passes ``heatmask`` (coat regions coloured by match confidence),
        ``draw_fmatch`` (the correspondences) or neither (the two chips, ``clean``), and ``vert``
        (stack the chips). The matches come from the job's scoring pass when this process scored the
        pair, else LightGlue runs once for the pair and the other versions reuse it.
        """
        start = time.perf_counter()
        ibs = request.depc.controller
        config = core.load_config(request.config["config_path"])
        version = review_version(kwargs)
        feats, result, cached = _pair_matches(ibs, cm.qaid, aid, config)
        chips = _annot_chips(ibs, [cm.qaid, aid])
        blank = np.full((64, 64, 3), 255, np.uint8)  # a missing chip is drawn as a blank tile
        title = None
        if any(kwargs.get(flag) for flag in ("show_score", "show_annot_score", "draw_lbl")):
            title = f"{result.num_matches} matches, score {result.score:.1f}"
        image = drawing.render_pair(chips[0] if chips[0] is not None else blank,
                                    chips[1] if chips[1] is not None else blank,
                                    feats[0]["keypoints"], feats[1]["keypoints"], result.matches,
                                    result.confidences, version, vert=bool(kwargs.get("vert", False)), title=title)
        logger.info("review image %s of annotations %d vs %d: %.0f ms (matches %s)", version, cm.qaid, aid,
                    1000 * (time.perf_counter() - start), "from the scoring pass" if cached else "computed now")
        return image

    def get_cfgstr(request, with_input=True, **kwargs):
        """WBIA names review images and their cache folder after this string: with the query's visual UUID
        in it (dtool leaves it out), an edited query never gets the old pictures."""
        return super().get_cfgstr(with_input=with_input, **kwargs)


def review_version(render_config: Dict[str, Any]) -> str:
    """The drawing version WBIA's render options ask for: 'heatmask', 'matches' or 'clean'."""
    if render_config.get("heatmask"):
        return "heatmask"
    for flag in ("draw_fmatch", "show_matches"):  # WBIA's flag, then plottool's; 'draw_fmatches' is always on
        if flag in render_config:
            return "matches" if render_config[flag] else "clean"
    return "matches"


@register_preproc_annot(
    tablename=PAIRWISE_TABLE,
    parents=[const.ANNOTATION_TABLE, const.ANNOTATION_TABLE],
    colnames=["score"],
    coltypes=[float],
    configclass=LightGlueConfig,
    requestclass=LightGlueRequest,
    fname="lightglue",
    chunksize=None,  # all pairs at once, so each query's partners go to the matcher in one batch
)
def compute_lightglue_scores(depc, qaid_list: Sequence[int], daid_list: Sequence[int], config=None) -> Iterator[tuple]:
    """depc: the score of each (query, database) pair, computed one query vs many at a time."""
    config = config or {}
    lightglue_config = core.load_config(config["config_path"] if "config_path" in config else None)
    for score in _pair_scores(depc.controller, list(qaid_list), list(daid_list), lightglue_config):
        # None: an annotation's chip failed just now; a stored 0 would stay until its bbox changes
        yield None if score is None else (float(score),)


# ============================================================================ stage 1 (two-stage mode)
# Live stage-1 indexes, one per (database, stage-1 fingerprint); each is also saved in the database's cache
# folder. Keys are annotation *visual* UUIDs, which WBIA changes with the chip (image, bbox, theta), so an
# edited annotation is never matched through its old descriptors even across processes.
_INDEXES: Dict[Tuple[str, str], Stage1Index] = {}
# (database, aid) -> the visual UUID its stage-1 descriptors were indexed under: WBIA updates the visual
# UUID before it calls delete_root, so the invalidation hook needs the old one
_INDEXED_AS: Dict[Tuple[str, int], str] = {}


def _shortlist_path(ibs, config: core.Config) -> Path:
    return Path(ibs.get_cachedir()) / "lightglue_shortlist" / f"{config.shortlist_fingerprint}.npz"


def _stage1_index(ibs, aids: Sequence[int], config: core.Config) -> Tuple[Stage1Index, List[str]]:
    """The database's stage-1 index, brought in step with ``aids`` (added / removed incrementally)."""
    keys = [str(u) for u in ibs.get_annot_visual_uuids(list(aids))]
    cache_key = (str(ibs.get_dbdir()), config.shortlist_fingerprint)
    index = _INDEXES.get(cache_key)
    path = _shortlist_path(ibs, config)
    if index is None and path.is_file():
        try:
            index = Stage1Index.load(path, config)
        except ValueError as exc:
            logger.warning("%s; rebuilding it", exc)
    if index is None:
        index = Stage1Index(config)
    aid_of = dict(zip(keys, aids))

    def features_of(missing: List[str]) -> List[dict]:
        missing_aids = [aid_of[k] for k in missing]
        chips = _annot_chips(ibs, missing_aids)
        return extract_stage1_features([c if c is not None else np.zeros((0, 0, 3), np.uint8) for c in chips],
                                          config, keys=missing_aids)

    added, removed = index.sync(keys, features_of)
    _INDEXES[cache_key] = index
    _INDEXED_AS.update({(cache_key[0], int(aid)): key for aid, key in zip(aids, keys)})
    if added or removed or not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        index.save(path)
        logger.info("stage-1 index %s: %d annotations (%d added, %d removed)", path, len(index), added, removed)
    return index, keys


@register_ibs_method
def lightglue_stage1_scores(ibs, qaid: int, daid_list: Sequence[int], config_path: ConfigPath = None) -> List[float]:
    """Stage-1 scores of ``qaid`` vs each daid (config ``shortlist_source``); never NaN, 0 = no evidence.

    ``'index'``: LNBNN over the plugin's FAISS RootSIFT index of the daids (incremental, persisted);
    ``'hotspotter'``: WBIA's HotSpotter annotation scores (``ibs.query_chips``, default pipeline).
    The query itself scores 0 where it appears among the daids.
    """
    config = core.load_config(config_path)
    daids = [int(d) for d in daid_list]
    others = list(dict.fromkeys(d for d in daids if d != qaid))
    if not others:
        return [0.0] * len(daids)
    if config["shortlist_source"] == "hotspotter":
        cm = ibs.query_chips([qaid], others, cfgdict={"pipeline_root": "vsmany"}, use_cache=False)[0]
        values = [float(v) if v is not None and np.isfinite(v) else 0.0 for v in cm.get_annot_scores(others)]
    else:
        index, keys = _stage1_index(ibs, others, config)
        query = ibs.get_annot_visual_uuids([qaid])[0]
        chip = _annot_chips(ibs, [qaid])[0]
        feats = extract_stage1_features([chip if chip is not None else np.zeros((0, 0, 3), np.uint8)], config,
                                           keys=[qaid])[0]
        values = index.search(feats, exclude=[str(query)]).ranked(keys).tolist()
    by_daid = dict(zip(others, values))
    return [max(0.0, by_daid.get(d, 0.0)) for d in daids]


# ============================================================================ cache invalidation
def _forget_features(ibs, aids: Sequence[int]) -> None:
    uuids = [u for u in ibs.get_annot_uuids(list(aids)) if u is not None]
    dropped = core.invalidate_features(uuids)
    if dropped:
        logger.info("dropped %d cached feature entries of %d annotations whose chips changed", dropped, len(uuids))
    # their stage-1 descriptors go too (keyed by the visual UUID the chip had until now)
    dbdir_now = str(ibs.get_dbdir())
    visual = {_INDEXED_AS.pop((dbdir_now, int(aid)), "") for aid in aids} - {""}
    for (dbdir, _), index in _INDEXES.items():
        if dbdir == dbdir_now and visual and index.remove(visual):
            logger.info("dropped %d annotations from the stage-1 index (chips changed)", len(visual))


def _install_invalidation_hook() -> None:
    """Forget in-memory features whenever WBIA deletes an annotation's derived data.

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
            _forget_features(depc.controller, list(root_rowids))
        return original(depc, root_rowids, *args, **kwargs)

    delete_root._lightglue_invalidates = True
    dtool.DependencyCache.delete_root = delete_root


_install_invalidation_hook()
