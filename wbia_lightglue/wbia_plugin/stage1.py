"""Stage 1 of two-stage mode inside WBIA: the database's stage-1 index and ``lightglue_stage1_scores``.

Registered: the ibs method ``lightglue_stage1_scores``. The live index of each (database, stage-1
fingerprint) is held in :data:`.state.STATE` and saved in the database's cache folder
(``<cachedir>/lightglue_shortlist/<fingerprint>.npz``). Its keys are annotation *visual* UUIDs, which WBIA
changes with the chip (image, bbox, theta), so an edited annotation is never matched through its old
descriptors even across processes; :mod:`.invalidation` drops them from the live index at once.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Sequence, Tuple

import numpy as np

from .. import core
from ..engine.stage1 import AnyIndex, extract_stage1_features, synced_index
from .chips import annot_chips
from .configs import ConfigPath, as_config
from .registry import register_ibs_method
from .state import STATE

logger = logging.getLogger("wbia_lightglue")


@register_ibs_method
def lightglue_stage1_scores(ibs, qaid: int, daid_list: Sequence[int], config_path: ConfigPath = None) -> List[float]:
    """Stage-1 scores of ``qaid`` vs each daid (config ``shortlist_source``); never NaN, 0 = no evidence.

    ``'index'``: LNBNN over the plugin's FAISS RootSIFT index of the daids (incremental, persisted);
    ``'hotspotter'``: WBIA's HotSpotter annotation scores (``ibs.query_chips``, default pipeline).
    The query itself scores 0 where it appears among the daids.
    """
    config = as_config(config_path)
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
        chip = annot_chips(ibs, [qaid])[0]
        feats = extract_stage1_features([chip if chip is not None else np.zeros((0, 0, 3), np.uint8)], config,
                                        keys=[qaid])[0]
        values = index.search(feats, exclude=[str(query)]).ranked(keys).tolist()
    by_daid = dict(zip(others, values))
    return [max(0.0, by_daid.get(d, 0.0)) for d in daids]


def _shortlist_path(ibs, config: core.Config) -> Path:
    return Path(ibs.get_cachedir()) / "lightglue_shortlist" / f"{config.shortlist_fingerprint}.npz"


def _stage1_index(ibs, aids: Sequence[int], config: core.Config) -> Tuple[AnyIndex, List[str]]:
    """The database's stage-1 index, brought in step with ``aids`` (added / removed incrementally)."""
    keys = [str(u) for u in ibs.get_annot_visual_uuids(list(aids))]
    cache_key = (str(ibs.get_dbdir()), config.shortlist_fingerprint)
    path = _shortlist_path(ibs, config)
    aid_of = dict(zip(keys, aids))

    def features_of(missing: List[str]) -> List[dict]:
        missing_aids = [aid_of[k] for k in missing]
        chips = annot_chips(ibs, missing_aids)
        return extract_stage1_features([c if c is not None else np.zeros((0, 0, 3), np.uint8) for c in chips],
                                       config, keys=missing_aids)

    index, added, removed = synced_index(path, config, keys, features_of, index=STATE.stage1_indexes.get(cache_key))
    STATE.stage1_indexes[cache_key] = index
    STATE.indexed_as.update({(cache_key[0], int(aid)): key for aid, key in zip(aids, keys)})
    if added or removed:
        logger.info("stage-1 index %s: %d annotations (%d added, %d removed)", path, len(index), added, removed)
    return index, keys
