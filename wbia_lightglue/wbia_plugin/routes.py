"""Web routes of the plugin under ``/api/plugin/lightglue/`` and the POST form of ``/api/review/query/chip/best/``.

What a web caller can rely on: bad input is a 4xx with a short JSON message naming the parameter; no
traceback, no absolute server path and no config file contents are echoed in an error (the server log
has the details); lists are capped (``MAX_LIST_LENGTH``, and for the synchronous match-score route
``sync_database_limit``, whose message points to WBIA's job route). A web-supplied ``config_path`` may
only name a file in the config directory (:func:`.configs.resolve_config_path`).
"""
from __future__ import annotations

import functools
import inspect
import logging
import uuid
from pathlib import Path
from typing import Any, Callable, List, Optional

from .. import core
from ..engine import config as config_module
from ..engine.calibration import load_calibration, probabilities
from ..engine.device import OutOfDeviceMemory, resolve_device
from ..engine.memory import check_memory
from .chips import QueryChipError
from .configs import MAX_CONFIG_PATH, as_config, features_depc_config, resolve_config_path
from .registry import (
    API_PREFIX,
    FEATURES_TABLE,
    PAIRWISE_TABLE,
    controller_inject,
    register_api,
    register_ibs_method,
)

logger = logging.getLogger("wbia_lightglue")

MAX_LIST_LENGTH = 10_000  # UUIDs in one request to the feature-status route
JOB_ROUTE = ("POST /api/engine/query/graph/ with query_config_dict={'pipeline_root': 'LightGlue'} "
             "(runs as a WBIA job)")
# web_max_database = 0 (automatic): on CUDA this many database annotations per synchronous request; on CPU
# CPU_SYNC_PAIRS at 512 keypoints, fewer as keypoints grow (a pair costs ~keypoints**2), at least CPU_SYNC_MIN.
# On the 2-core CPU of the README's Performance figures that is 9-17 s of matching at 512-2048 keypoints.
CUDA_SYNC_PAIRS = 2000
CPU_SYNC_PAIRS = 100
CPU_SYNC_MIN = 10


def sync_database_limit(config: core.Config) -> int:
    """The largest database the synchronous match-score route scores under ``config``."""
    if config["web_max_database"]:
        return int(config["web_max_database"])
    if resolve_device(config).type == "cuda":
        return CUDA_SYNC_PAIRS
    return max(CPU_SYNC_MIN, int(CPU_SYNC_PAIRS * (512 / config["max_num_keypoints"]) ** 2))


