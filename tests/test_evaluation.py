"""The evaluation protocol's edge cases (pure logic: hand-made score matrices)."""
import json

import numpy as np
import pytest

from wbia_lightglue.engine.config import load_config
from wbia_lightglue.evaluation.datasets import DatasetSource
from wbia_lightglue.evaluation.plots import plot_cmc
from wbia_lightglue.evaluation.protocol import evaluate_scores
from wbia_lightglue.pipeline import score_matrix


def symmetric(values):
    m = np.array(values, dtype=float)
    return np.where(np.isnan(m), m.T, m)


NAN = np.nan


def test_rank_and_map_on_a_known_set():
    # a0 a1 (A), b0 b1 (B), c0 (C, single sighting)
    scores = symmetric([
        [NAN, 9, 1, 2, 3],
        [NAN, NAN, 4, 5, 1],
        [NAN, NAN, NAN, 2, 1],
        [NAN, NAN, NAN, NAN, 7],
        [NAN, NAN, NAN, NAN, NAN],
    ])
    report = evaluate_scores(scores, ["A", "A", "B", "B", "C"], ranks=(1, 2))
    ranks = {r.query: r.rank for r in report.queries}
    # b0: B=2 vs A=4 -> rank 2; b1: C=7 and A=5 beat B=2 -> rank 3
    assert ranks == {0: 1, 1: 1, 2: 2, 3: 3, 4: None}
    assert report.num_answerable == 4 and report.num_skipped == 1
    assert report.cmc == {1: 0.5, 2: 0.75}
    assert report.queries[4].skipped == "no other sighting"
    # AP of b1: b0 (2) ties with a0 (2) behind c0 and a1; ties are pessimistic -> 4th of 4
    assert report.queries[3].average_precision == pytest.approx(1 / 4)
    assert report.mean_average_precision == pytest.approx((1 + 1 + 0.5 + 1 / 4) / 4)


def test_unlabelled_annotations_are_never_correct_for_each_other():
    scores = symmetric([[NAN, 10, 1], [NAN, NAN, 1], [NAN, NAN, NAN]])
    report = evaluate_scores(scores, [None, None, 0])
    assert report.num_answerable == 0 and report.num_skipped == 3
    assert {r.skipped for r in report.queries} == {"unlabelled"}
    # a named query whose best score is an unnamed annotation is wrong at rank 1
    scores = symmetric([[NAN, 10, 5], [NAN, NAN, 1], [NAN, NAN, NAN]])
    report = evaluate_scores(scores, ["A", -1, "A"], ranks=(1, 2))
    assert report.queries[0].rank == 2 and report.queries[0].top_label is None
    assert report.num_answerable == 2


def test_ties_count_against_the_query():
    scores = symmetric([[NAN, 0, 0], [NAN, NAN, 0], [NAN, NAN, NAN]])
    report = evaluate_scores(scores, ["A", "A", "B"], ranks=(1,))
    assert report.cmc[1] == 0.0
    assert report.queries[0].average_precision == 0.5


def test_query_with_no_database_is_skipped():
    report = evaluate_scores(np.full((1, 1), np.nan), ["A"])
    assert report.num_answerable == 0 and report.num_skipped == 1
    assert np.isnan(report.rank1)


def test_groups_are_never_compared_and_each_pair_is_scored_once():
    calls = []

    def score(i, partners):
        calls.extend((i, j) for j in partners)
        return [10.0 if (i, j) in ((0, 2), (1, 3)) else 1.0 for j in partners]

    groups = ["left", "right", "left", "right", "left"]
    config = load_config(None, shortlist_k=0)  # exhaustive: the evaluation runs the pipeline over the items
    scores = score_matrix(5, DatasetSource([{}] * 5, config, groups=groups, pair_scores=score), config,
                          progress=False).scores
    assert sorted(calls) == [(0, 2), (0, 4), (1, 3), (2, 4)]
    assert np.isnan(scores[0, 1]) and scores[2, 0] == 10.0
    report = evaluate_scores(scores, ["x", "x", "x", "x", "y"], groups=groups, ranks=(1,))
    assert report.cmc[1] == 1.0 and report.num_answerable == 4  # y has no same-side sighting


def test_report_round_trips_to_json_and_plots(tmp_path):
    scores = symmetric([[NAN, 3, 1], [NAN, NAN, 1], [NAN, NAN, NAN]])
    report = evaluate_scores(scores, ["A", "A", "B"])
    report.save(tmp_path / "report.json")
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["cmc"]["1"] == 1.0 and len(data["queries"]) == 3
    plot_cmc({"test": report}, tmp_path / "cmc.png")
    assert (tmp_path / "cmc.png").read_bytes()[:4] == b"\x89PNG"
