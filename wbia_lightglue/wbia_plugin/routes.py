"""Web routes of the plugin under ``/api/plugin/lightglue/`` and the check on web-supplied config paths."""
from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any, List, Optional

from .registry import (  # first: shims
    API_PREFIX,
    FEATURES_TABLE,
    PAIRWISE_TABLE,
    register_api,
    register_ibs_method,
)

from wbia.control import controller_inject  # noqa: E402

from .. import core  # noqa: E402
from ..engine import config as config_module  # noqa: E402
from ..evaluation import calibration  # noqa: E402
from .plugin import QueryChipError, _features_depc_config  # noqa: E402


def resolve_config_path(config_path: Any) -> Optional[Path]:
    """A config file named by a web request, which may only name a file inside the config directory.

    ``None`` or ``''`` is the default config. Otherwise a file name relative to
    ``config_module.DEFAULT_CONFIG_DIR`` (or an absolute path inside it); ``..`` components, paths outside
    the directory and symlinks pointing out of it are refused with ValueError.
    """
    if config_path is None or config_path == "":
        return None
    if not isinstance(config_path, str):
        raise ValueError(f"config_path must be a string, got {type(config_path).__name__}")
    if ".." in Path(config_path).parts:
        raise ValueError(f"config_path {config_path!r} may not contain '..'")
    root = Path(config_module.DEFAULT_CONFIG_DIR).resolve()
    candidate = Path(config_path) if Path(config_path).is_absolute() else root / config_path
    resolved = candidate.resolve()  # follows symlinks: a link out of the directory is caught below
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"config_path {config_path!r} is outside the config directory {root}")
    if not resolved.is_file():
        raise ValueError(f"config_path {config_path!r} is not a file in the config directory {root}")
    return resolved


def _web_config(config_path: Any) -> core.Config:
    try:
        return core.load_config(resolve_config_path(config_path))
    except (ValueError, core.ConfigError) as exc:  # ConfigError is a ValueError; both are the caller's
        raise controller_inject.WebInvalidInput(str(exc), key="config_path", value=str(config_path)) from exc


