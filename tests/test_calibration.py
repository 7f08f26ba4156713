"""Calibration: monotone, in [0, 1], JSON round-trip, tied to the pair-score fingerprint, shipped default, helpers."""
import json
import logging

import numpy as np
import pytest

from wbia_lightglue import core
from wbia_lightglue.engine import calibration as model
from wbia_lightglue.engine import config as engine_config
from wbia_lightglue.evaluation import calibration as cal
from wbia_lightglue.evaluation.plots import plot_reliability


@pytest.fixture
def config():  # exhaustive: the calibration of raw LightGlue scores
    return core.Config({"max_num_keypoints": 256, "shortlist_k": 0})


def synthetic_pairs(n=400, seed=0):
    """Same-individual pairs score higher on average, with overlap (so P is strictly between 0 and 1)."""
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.2
    scores = np.where(same, rng.gamma(4.0, 20.0, n), rng.gamma(2.0, 8.0, n))
    return scores, same


@pytest.mark.parametrize("method", cal.METHODS)
def test_fit_is_monotone_and_maps_into_unit_interval(config, method):
    scores, same = synthetic_pairs()
    calibration = cal.fit(scores, same, config, method)
    grid = np.linspace(-50, 1000, 2001)  # beyond both ends of the data: clipped
    prob = calibration.probability(grid)
    assert np.all(np.diff(prob) >= 0)
    assert prob.min() >= 0 and prob.max() <= 1
    assert prob[0] < 0.2 < prob[-1]  # informative: low scores unlikely, high scores likely
    assert calibration.num_pairs == 400 and calibration.num_positive == int(same.sum())
    assert calibration.probability(5.0).shape == ()


def test_isotonic_beats_the_base_rate_on_held_out_pairs(config):
    scores, same = synthetic_pairs(seed=1)
    test_scores, test_same = synthetic_pairs(seed=2)
    prob = cal.fit(scores, same, config).probability(test_scores)
    assert cal.brier_score(prob, test_same) < cal.brier_score(np.full(len(test_same), same.mean()), test_same)


def test_round_trips_through_json(config, tmp_path):
    calibration = cal.fit(*synthetic_pairs(), config, dataset="x")
    path = calibration.save(tmp_path / "c.json")
    data = json.loads(path.read_text())
    assert data["version"] == model.FORMAT_VERSION and data["match_fingerprint"] == config.match_fingerprint
    again = model.Calibration.read(path)
    assert again == calibration
    grid = np.linspace(0, 300, 50)
    np.testing.assert_array_equal(again.probability(grid), calibration.probability(grid))


def test_refuses_another_fingerprint(config, tmp_path, caplog):
    calibration = cal.fit(*synthetic_pairs(), config)
    model.save_calibration(calibration, config, tmp_path / "c.json")
    other = config.replace(max_num_keypoints=512)
    with caplog.at_level(logging.WARNING, logger="wbia_lightglue"):
        assert model.load_calibration(other, tmp_path / "c.json") is None
    assert "fitted under fingerprint" in caplog.text
    assert model.load_calibration(config, tmp_path / "c.json") == calibration
    with pytest.raises(model.CalibrationError):
        model.save_calibration(calibration, other, tmp_path / "d.json")
    # name_score is not part of the pair score: a calibration survives changing it
    assert model.load_calibration(config.replace(name_score="sum"), tmp_path / "c.json") == calibration


def test_persistence_location(tmp_path, monkeypatch):
    config_file = tmp_path / "lightglue.json"
    config_file.write_text(json.dumps({"max_num_keypoints": 256, "shortlist_k": 0}))
    config = core.load_config(config_file)
    assert model.calibration_path(config) == tmp_path / "lightglue.calibration.json"
    assert model.calibration_path(config.replace(shortlist_k=20)) == tmp_path / "lightglue.two_stage.calibration.json"
    assert model.load_calibration(config) is None  # none yet (nor shipped for 256 keypoints): uncalibrated
    written = model.save_calibration(cal.fit(*synthetic_pairs(), config), config)
    assert written == tmp_path / "lightglue.calibration.json"
    assert model.load_calibration(core.load_config(config_file)) is not None
    monkeypatch.setattr(engine_config, "DEFAULT_CONFIG_DIR", tmp_path / "v_config")
    assert model.calibration_path(core.Config({"shortlist_k": 0})) == tmp_path / "v_config" / "config.calibration.json"


