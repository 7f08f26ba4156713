"""The one identification pipeline (:mod:`.stages`) and its source for photo files (:mod:`.files`).

    plan -> stage 1 -> pairs -> score pairs -> fuse -> rank individuals
"""
from .stages import (
    EvidenceSource,
    QueryScores,
    RankedIndividual,
    ScoreMatrices,
    SymmetricPairs,
    calibration_for,
    fused,
    pairs,
    rank_individuals,
    score_matrix,
    score_pairs,
    score_query,
    stage1,
)

__all__ = ["EvidenceSource", "QueryScores", "RankedIndividual", "ScoreMatrices", "SymmetricPairs",
           "calibration_for", "fused", "pairs", "rank_individuals", "score_matrix", "score_pairs", "score_query",
           "stage1"]
