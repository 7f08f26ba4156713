"""Stage 1 of two-stage identification: a sublinear shortlist over the whole database.

* :mod:`.features` — each annotation's uint8 SIFT descriptors (Hessian-affine through :mod:`.hesaff`, or
  OpenCV's DoG RootSIFT) from its chip downsized to ``shortlist_image_size``;
* :mod:`.index` — ONE FAISS kNN index of the database's descriptors (incremental, persisted);
* :mod:`.aggregated` — for catalogues (``shortlist_index`` ``aggregated``, or ``auto`` beyond 10^4 annotations):
  one VLAD vector per annotation in memory picks candidates, LNBNN scores them over their descriptors on disk;
* :mod:`.lnbnn` — LNBNN voting over each query descriptor's neighbours and the RANSAC spatial check.

A query's stage-1 scores rank every database annotation; the pipeline (:mod:`wbia_lightglue.pipeline`)
sends the top ``shortlist_k`` (the shortlist) to LightGlue. Config keys of this stage are ``shortlist_*``.
"""
from .aggregated import AggregatedIndex
from .features import DIM, empty_stage1_features, extract_stage1_features, rootsift
from .index import (
           AnyIndex,
           Stage1Index,
           Stage1Scores,
           build_descriptor_index,
    build_index,
           load_index,
           score_neighbours,
           stage1_device,
           synced_index,
)
from .lnbnn import Neighbours, merge_neighbours

__all__ = ["DIM", "AggregatedIndex", "AnyIndex", "Neighbours", "Stage1Index", "Stage1Scores",
           "build_descriptor_index", "build_index", "empty_stage1_features", "extract_stage1_features", "load_index",
           "merge_neighbours", "rootsift", "score_neighbours", "stage1_device", "synced_index"]