def test_unusable_file_is_ignored_with_a_warning(config, tmp_path, caplog):
    (tmp_path / "c.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="wbia_lightglue"):
        assert model.load_calibration(config, tmp_path / "c.json") is None
    assert "unusable" in caplog.text


def test_fit_needs_both_classes_and_rejects_bad_knots(config):
    with pytest.raises(model.CalibrationError):
        cal.fit([1.0, 2.0], [True, True], config)
    with pytest.raises(model.CalibrationError):
        cal.fit([1.0, 2.0], [True, False], config, method="spline")
    with pytest.raises(model.CalibrationError):
        model.Calibration([1.0, 0.5], [0.1, 0.2], "f", "confidence_sum")
    with pytest.raises(model.CalibrationError):
        model.Calibration([0.0, 1.0], [0.1, 1.5], "f", "confidence_sum")


def test_labelled_pairs_skip_unlabelled_and_uncompared():
    nan = np.nan
    scores = np.array([[nan, 5, 1, 2], [5, nan, nan, 3], [1, nan, nan, 4], [2, 3, 4, nan]], float)
    values, same = cal.labelled_pairs(scores, ["A", "A", "B", None])
    # pairs (0,1) A-A, (0,2) A-B; (1,2) not compared; anything with index 3 is unlabelled
    assert values.tolist() == [5.0, 1.0] and same.tolist() == [True, False]
    values, same = cal.labelled_pairs(scores, ["A", "A", "B", "B"], rows=[0, 2, 3])
    assert values.tolist() == [1.0, 2.0, 4.0] and same.tolist() == [False, False, True]
    directed = np.array([[nan, 5, 1], [6, nan, 7], [8, nan, nan]], float)  # rows are queries
    values, same = cal.labelled_pairs(directed, ["A", "A", "B"], directed=True)
    assert sorted(zip(values.tolist(), same.tolist())) == [(1.0, False), (5.0, True), (6.0, True), (7.0, False),
                                                            (8.0, False)]


def test_split_by_individual_is_deterministic_and_disjoint():
    labels = ["3", "1", "2", "1", "10", None, "2", "4"]
    fit_rows, test_rows = cal.split_by_individual(labels)
    assert (fit_rows, test_rows) == cal.split_by_individual(labels)
    assert not {labels[i] for i in fit_rows} & {labels[i] for i in test_rows}
    assert 5 not in fit_rows + test_rows
    # natural order 1, 2, 3, 4, 10: every other one is held out
    assert {labels[i] for i in test_rows} == {"2", "4"}


def test_brier_and_reliability_helpers(tmp_path):
    p = np.array([0.0, 0.0, 1.0, 1.0, 0.55, 0.55])
    y = np.array([0, 0, 1, 1, 1, 0], bool)
    assert cal.brier_score(p[:4], y[:4]) == 0.0
    assert cal.brier_score(p, y) == pytest.approx((0.45 ** 2 + 0.55 ** 2) / 6)
    assert np.isnan(cal.brier_score([], []))
    table = cal.reliability(p, y, bins=10)
    assert table["count"] == [2, 2, 2] and table["observed"] == [0.0, 0.5, 1.0]
    assert table["ece"][0] == pytest.approx(0.05 * 2 / 6)
    plot_reliability(table, cal.brier_score(p, y), tmp_path / "r.png")
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_probabilities_helper(config):
    assert model.probabilities(None, [1.0, 2.0]) is None
    calibration = model.Calibration([0.0, 10.0], [0.0, 1.0], config.match_fingerprint, "confidence_sum")
    assert model.probabilities(calibration, [5.0, 20.0, -1.0]) == [0.5, 1.0, 0.0]


def test_two_stage_calibration_is_of_the_fused_score_and_strictly_increasing(tmp_path):
    two_stage = core.Config({"max_num_keypoints": 256})
    assert two_stage.mode == "two_stage"
    assert two_stage.pair_score_fingerprint != two_stage.match_fingerprint
    assert two_stage.replace(fusion="logistic").pair_score_fingerprint != two_stage.pair_score_fingerprint
    assert two_stage.replace(name_score="sum").pair_score_fingerprint == two_stage.pair_score_fingerprint
    assert cal.default_method(two_stage) == "logistic" and cal.default_method(two_stage.replace(shortlist_k=0)) \
        == "isotonic"
    fused = np.log1p(synthetic_pairs()[0])  # fused scores live on a log scale
    calibration = cal.fit(fused, synthetic_pairs()[1], two_stage, "logistic")
    assert calibration.match_fingerprint == two_stage.pair_score_fingerprint and calibration.score.startswith("fused")
    a, b = calibration.logistic
    assert b > 0
    # strictly increasing past the fitted range: two strong matches never tie
    far = calibration.probability([fused.max() + 1, fused.max() + 2])
    assert far[0] < far[1] < 1
    np.testing.assert_allclose(calibration.probability(0.0), 1 / (1 + np.exp(-a)))
    assert model.Calibration.read(calibration.save(tmp_path / "f.json")) == calibration
    # refused under the exhaustive config (raw scores are on another scale)
    assert model.load_calibration(two_stage.replace(shortlist_k=0), tmp_path / "f.json") is None


@pytest.mark.parametrize("coef", [[1.0], [0.0, -1.0], [0.0, float("nan")], ["1", 2.0], [True, 1.0]])
def test_a_bad_logistic_is_refused(coef):
    with pytest.raises(model.CalibrationError, match="logistic"):
        model.Calibration([0.0, 1.0], [0.1, 0.9], "f", "fused", "logistic", logistic=coef)


def test_the_built_in_defaults_are_calibrated_by_the_shipped_file(tmp_path, monkeypatch):
    monkeypatch.setattr(engine_config, "DEFAULT_CONFIG_DIR", tmp_path / "v_config")  # no user file
    defaults = core.Config({})
    shipped = model.load_calibration(defaults)
    assert shipped is not None, "wbia_lightglue/calibrations/ holds no calibration of the default settings"
    assert shipped.match_fingerprint == defaults.pair_score_fingerprint and shipped.logistic is not None
    assert {"fitted_on", "date", "settings", "command"} <= set(shipped.meta)
    assert 0 < shipped.num_positive < shipped.num_pairs
    p = shipped.probability([0.0, 2.0, 4.0, 8.0, 16.0])  # fused scores: log1p(LightGlue) + log1p(stage 1)
    assert np.all(np.diff(p) > 0) and p[0] < 0.01 and p[-1] > 0.3
    # other settings: nothing shipped for them
    assert model.load_calibration(defaults.replace(max_num_keypoints=256)) is None
    # the user's own file (wbia-lightglue calibrate) takes precedence over the shipped one
    mine = cal.fit(*synthetic_pairs(), defaults, "logistic")
    model.save_calibration(mine, defaults)
    assert model.load_calibration(defaults) == mine
