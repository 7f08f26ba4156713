"""The identification pipeline's stages (pure logic over a scripted source; real matching is tested in
test_cli/test_shortlist through StoreSource and DatasetSource)."""
import numpy as np
import pytest

from wbia_lightglue.engine.config import load_config
from wbia_lightglue.pipeline import SymmetricPairs, rank_individuals, score_matrix, score_query
from wbia_lightglue.pipeline.stages import pairs


class ScriptedSource:
    """Candidates 0..n-1 with given stage-1 scores; LightGlue score of (q, c) = lightglue[c]; calls recorded."""

    def __init__(self, stage1, lightglue):
        self.s1, self.lg = list(stage1), list(lightglue)
        self.stage1_calls, self.lightglue_calls = [], []

    def candidates(self, query, mode):
        return list(range(len(self.lg)))

    def stage1_scores(self, query, candidates):
        self.stage1_calls.append(list(candidates))
        return [self.s1[c] for c in candidates]

    def lightglue_scores(self, query, candidates):
        self.lightglue_calls.append(list(candidates))
        return [self.lg[c] for c in candidates]


def test_the_config_decides_the_mode_once():
    assert load_config(None, shortlist_k=0).mode == "exhaustive"
    assert load_config(None, shortlist_k=3).mode == "two_stage"


def test_exhaustive_matches_every_candidate_and_never_asks_for_stage1():
    source = ScriptedSource([9, 9, 9], [1.0, 5.0, 3.0])
    scored = score_query("q", source, load_config(None, shortlist_k=0))
    assert source.stage1_calls == [] and source.lightglue_calls == [[0, 1, 2]]
    assert scored.mode == "exhaustive" and scored.stage1 is None and scored.matched.all()
    assert scored.scores.tolist() == [1.0, 5.0, 3.0]  # LightGlue's own scores, unfused


def test_two_stage_matches_only_the_shortlist_best_stage1_first():
    source = ScriptedSource([0.5, 7.0, np.nan, 3.0, -1.0], [100.0, 1.0, 100.0, 2.0, 100.0])
    scored = score_query("q", source, load_config(None, shortlist_k=2))
    assert source.lightglue_calls == [[1, 3]]
    assert scored.stage1.tolist() == [0.5, 7.0, 0.0, 3.0, 0.0]  # NaN and negatives are no evidence
    assert scored.matched.tolist() == [False, True, False, True, False]
    assert scored.lightglue.tolist() == [0.0, 1.0, 0.0, 2.0, 0.0]
    assert scored.scores[1] > scored.scores[0] and scored.scores[3] > scored.scores[0]


def test_a_shortlist_longer_than_the_database_matches_everything():
    assert pairs("two_stage", np.array([1.0, 2.0]), 2, load_config(None, shortlist_k=20)).tolist() == [1, 0]


def test_no_candidates_is_an_empty_result():
    source = ScriptedSource([], [])
    for k in (0, 3):
        scored = score_query("q", source, load_config(None, shortlist_k=k))
        assert scored.candidates == [] and len(scored.scores) == 0 and source.lightglue_calls == []


def test_rank_individuals_by_name_score_with_natural_ties_and_best_annotation():
    scores = [2.0, 5.0, 5.0, 1.0, 5.0]
    names = ["ind10", "ind2", "ind10", "ind2", "ind3"]
    ranking = rank_individuals(scores, names, "max")
    assert [(r.rank, r.individual, r.score) for r in ranking] == [(1, "ind2", 5.0), (2, "ind3", 5.0),
                                                                  (3, "ind10", 5.0)]
    assert [r.best for r in ranking] == [1, 4, 2]
    assert [r.individual for r in rank_individuals(scores, names, "sum")] == ["ind10", "ind2", "ind3"]


def test_symmetric_pairs_match_each_unordered_pair_once():
    calls = []

    def match(i, partners):
        calls.append((i, list(partners)))
        return [10 * i + j for j in partners]

    pairs_of = SymmetricPairs(match)
    assert pairs_of(0, [1, 2]) == [1.0, 2.0]
    assert pairs_of(1, [0, 2]) == [1.0, 12.0]  # (1, 0) reused from (0, 1)
    assert calls == [(0, [1, 2]), (1, [2])]


class MatrixSource:
    def __init__(self, lightglue):
        self.lg = np.asarray(lightglue, float)
        self.pairs = SymmetricPairs(lambda i, js: self.lg[i, js])

    def candidates(self, query, mode):
        return [j for j in range(len(self.lg)) if j != query]

    def stage1_scores(self, query, candidates):
        return self.lg[query, candidates]

    def lightglue_scores(self, query, candidates):
        return self.pairs(query, candidates)


@pytest.mark.parametrize("k", [0, 1])
def test_score_matrix_rows_are_queries(k):
    lg = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0]], float)
    matrices = score_matrix(3, MatrixSource(lg), load_config(None, shortlist_k=k), progress=False)
    assert np.isnan(np.diag(matrices.scores)).all()
    if k == 0:
        assert matrices.stage1 is None and matrices.lightglue is None
        assert np.array_equal(np.nan_to_num(matrices.scores), lg)
    else:  # only each query's best stage-1 candidate was matched
        assert (~np.isnan(matrices.lightglue)).sum() == 3
        assert matrices.lightglue[0, 2] == 2 and matrices.lightglue[1, 2] == 3 and matrices.lightglue[2, 1] == 3
