"""Stage-1 scoring: LNBNN voting over a query's nearest database descriptors, and the spatial check.

LNBNN (HotSpotter's local naive Bayes nearest neighbour): for each query descriptor its K + 1 nearest
database descriptors are fetched; each of the first K votes ``d_norm - d`` for its annotation, where
``d_norm`` is the distance to the (K+1)-th neighbour; an annotation takes at most one vote per query
descriptor (the strongest); its score is the sum of its votes. The spatial check (``shortlist_spatial``)
keeps, for each of the top candidates, only the votes consistent with one RANSAC similarity transform.

Pure numpy (+ OpenCV's RANSAC): the index (:mod:`.index`) supplies the neighbours (:class:`Neighbours`); the tables
of shards of one database merge exactly (:func:`merge_neighbours`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Collection, Dict, Iterable, Mapping, Sequence, Set

import numpy as np


@dataclass
class Neighbours:
    """The nearest database descriptors of each query descriptor (rows), in distance order (columns).

    ``slots[i, j]`` is the annotation slot of neighbour j of query descriptor i (-1: none), ``dist`` its L2
    distance, ``xy`` its keypoint (x, y) in its annotation's stage-1 chip.
    """

    dist: np.ndarray  # [N x F] float32
    slots: np.ndarray  # [N x F] int64
    xy: np.ndarray  # [N x F x 2] float32


def merge_neighbours(tables: Sequence[Neighbours], fetch: int) -> Neighbours:
    """The ``fetch`` nearest of each row over the tables of shards of one database (slots already global).

    Exact: the ``fetch`` nearest over the whole database are among the union of each shard's ``fetch``
    nearest, so LNBNN over the merged table votes as over one index of the whole database (up to the order
    of neighbours at exactly equal distances).
    """
    dist = np.concatenate([t.dist for t in tables], axis=1)
    slots = np.concatenate([t.slots for t in tables], axis=1)
    xy = np.concatenate([t.xy for t in tables], axis=1)
    order = np.argsort(np.where(slots >= 0, dist, np.inf), axis=1, kind="stable")[:, :fetch]
    rows = np.arange(len(dist))[:, None]
    slots = slots[rows, order]
    dist = np.where(slots >= 0, dist[rows, order], 0).astype(np.float32)
    return Neighbours(dist, slots, xy[rows, order])


@dataclass
class Votes:
    """One vote per (query descriptor, annotation slot): aligned arrays, grouped by query descriptor."""

    rows: np.ndarray  # query descriptor of each vote
    slots: np.ndarray  # annotation slot voted for
    weights: np.ndarray  # d_norm - d (float64)
    ids: np.ndarray  # the database vector (FAISS id) that voted
    voters: int  # query descriptors that cast at least one vote


def lnbnn_votes(dist: np.ndarray, ids: np.ndarray, slots: np.ndarray, k: int, excluded: Set[int]) -> Votes:
    """Votes from the neighbour table of a query (rows = query descriptors, columns in distance order).

    ``slots[i, j]`` is the annotation slot of neighbour ``ids[i, j]`` (-1: none); ``excluded`` slots never
    vote and do not count towards the K + 1 (the caller fetched enough neighbours to fill them).
    """
    valid = slots >= 0
    if excluded:
        valid &= ~np.isin(slots, list(excluded))
    # the first K + 1 valid neighbours of each row, in distance order
    rank = np.cumsum(valid, axis=1) - 1
    keep = valid & (rank <= k)
    count = keep.sum(axis=1)
    norm_col = np.where(keep & (rank == count[:, None] - 1), dist, 0).max(axis=1)  # last kept = normaliser
    voting = keep & (rank < count[:, None] - 1)
    rows, cols = np.nonzero(voting)
    weights = (norm_col[rows] - dist[rows, cols]).astype(np.float64)
    vslots = slots[rows, cols]
    vids = ids[rows, cols]
    # one vote per (query descriptor, annotation): the strongest
    order = np.lexsort((-weights, vslots, rows))
    rows, vslots, weights, vids = rows[order], vslots[order], weights[order], vids[order]
    first = np.ones(len(rows), bool)
    first[1:] = (rows[1:] != rows[:-1]) | (vslots[1:] != vslots[:-1])
    return Votes(rows[first], vslots[first], weights[first], vids[first], int(voting.any(axis=1).sum()))


def spatial_check(scores: Dict[str, float], slot_of: Dict[str, int], votes: Votes, query_xy: np.ndarray,
                  database_xy: np.ndarray, image_size: float, top: int) -> None:
    """Re-score the ``top`` candidates of ``scores`` (in place) by their RANSAC-consistent votes only.

    ``database_xy[id]`` is the keypoint of database vector ``id``; the transform is a similarity (query
    keypoint -> database keypoint) with a threshold of 5% of the query's larger side. Candidates below the
    top keep their order, scaled below every verified one.
    """
    import cv2

    ranked = sorted(scores, key=lambda key: -scores[key])
    checked, rest = ranked[:top], ranked[top:]
    verified = {}
    for key in checked:
        mask = votes.slots == slot_of[key]
        if mask.sum() < 3:
            verified[key] = 0.0
            continue
        src, dst = query_xy[votes.rows[mask]], database_xy[votes.ids[mask]]
        _, inliers = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                 ransacReprojThreshold=0.05 * image_size, maxIters=500,
                                                 confidence=0.99, refineIters=0)
        verified[key] = float(votes.weights[mask][inliers.ravel().astype(bool)].sum()) if inliers is not None else 0.0
    floor = min(verified.values()) if verified else 0.0
    peak = max((scores[key] for key in rest), default=0.0)
    for key in rest:  # below every verified candidate, in their raw order
        scores[key] = floor * 0.999 * scores[key] / peak if peak > 0 else 0.0
    scores.update(verified)


@dataclass
class Stage1Scores:
    """Stage-1 scores of one query: ``scores[key]`` for every annotation in the index (0 = no vote)."""

    scores: Dict[str, float]
    votes: int  # query descriptors that voted

    def ranked(self, keys: Sequence[str]) -> np.ndarray:
        """The scores of ``keys`` in that order (0 for a key absent from the index)."""
        return np.asarray([self.scores.get(k, 0.0) for k in keys], np.float64)


def score_neighbours(table: Neighbours, features: Mapping[str, Any], slot_keys: Sequence[str],
                     slot_of: Mapping[str, int], keys: Iterable[str], k: int, exclude: Collection[str] = (),
                     spatial: bool = True, spatial_top: int = 50) -> Stage1Scores:
    """LNBNN votes over a query's neighbour ``table`` (then the spatial check): the scores of ``keys``.

    The one scoring of a search, whether the table came from one index (``Stage1Index.search``) or was merged
    from the tables of shards (``lnbnn.merge_neighbours``): slot ``s`` of the table is annotation
    ``slot_keys[s]``, ``slot_of`` maps each key of ``keys`` to its slot.
    """
    scores = {key: 0.0 for key in keys}
    excluded = {slot_of[key] for key in exclude if key in slot_of}
    positions = np.arange(table.dist.size, dtype=np.int64).reshape(table.dist.shape)  # a vector per table cell
    votes = lnbnn_votes(table.dist, positions, table.slots, k, excluded)
    totals = np.bincount(votes.slots, weights=votes.weights, minlength=len(slot_keys))
    for slot in np.flatnonzero(totals):
        scores[slot_keys[slot]] = float(totals[slot])
    if spatial:
        size = float(max(np.asarray(features["image_size"]).max(), 1))
        spatial_check(scores, dict(slot_of), votes, np.asarray(features["keypoints"], np.float32),
                      table.xy.reshape(-1, 2), size, spatial_top)
    return Stage1Scores(scores, votes.voters)
