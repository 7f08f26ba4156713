"""The ``LightGlue`` pair table and its query request: what ``ibs.query_chips`` and WBIA's job engine run.

Registered: the depc table ``LightGlue`` (per annotation pair, config class ``LightGlueConfig``, request
class ``LightGlueRequest``), used by ``ibs.query_chips(..., cfgdict={'pipeline_root': 'LightGlue'})`` and
by WBIA's job engine for Wildbook, whose review images the request draws. The table's compute function
is here because its registration names the config and request classes; it scores with :mod:`.pairs`.

Two-stage mode (config ``shortlist_k`` > 0): a request first ranks every database annotation with stage 1
(``shortlist_source``: the plugin's FAISS RootSIFT index, ``lightglue_stage1_scores``, or WBIA's own
HotSpotter through ``ibs.query_chips`` with the default pipeline), computes the ``LightGlue`` pair table
(raw confidence sums, as always) only for each query's top ``shortlist_k``, and builds the AnnotMatch from
the fused scores (``engine.fusion``); annotations outside the shortlist keep their stage-1 evidence.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Dict, Iterator, List, Sequence

import numpy as np

from .. import core
from ..engine.config import Mode
from ..evaluation import drawing
from ..pipeline import calibration_for, score_query
from .chips import QueryChipError, annot_chips, annot_uuids, image_path, public_reason
from .configs import as_config, from_depc_config, resolve_config_path
from .pairs import pair_matches, pair_scores
from .registry import PAIRWISE_TABLE, AnnotMatch, const, dtool, register_preproc_annot, ut

logger = logging.getLogger("wbia_lightglue")


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
    cm = AnnotMatch()
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


class DepcSource:
    """The pipeline's source inside WBIA: a request's pairs, stage 1 through ``ibs.lightglue_stage1_scores``
    (the plugin's index or HotSpotter), LightGlue scores through the ``LightGlue`` pair table (stored rows
    reused, missing ones computed and stored; a pair whose chip failed just now scores 0, unstored)."""

    def __init__(self, request: "LightGlueRequest", grouped: Dict[int, List[int]], use_cache: Any):
        self.request, self.grouped, self.use_cache = request, grouped, use_cache
        self.ibs = request.depc.controller

    def candidates(self, qaid: int, mode: Mode) -> List[int]:
        return self.grouped[qaid]

    def stage1_scores(self, qaid: int, daids: Sequence[int]) -> List[float]:
        return self.ibs.lightglue_stage1_scores(qaid, list(daids), self.request.lightglue_config)

    def lightglue_scores(self, qaid: int, daids: Sequence[int]) -> List[float]:
        pairs = [(qaid, daid) for daid in daids]
        rows = super(LightGlueRequest, self.request).execute(pairs, use_cache=self.use_cache, postprocess=False)
        scores = [row[0] if isinstance(row, (tuple, list)) else row for row in rows]
        return [0.0 if score is None else float(score) for score in scores]


class LightGlueRequest(dtool.base.VsOneSimilarityRequest):
    """``depc_annot.new_request('LightGlue', qaids, daids, cfg)``; also ``pipeline_root='LightGlue'``.

    Pairs are (query, database) with the query itself left out; ``execute()`` returns one AnnotMatch
    per query (in first-appearance order) and computes only pairs not already stored.
    ``lightglue_config`` is the config the request was made with (read once, in ``new``).
    """

    _symmetric = False
    _tablename = PAIRWISE_TABLE
    lightglue_config: core.Config

    @classmethod
    def new(cls, depc, qaid_list, daid_list, cfgdict=None, tablename=None):
        cfgdict = dict(cfgdict or {})
        # Requests also arrive from the web (query_config_dict of the engine routes), so config_path
        # is held to the config directory here too.
        path = resolve_config_path(cfgdict.get("config_path"))
        cfgdict["config_path"] = None if path is None else str(path)
        # Read the config now: a bad file fails the request up front, and the fingerprint of its
        # contents keys the stored scores.
        config = as_config(path)
        cfgdict["fingerprint"] = config.match_fingerprint
        request = super().new(depc, qaid_list, daid_list, cfgdict, tablename)
        request.lightglue_config = config
        return request

    def __getstate__(request):
        state = super().__getstate__()
        state.pop("lightglue_config", None)  # a core.Config does not pickle; read again when unpickled
        return state

    def __setstate__(request, state):
        super().__setstate__(state)
        request.lightglue_config = from_depc_config(request.config)

    def execute(request, parent_rowids=None, use_cache=None, postprocess=True, **kwargs):
        """The AnnotMatches, one per query through the pipeline (``pipeline.score_query`` over ``DepcSource``):
        exhaustive scores every pair; two-stage runs stage 1, the pairs of the shortlist, fusion. A query whose
        chip cannot be computed fails the request with the reason (its scores would all be 0, a ranking that
        means nothing); a bad database annotation scores 0."""
        ibs = request.depc.controller
        config = request.lightglue_config
        qaids = [int(q) for q in dict.fromkeys(np.asarray(request.qaids).tolist())]
        for qaid, feats in zip(qaids, ibs.lightglue_features(qaids, config)):
            error = core.failure(feats)
            if error is not None:
                name = f"query annotation {qaid} ({annot_uuids(ibs, [qaid])[0]})"
                public = public_reason(error, [image_path(ibs, qaid)])
                raise QueryChipError(f"{name}: {error}; nothing to match", public=f"{name}: {public}; nothing to match")
        if not postprocess:  # WBIA asking for the raw pair rows
            return super().execute(parent_rowids, use_cache=use_cache, postprocess=postprocess, **kwargs)
        grouped: Dict[int, List[int]] = {}
        for qaid, daid in parent_rowids if parent_rowids is not None else request.parent_rowids:
            grouped.setdefault(int(qaid), []).append(int(daid))
        source = DepcSource(request, grouped, use_cache)
        # two-stage: the annotation scores are P(same individual) of the fused scores when a calibration exists
        # (the shipped one for the defaults); exhaustive keeps LightGlue's raw sums (Wildbook's range)
        calibration = calibration_for(config) if config.mode == "two_stage" else None
        cms = []
        for qaid, daids in grouped.items():
            scored = score_query(qaid, source, config)
            stage1 = config["shortlist_source"] if scored.mode == "two_stage" else "none"
            logger.info("%s query %d: stage 1 (%s) over %d annotations, LightGlue on %d%s",
                        scored.mode.replace("_", "-"), qaid, stage1, len(daids), int(scored.matched.sum()),
                        "; calibrated" if calibration is not None else "")
            scores = scored.scores if calibration is None else calibration.probability(scored.scores)
            cms.append(_annot_match(ibs, qaid, scored.candidates, scores.tolist(), request.config["name_score"]))
        return cms

    def render_single_result(request, cm, aid, **kwargs):
        """The review image of (query, ``aid``) as WBIA asks for it: HxWx3 uint8 BGR.

        WBIA's ``ensure_review_image`` passes ``heatmask`` (coat regions coloured by match confidence),
        ``draw_fmatch`` (the correspondences) or neither (the two chips, ``clean``), and ``vert``
        (stack the chips). The matches come from the job's scoring pass when this process scored the
        pair, else LightGlue runs once for the pair and the other versions reuse it.
        """
        start = time.perf_counter()
        ibs = request.depc.controller
        config = request.lightglue_config
        version = review_version(kwargs)
        feats, result, cached = pair_matches(ibs, cm.qaid, aid, config)
        chips = annot_chips(ibs, [cm.qaid, aid])
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
    lightglue_config = from_depc_config(config)
    for score in pair_scores(depc.controller, list(qaid_list), list(daid_list), lightglue_config):
        # None: an annotation's chip failed just now; a stored 0 would stay until its bbox changes
        yield None if score is None else (float(score),)