def _parse_uuid(value: Any, key: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise controller_inject.WebInvalidInput(f"{key}: {value!r} is not a UUID", key=key, value=str(value))


def _parse_uuid_list(values: Any, key: str) -> List[uuid.UUID]:
    if not isinstance(values, (list, tuple)):
        raise controller_inject.WebInvalidInput(
            f"{key} must be a JSON list of annotation UUIDs, got {type(values).__name__}", key=key, value=str(values))
    return [_parse_uuid(value, f"{key}[{i}]") for i, value in enumerate(values)]


def _aids_from_uuids(ibs, uuids: List[uuid.UUID]) -> List[int]:
    aids = ibs.get_annot_aids_from_uuid(uuids)
    unknown = [str(u) for u, aid in zip(uuids, aids) if aid is None]
    if unknown:
        raise controller_inject.WebUnknownUUIDException(["annot"] * len(unknown), unknown)
    return list(aids)


@register_ibs_method
@register_api(f"{API_PREFIX}/match/score/", methods=["GET", "POST"])
def lightglue_api_match_scores(ibs, query_annot_uuid=None, database_annot_uuid_list=None, config_path=None):
    """Raw LightGlue scores of one query annotation against database annotations (by UUID).

    Returns ``{"query_annot_uuid", "database_annot_uuid_list", "score_list", "probability_list",
    "config_path"}`` with scores in the order of ``database_annot_uuid_list``; ``probability_list``
    holds P(same individual) per score when the config has a calibration (``lightglue_calibrate``),
    else None.
    """
    if query_annot_uuid is None:
        raise controller_inject.WebMissingInput("query_annot_uuid is required", key="query_annot_uuid")
    if database_annot_uuid_list is None:
        raise controller_inject.WebMissingInput("database_annot_uuid_list is required",
                                                key="database_annot_uuid_list")
    quuid = _parse_uuid(query_annot_uuid, "query_annot_uuid")
    duuids = _parse_uuid_list(database_annot_uuid_list, "database_annot_uuid_list")
    config = _web_config(config_path)
    qaid = _aids_from_uuids(ibs, [quuid])[0]
    daids = _aids_from_uuids(ibs, duuids)
    scores = ibs.lightglue_match_scores(qaid, daids, config)
    return {"query_annot_uuid": str(quuid), "database_annot_uuid_list": [str(u) for u in duuids],
            "score_list": [float(s) for s in scores],
            "probability_list": calibration.probabilities(calibration.load_calibration(config), scores),
            "config_path": config.source}


@register_ibs_method
@register_api(f"{API_PREFIX}/config/", methods=["GET"])
def lightglue_api_config(ibs, config_path=None):
    """The effective config (defaults overridden by the file) and its fingerprints."""
    config = _web_config(config_path)
    return {"config": config.to_dict(), "config_path": config.source,
            "config_dir": str(config_module.DEFAULT_CONFIG_DIR),
            "feature_fingerprint": config.feature_fingerprint, "match_fingerprint": config.match_fingerprint}


@register_ibs_method
@register_api(f"{API_PREFIX}/feature/", methods=["GET"])
def lightglue_api_feature_status(ibs, annot_uuid_list=None, config_path=None):
    """Whether each annotation's features for the config are stored in SQLite (nothing is computed)."""
    if annot_uuid_list is None:
        raise controller_inject.WebMissingInput("annot_uuid_list is required", key="annot_uuid_list")
    uuids = _parse_uuid_list(annot_uuid_list, "annot_uuid_list")
    config = _web_config(config_path)
    aids = _aids_from_uuids(ibs, uuids)
    rowids = ibs.depc_annot.get_rowids(FEATURES_TABLE, aids, config=_features_depc_config(config), ensure=False)
    return {"annot_uuid_list": [str(u) for u in uuids], "computed_list": [r is not None for r in rowids],
            "feature_fingerprint": config.feature_fingerprint}


@register_ibs_method
@register_api("/api/review/query/chip/best/", methods=["POST"])
def lightglue_review_query_chips_best(ibs, query_annot_uuid_list=None, database_annot_uuid_list=None,
                                      pipeline_root=PAIRWISE_TABLE, config_path=None):
    """The best individual for each query annotation, by LightGlue: the documented POST call

    ``curl -X POST http://HOST:5000/api/review/query/chip/best/ -F 'query_annot_uuid_list=[...]'
    -F 'database_annot_uuid_list=[...]' -F 'pipeline_root=LightGlue' [-F 'config_path=highres.json']``.

    WBIA's own rule on this URL answers GET only (an integer ``aid``, HotSpotter); this POST rule sits
    beside it. The query runs now, in this request (no review images). ``database_annot_uuid_list``
    defaults to every other annotation. One entry per query, in order: ``query_annot_uuid``, ``name``
    (None when the best match has no name), ``name_score``, ``annot_uuid`` and ``score`` (the best
    annotation of that individual and its raw score), and ``ranking`` (the top 5 individuals).
    """
    if str(pipeline_root).lower() != PAIRWISE_TABLE.lower():
        raise controller_inject.WebInvalidInput(
            f"the POST form of /api/review/query/chip/best/ runs pipeline_root={PAIRWISE_TABLE}; for "
            "other pipelines use WBIA's GET form with an aid", key="pipeline_root", value=str(pipeline_root))
    if query_annot_uuid_list is None:
        raise controller_inject.WebMissingInput("query_annot_uuid_list is required", key="query_annot_uuid_list")
    qaids = _aids_from_uuids(ibs, _parse_uuid_list(query_annot_uuid_list, "query_annot_uuid_list"))
    if database_annot_uuid_list is None:
        daids = list(ibs.get_valid_aids())
    else:
        daids = _aids_from_uuids(ibs, _parse_uuid_list(database_annot_uuid_list, "database_annot_uuid_list"))
    _web_config(config_path)  # a bad config_path is the caller's error (HTTP 400), before any work
    cfgdict = {"pipeline_root": PAIRWISE_TABLE, "config_path": config_path or None}
    try:
        cms = ibs.query_chips(qaids, daids, cfgdict=cfgdict)
    except QueryChipError as exc:
        raise controller_inject.WebInvalidInput(str(exc), key="query_annot_uuid_list",
                                                value=str(query_annot_uuid_list)) from exc
    return [_best_of(ibs, cm) for cm in cms]


def _best_of(ibs, cm, top: int = 5) -> dict:
    """The ranking of one AnnotMatch by individual: name, name score, best annotation and its score."""
    quuid = str(ibs.get_annot_uuids([cm.qaid])[0])
    ranking = []
    for nid, name_score in sorted(zip(cm.unique_nids.tolist(), cm.name_score_list.tolist()),
                                  key=lambda item: -item[1])[:top]:
        members = [i for i, dnid in enumerate(cm.dnid_list.tolist()) if dnid == nid]
        best = max(members, key=lambda i: cm.annot_score_list[i])
        daid = int(cm.daid_list[best])
        ranking.append({"name": ibs.get_name_texts(nid) if nid > 0 else None, "name_score": float(name_score),
                        "annot_uuid": str(ibs.get_annot_uuids([daid])[0]),
                        "score": float(cm.annot_score_list[best])})
    if not ranking:
        return {"query_annot_uuid": quuid, "name": None, "name_score": None, "annot_uuid": None, "score": None,
                "ranking": []}
    return {"query_annot_uuid": quuid, **ranking[0], "ranking": ranking}