def _web_route(func: Callable) -> Callable:
    """Errors of a route as short JSON: WBIA's own Web* exceptions pass; anything else is logged here with
    its traceback and answered 500 with one line (WBIA would put the traceback in the response)."""
    signature = inspect.signature(func)

    @functools.wraps(func)
    def route(*args: Any, **kwargs: Any) -> Any:
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            if not args:  # WBIA first calls func(**params) and retries with ibs on a TypeError
                raise
            raise controller_inject.WebInvalidInput(f"bad parameters: {exc}") from None
        try:
            return func(*args, **kwargs)
        except controller_inject.WebException:
            raise
        except OutOfDeviceMemory as exc:  # our own message: names keypoints and device only
            raise controller_inject.WebRuntimeException(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - nothing else may reach the caller with a traceback
            logger.exception("lightglue web route %s failed", func.__name__)
            raise controller_inject.WebRuntimeException(
                f"{func.__name__} failed ({type(exc).__name__}); the server log has the details") from None

    return route


def _web_config(config_path: Any) -> core.Config:
    """The config a request names; WebInvalidInput (400) with a message free of server paths otherwise."""
    shown = str(config_path)[:MAX_CONFIG_PATH]
    path: Optional[Path] = None
    try:
        path = resolve_config_path(config_path)
        config = as_config(path)
        check_memory(config)  # settings that cannot fit on this server: refuse now, not mid-request
        return config
    except (ValueError, core.ConfigError) as exc:  # ConfigError is a ValueError; both are the caller's
        message = exc.public if isinstance(exc, core.ConfigError) else str(exc)  # no values from the file
        raise controller_inject.WebInvalidInput(_without_server_paths(message, path, shown),
                                                key="config_path", value=shown) from None


def _without_server_paths(message: str, path: Optional[Path], shown: str) -> str:
    """``message`` with the config file's absolute path replaced by the name the caller gave."""
    if path is not None:
        message = message.replace(str(path), shown)
    for root in {str(Path(config_module.DEFAULT_CONFIG_DIR).resolve()), str(config_module.DEFAULT_CONFIG_DIR)}:
        message = message.replace(root, "<config dir>")
    return message


def _public_config_name(config: core.Config) -> Optional[str]:
    """The config file as a caller may see it: its path relative to the config directory (the name a
    request gives as ``config_path``), else its file name; None for the built-in defaults."""
    if not config.source:
        return None
    path = Path(config.source)
    try:
        return path.resolve().relative_to(Path(config_module.DEFAULT_CONFIG_DIR).resolve()).as_posix()
    except (OSError, ValueError):
        return path.name


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _parse_uuid(value: Any, key: str) -> uuid.UUID:
    if isinstance(value, uuid.UUID):
        return value
    if isinstance(value, str) and len(value) <= 64:
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise controller_inject.WebInvalidInput(f"{key}: {_shown(value)} is not a UUID", key=key, value=_shown(value))


def _parse_uuid_list(values: Any, key: str, limit: int, hint: str = "") -> List[uuid.UUID]:
    """The UUIDs of a JSON list of at most ``limit`` entries (checked before any is parsed)."""
    if not isinstance(values, (list, tuple)):
        raise controller_inject.WebInvalidInput(
            f"{key} must be a JSON list of annotation UUIDs, got {type(values).__name__}", key=key,
            value=_shown(values))
    if len(values) > limit:
        raise controller_inject.WebInvalidInput(
            f"{key} holds {len(values)} entries; this route accepts at most {limit}{hint}", key=key,
            value=f"{len(values)} entries")
    return [_parse_uuid(value, f"{key}[{i}]") for i, value in enumerate(values)]


def _aids_from_uuids(ibs, uuids: List[uuid.UUID]) -> List[int]:
    aids = ibs.get_annot_aids_from_uuid(uuids)
    unknown = [str(u) for u, aid in zip(uuids, aids) if aid is None]
    if unknown:
        raise controller_inject.WebUnknownUUIDException(["annot"] * len(unknown), unknown)
    return list(aids)


@register_ibs_method
@register_api(f"{API_PREFIX}/match/score/", methods=["GET", "POST"])
@_web_route
def lightglue_api_match_scores(ibs, query_annot_uuid=None, database_annot_uuid_list=None, config_path=None):
    """Raw LightGlue scores of one query annotation against database annotations (by UUID).

    Returns ``{"query_annot_uuid", "database_annot_uuid_list", "score_list", "probability_list",
    "config_path"}`` with scores in the order of ``database_annot_uuid_list``; ``probability_list``
    holds P(same individual) per score when the config has a calibration (``lightglue_calibrate``),
    else None (also when the calibration file is unusable: a warning is logged).

    It runs inside WBIA's web server, which answers one request at a time, so the database is capped
    (``sync_database_limit``: config ``web_max_database``); larger queries go through the job route.
    """
    if query_annot_uuid is None:
        raise controller_inject.WebMissingInput("query_annot_uuid is required", key="query_annot_uuid")
    if database_annot_uuid_list is None:
        raise controller_inject.WebMissingInput("database_annot_uuid_list is required",
                                                key="database_annot_uuid_list")
    config = _web_config(config_path)
    quuid = _parse_uuid(query_annot_uuid, "query_annot_uuid")
    duuids = _parse_uuid_list(database_annot_uuid_list, "database_annot_uuid_list", sync_database_limit(config),
                              f" synchronously (config web_max_database); for more use {JOB_ROUTE}")
    qaid = _aids_from_uuids(ibs, [quuid])[0]
    daids = _aids_from_uuids(ibs, duuids)
    scores = ibs.lightglue_match_scores(qaid, daids, config)
    return {"query_annot_uuid": str(quuid), "database_annot_uuid_list": [str(u) for u in duuids],
            "score_list": [float(s) for s in scores],
            # raw LightGlue scores: the exhaustive-mode calibration maps them (lightglue_calibrate, shortlist_k 0)
            "probability_list": probabilities(load_calibration(config.replace(shortlist_k=0)), scores),
            "config_path": _public_config_name(config)}


@register_ibs_method
@register_api(f"{API_PREFIX}/config/", methods=["GET"])
@_web_route
def lightglue_api_config(ibs, config_path=None):
    """The effective config (defaults overridden by the file) and its fingerprints.

    ``config_path`` is the file's name inside the config directory (None: built-in defaults); the server's
    directory itself is never sent.
    """
    config = _web_config(config_path)
    return {"config": config.to_dict(), "config_path": _public_config_name(config),
            "feature_fingerprint": config.feature_fingerprint, "match_fingerprint": config.match_fingerprint}


@register_ibs_method
@register_api(f"{API_PREFIX}/feature/", methods=["GET"])
@_web_route
def lightglue_api_feature_status(ibs, annot_uuid_list=None, config_path=None):
    """Whether each annotation's features for the config are stored in SQLite (nothing is computed)."""
    if annot_uuid_list is None:
        raise controller_inject.WebMissingInput("annot_uuid_list is required", key="annot_uuid_list")
    uuids = _parse_uuid_list(annot_uuid_list, "annot_uuid_list", MAX_LIST_LENGTH)
    config = _web_config(config_path)
    aids = _aids_from_uuids(ibs, uuids)
    rowids = ibs.depc_annot.get_rowids(FEATURES_TABLE, aids, config=features_depc_config(config), ensure=False)
    return {"annot_uuid_list": [str(u) for u in uuids], "computed_list": [r is not None for r in rowids],
            "feature_fingerprint": config.feature_fingerprint}


@register_ibs_method
@register_api("/api/review/query/chip/best/", methods=["POST"])
@_web_route
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
    config = _web_config(config_path)  # a bad config_path is the caller's error (HTTP 400), before any work
    # synchronous like the match-score route: queries x database pairs bounded by the same limit
    limit = sync_database_limit(config)
    hint = f" synchronously (config web_max_database); for more use {JOB_ROUTE}"
    qaids = _aids_from_uuids(ibs, _parse_uuid_list(query_annot_uuid_list, "query_annot_uuid_list", limit, hint))
    if database_annot_uuid_list is None:
        daids = list(ibs.get_valid_aids())
    else:
        daids = _aids_from_uuids(ibs, _parse_uuid_list(database_annot_uuid_list, "database_annot_uuid_list",
                                                       limit, hint))
    if len(qaids) * len(daids) > limit:
        raise controller_inject.WebInvalidInput(
            f"{len(qaids)} queries x {len(daids)} database annotations is more than the {limit} pairs this route "
            f"scores{hint}", key="database_annot_uuid_list", value=f"{len(daids)} entries")
    cfgdict = {"pipeline_root": PAIRWISE_TABLE, "config_path": config_path or None}
    try:
        cms = ibs.query_chips(qaids, daids, cfgdict=cfgdict)
    except QueryChipError as exc:  # its message names the image file: the log gets it, the caller does not
        logger.warning("review route: %s", exc)
        raise controller_inject.WebInvalidInput(exc.public, key="query_annot_uuid_list",
                                                value=_shown(str(query_annot_uuid_list))) from None
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
