"""The standalone tool: error paths (message + exit code), datasets, the feature store, every command.

Tiny settings throughout (128 keypoints, 256 px) and project-made images (tests/images.py, synthetic.py).
"""
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from images import textured_chip, warp

from wbia_lightglue import cli
from wbia_lightglue.cli import evaluate, extract, identify
from wbia_lightglue.core import load_config
from wbia_lightglue.data import synthetic
from wbia_lightglue.data.dataset import DatasetError, limit_individuals, load_dataset
from wbia_lightglue.data.images import read_image
from wbia_lightglue.data.store import FeatureStore, content_key

TINY = ["--keypoints", "128", "--image-size", "256", "--device", "cpu", "-q"]
INDIVIDUALS = ("ind1", "ind2", "ind10")  # natural order: ind1, ind2, ind10


def tiny_config():
    return load_config(None, max_num_keypoints=128, image_size=256, device="cpu")


def write_folder_dataset(root: Path) -> Path:
    """Three individuals (distinct textures) x two views each, plus a held-out third view per individual."""
    for k, name in enumerate(INDIVIDUALS):
        chip = textured_chip(100 + k)
        (root / "db" / name).mkdir(parents=True)
        cv2.imwrite(str(root / "db" / name / "a.png"), chip)
        cv2.imwrite(str(root / "db" / name / "b.png"), warp(chip, angle=10, scale=0.9))
        cv2.imwrite(str(root / f"query-{name}.png"), warp(chip, angle=-8, scale=0.95))
    return root


@pytest.fixture
def data(tmp_path):
    return write_folder_dataset(tmp_path)


def run_cli(capsys, *argv):
    """main() in-process: (exit code, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("wbia-lightglue: error: "), err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, err)


# ----------------------------------------------------------------------------- error paths
def test_missing_dataset_folder(tmp_path, capsys):
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "nowhere", *TINY)
    assert code == 2
    assert_one_error_line(err, "dataset", "nowhere", "does not exist")


def test_missing_query_image(data, capsys):
    code, _, err = run_cli(capsys, "identify", data / "missing.jpg", data / "db", *TINY)
    assert code == 2
    assert_one_error_line(err, "query image", "missing.jpg", "does not exist")


def test_unreadable_query_image_is_a_runtime_error(data, capsys):
    (data / "broken.jpg").write_bytes(b"not a jpeg at all")
    code, _, err = run_cli(capsys, "identify", data / "broken.jpg", data / "db", "--cache-dir", data / "store", *TINY)
    assert code == 1
    assert_one_error_line(err, "broken.jpg", "not a readable image")


def test_match_missing_image(data, capsys):
    code, _, err = run_cli(capsys, "match", data / "query-ind1.png", data / "nope.png", *TINY)
    assert code == 2
    assert_one_error_line(err, "nope.png", "does not exist")


def test_csv_missing_column(tmp_path, capsys):
    (tmp_path / "labels.csv").write_text("path,name\na.png,x\n")
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "labels.csv", *TINY)
    assert code == 2
    assert_one_error_line(err, "labels.csv", "lacks the column(s) individual")


@pytest.mark.parametrize("bbox, expected", [("1,2,0,5", "w, h > 0"), ("a,b,c,d", "not four numbers")])
def test_csv_bad_bbox(tmp_path, capsys, bbox, expected):
    (tmp_path / "labels.csv").write_text(f"path,individual,x,y,w,h\na.png,x,0,0,5,5\nb.png,y,{bbox}\n")
    code, _, err = run_cli(capsys, "evaluate", tmp_path / "labels.csv", *TINY)
    assert code == 2
    assert_one_error_line(err, "line 3", expected)


def test_csv_partial_bbox_columns(tmp_path):
    (tmp_path / "labels.csv").write_text("path,individual,x,y\na.png,x,0,0\n")
    with pytest.raises(DatasetError, match="needs all of the columns x, y, w, h"):
        load_dataset(tmp_path / "labels.csv")


@pytest.mark.parametrize("content, expected", [
    ('{"max_num_keypoint": 5}', "unknown key 'max_num_keypoint'"),
    ("{not json", "is not valid JSON"),
])
def test_bad_config_file(data, capsys, content, expected):
    (data / "config.json").write_text(content)
    code, _, err = run_cli(capsys, "match", data / "query-ind1.png", data / "query-ind2.png",
                           "--config", data / "config.json")
    assert code == 2
    assert_one_error_line(err, "config", expected)


def test_bad_override_is_a_config_error(data, capsys):
    code, _, err = run_cli(capsys, "extract", data / "db", "--keypoints", "0")
    assert code == 2
    assert_one_error_line(err, "max_num_keypoints", "1..16384")


def test_unavailable_device(data, capsys):
    if __import__("torch").cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, _, err = run_cli(capsys, "extract", data / "db", "--device", "cuda")
    assert code == 2
    assert_one_error_line(err, "CUDA is not available")


@pytest.mark.parametrize("argv, expected", [
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["identify", "only-one-arg"], "the following arguments are required: DATABASE"),
    (["evaluate", "x", "--keypoints", "many"], "invalid int value: 'many'"),
    (["identify", "q.png", "db", "--top", "0"], "--top must be at least 1"),
])
def test_usage_errors(capsys, argv, expected):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert_one_error_line(err, expected, "--help")


def test_group_by_missing_column(data, capsys):
    code, _, err = run_cli(capsys, "evaluate", data / "db", "--group-by", "side", *TINY)
    assert code == 2
    assert_one_error_line(err, "no column 'side'")


def test_console_script_subprocess(tmp_path):
    """The installed console script: same message and exit code as in-process."""
    script = Path(sys.executable).with_name("wbia-lightglue")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "wbia_lightglue"]
    proc = subprocess.run(command + ["evaluate", str(tmp_path / "nowhere")], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 2
    assert_one_error_line(proc.stderr, "does not exist")
    module = subprocess.run([sys.executable, "-m", "wbia_lightglue", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert module.returncode == 0 and "identify" in module.stdout and "demo" in module.stdout


# ----------------------------------------------------------------------------- datasets
def test_folder_dataset_natural_order(data):
    dataset = load_dataset(data / "db")
    assert dataset.individuals == list(INDIVIDUALS)
    assert len(dataset) == 6 and all(a.bbox is None for a in dataset.annotations)
    assert limit_individuals(dataset, 2).individuals == ["ind1", "ind2"]
    seeded = limit_individuals(dataset, 2, seed=3).individuals
    assert seeded == limit_individuals(dataset, 2, seed=3).individuals and len(seeded) == 2


def test_csv_dataset_with_bbox_and_attributes(tmp_path):
    image = textured_chip(7)
    (tmp_path / "img").mkdir()
    cv2.imwrite(str(tmp_path / "img" / "p.png"), image)
    (tmp_path / "labels.csv").write_text(
        "path,individual,side,x,y,w,h\nimg/p.png,A,left,10,20,100,50\nimg/p.png,A,right,,,,\n")
    dataset = load_dataset(tmp_path / "labels.csv")
    cropped, whole = dataset.annotations
    assert cropped.bbox == (10, 20, 100, 50) and whole.bbox is None
    assert dataset.column("side") == ["left", "right"]
    assert np.array_equal(read_image(cropped.path, cropped.bbox), image[20:70, 10:110])
    assert read_image(whole.path).shape == image.shape
    data = (tmp_path / "img" / "p.png").read_bytes()
    assert content_key(data, cropped.bbox) != content_key(data)


def test_unreadable_image_in_dataset_is_skipped(data, capsys):
    (data / "db" / "ind2" / "corrupt.png").write_bytes(b"\x89PNG garbage")
    code, out, err = run_cli(capsys, "evaluate", data / "db", "--output", data / "eval",
                             "--cache-dir", data / "store", *TINY)
    assert code == 0, err
    assert "corrupt.png" in err and "warning" in err
    report = json.loads((data / "eval" / "report.json").read_text())
    assert report["num_queries"] == 6  # the corrupt file is not among them
    assert "1 skipped" in out


# ----------------------------------------------------------------------------- feature store
def test_store_round_trip(data, caplog):
    store_dir = data / "store"
    config = tiny_config()
    first = extract.main(data / "db", config, cache_dir=store_dir, progress=False)
    assert (first.extracted, first.loaded) == (6, 0)
    caplog.set_level(logging.INFO, logger="wbia_lightglue")
    second = extract.main(data / "db", config, cache_dir=store_dir, progress=False)
    assert (second.extracted, second.loaded) == (0, 6)
    assert "6 loaded" in caplog.text and "0 extracted" in caplog.text
    stored = FeatureStore(store_dir).features([(data / "db" / "ind1" / "a.png", None)], config, progress=False)[0][0]
    fresh = extract_one(data / "db" / "ind1" / "a.png", config)
    assert np.array_equal(stored["keypoints"], fresh["keypoints"])
    assert np.array_equal(stored["descriptors"], fresh["descriptors"])

    other = extract.main(data / "db", config.replace(max_num_keypoints=96), cache_dir=store_dir, progress=False)
    assert (other.extracted, other.loaded) == (6, 0)  # another feature fingerprint: nothing reused

    cv2.imwrite(str(data / "db" / "ind2" / "a.png"), textured_chip(999))  # edit one photo in place
    edited = extract.main(data / "db", config, cache_dir=store_dir, progress=False)
    assert (edited.extracted, edited.loaded) == (1, 5)


def test_corrupt_store_entry_is_re_extracted(data, caplog):
    config, path = tiny_config(), data / "db" / "ind1" / "a.png"
    store = FeatureStore(data / "store")
    _, keys, report = store.features([(path, None)], config, progress=False)
    assert report.extracted == 1
    store.entry_path(keys[0], config.feature_fingerprint).write_bytes(b"truncated")
    feats, _, again = store.features([(path, None)], config, progress=False)
    assert (again.extracted, again.loaded) == (1, 0) and len(feats[0]["keypoints"]) > 0
    assert "unreadable" in caplog.text


def extract_one(path, config):
    from wbia_lightglue.core import extract_features

    return extract_features([cv2.imread(str(path))], config, progress=False)[0]


# ----------------------------------------------------------------------------- commands
def test_identify_ranks_the_right_individual_and_reuses_features(data, capsys):
    store = data / "store"
    code, out, err = run_cli(capsys, "identify", data / "query-ind2.png", data / "db", "--cache-dir", store,
                             "--json", data / "r.json", "--csv", data / "r.csv", "--top", "2", *TINY)
    assert code == 0, err
    assert "features: 7 extracted, 0 loaded" in out
    lines = out.splitlines()
    table = lines[lines.index(next(line for line in lines if line.strip().startswith("rank"))) + 1]
    assert table.split()[:2] == ["1", "ind2"]
    ranking = json.loads((data / "r.json").read_text())
    assert [c["individual"] for c in ranking["candidates"]][0] == "ind2" and len(ranking["candidates"]) == 2
    assert (data / "r.csv").read_text().splitlines()[1].startswith("1,ind2,")

    result = identify.main(data / "query-ind10.png", data / "db", tiny_config(), cache_dir=store, progress=False)
    assert (result.extracted, result.loaded) == (1, 6)  # only the new query is extracted
    assert result.candidates[0].individual == "ind10"
    assert result.candidates[0].score > 2 * result.candidates[1].score


def test_identify_leaves_the_query_out_of_its_own_database(data):
    result = identify.main(data / "db" / "ind1" / "a.png", data / "db", tiny_config(),
                           cache_dir=data / "store", progress=False)
    assert result.candidates[0].individual == "ind1"
    assert result.candidates[0].annotation == "ind1/b.png"  # not a.png matched with itself


def test_evaluate_writes_report_and_cmc(data, capsys):
    out_dir = data / "eval"
    code, out, err = run_cli(capsys, "evaluate", data / "db", "--output", out_dir, "--cache-dir", data / "store",
                             "--limit-individuals", "2", *TINY)
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["num_queries"] == 4 and report["num_answerable"] == 4
    assert {q["label"] for q in report["queries"]} == {"ind1", "ind2"}
    assert report["cmc"]["1"] == 1.0
    assert report["meta"]["limit_individuals"] == 2
    assert cv2.imread(str(out_dir / "cmc.png")) is not None
    assert "100.0%" in out


def test_evaluate_group_by_restricts_comparisons(tmp_path):
    """Same photos, but every individual's two views in different groups: nothing is answerable."""
    write_folder_dataset(tmp_path)
    rows = ["path,individual,side"]
    for name in INDIVIDUALS:
        rows += [f"db/{name}/a.png,{name},left", f"db/{name}/b.png,{name},right"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")

    report = evaluate.main(tmp_path / "labels.csv", tmp_path / "eval", tiny_config(), group_by="side",
                                   cache_dir=tmp_path / "store", progress=False)
    assert report.num_answerable == 0 and report.num_skipped == 6


def test_match_writes_png(data, capsys):
    code, out, err = run_cli(capsys, "match", data / "db" / "ind1" / "a.png", data / "query-ind1.png",
                             "--output", data / "m.png", "--cache-dir", data / "store", *TINY)
    assert code == 0, err
    score, matches = float(out.split()[1]), int(out.split()[3])
    assert matches > 20 and score > 5
    canvas = cv2.imread(str(data / "m.png"))
    assert canvas is not None and canvas.shape[1] > 2 * 320


# ----------------------------------------------------------------------------- demo
def test_synthetic_population_is_deterministic_and_distinct():
    first = synthetic.make_individual(0)
    assert np.array_equal(first.coat, synthetic.make_individual(0).coat)
    assert not np.array_equal(first.coat, synthetic.make_individual(3).coat)  # same pattern kind, other animal
    photos = [synthetic.photograph(first, k) for k in range(2)]
    assert photos[0].shape == synthetic.PHOTO + (3,)
    assert np.array_equal(photos[0], synthetic.photograph(first, 0))
    assert not np.array_equal(photos[0], photos[1])


@pytest.mark.slow
def test_demo_runs_end_to_end(demo_run):
    code, out, err, folder = demo_run  # the session's one demo run (conftest.py)
    assert code == 0, err
    assert "demo finished: Rank-1" in out.splitlines()[-1]
    report = json.loads((folder / "evaluation" / "report.json").read_text())
    assert report["num_answerable"] == 18 and report["cmc"]["1"] >= 0.8
    pictures = list((folder / "matches").glob("*.png"))
    assert len(pictures) == 3 and all(cv2.imread(str(p)) is not None for p in pictures)
    assert f"report: {folder / 'report.html'} (6 of 18 photos drawn with their top 3 candidates" in out


# ----------------------------------------------------------------------------- two-stage mode
def test_identify_two_stage_uses_the_persisted_index_and_the_engines_fusion(data, capsys, monkeypatch):
    from wbia_lightglue.engine import fusion, scoring
    from wbia_lightglue.engine.stage1 import Stage1Index

    store = data / "store"
    matched = []
    real = scoring.match_scores
    monkeypatch.setattr("wbia_lightglue.pipeline.files.match_scores",
                        lambda q, db, *a, **kw: matched.append(len(db)) or real(q, db, *a, **kw))
    code, out, err = run_cli(capsys, "identify", data / "query-ind2.png", data / "db", "--cache-dir", store,
                             "--shortlist", "2", "--json", data / "r.json", *TINY)
    assert code == 0, err
    assert matched == [2]  # LightGlue ran on the shortlist only
    ranking = json.loads((data / "r.json").read_text())["candidates"]
    assert ranking[0]["individual"] == "ind2"
    indexes = list((store / "shortlist").rglob("*.npz"))
    assert len(indexes) == 1  # persisted beside the feature store, under the stage-1 fingerprint
    config = tiny_config().replace(shortlist_k=2)
    assert indexes[0].parent.name == config.shortlist_fingerprint
    assert len(Stage1Index.load(indexes[0], config)) == 6

    # the same numbers from the engine by hand: stage 1 from the saved index, LightGlue, engine.fusion.fuse
    from wbia_lightglue.data.dataset import Annotation, load_dataset
    from wbia_lightglue.data.store import FeatureStore, annotation_features

    fs = FeatureStore(store)
    db = load_dataset(data / "db")
    q = Annotation(data / "query-ind2.png", "?")
    q_s1 = annotation_features([q], fs, config, progress=False, kind="stage1")
    db_s1 = annotation_features(db.annotations, fs, config, progress=False, kind="stage1")
    stage1 = Stage1Index.load(indexes[0], config).search(q_s1.features[0]).ranked(db_s1.keys)
    top = fusion.shortlist_positions(stage1, 2)
    q_al = annotation_features([q], fs, config, progress=False).features[0]
    db_al = annotation_features(db.annotations, fs, config, progress=False).features
    lg = np.zeros(len(stage1))
    lg[top] = real(q_al, [db_al[p] for p in top], config)
    inside = np.isin(np.arange(len(stage1)), top)
    fused = fusion.fuse(lg, stage1, inside, config)
    best = {}
    for annot, score in zip(db.annotations, fused):
        best[annot.individual] = max(best.get(annot.individual, -np.inf), score)
    assert {c["individual"]: c["score"] for c in ranking} == pytest.approx(best)
    assert [c["score"] for c in ranking] == sorted(best.values(), reverse=True)

    # a new photo in the database: the index is updated incrementally, not rebuilt
    cv2.imwrite(str(data / "db" / "ind1" / "c.png"), cv2.imread(str(data / "query-ind1.png")))
    result = identify.main(data / "query-ind10.png", data / "db", config, cache_dir=store, progress=False)
    assert result.candidates[0].individual == "ind10"
    assert len(Stage1Index.load(indexes[0], config)) == 7


def test_evaluate_two_stage_fuses_and_hotspotter_source_is_refused(data, capsys):
    out_dir = data / "eval"
    code, out, err = run_cli(capsys, "evaluate", data / "db", "--output", out_dir, "--cache-dir", data / "store",
                             "--shortlist", "2", *TINY)
    assert code == 0, err
    report = json.loads((out_dir / "report.json").read_text())
    assert report["num_answerable"] == 6 and report["cmc"]["1"] == 1.0
    assert report["meta"]["config"]["shortlist_k"] == 2

    from wbia_lightglue.data.dataset import load_dataset
    from wbia_lightglue.evaluation.datasets import score_dataset

    config = tiny_config().replace(shortlist_k=2)
    scored = score_dataset(load_dataset(data / "db"), config, cache_dir=data / "store", progress=False)
    matched = ~np.isnan(scored.lightglue)
    assert (matched.sum(axis=1) == 2).all()  # two LightGlue pairs per query
    assert np.isfinite(scored.scores[~np.eye(6, dtype=bool)]).all()

    bad = data / "hs.json"
    bad.write_text(json.dumps({"shortlist_k": 2, "shortlist_source": "hotspotter"}))
    code, _, err = run_cli(capsys, "evaluate", data / "db", "--config", bad, "--cache-dir", data / "store", *TINY)
    assert code == 2
    assert_one_error_line(err, "shortlist_source", "hotspotter", "WBIA")


def test_evaluate_with_no_options_is_two_stage_and_calibrated(tmp_path, capsys):
    """The built-in defaults (2048 keypoints, shortlist 15): fused scores and the shipped calibration's P."""
    photos = Path(__file__).parent / "data" / "photos"
    for scene, names in (("dsc", ("DSC_0410.JPG", "DSC_0411.JPG")), ("sacre_coeur", ("sacre_coeur1.jpg",
                                                                                     "sacre_coeur2.jpg"))):
        (tmp_path / "db" / scene).mkdir(parents=True)
        for name in names:
            shutil.copy(photos / name, tmp_path / "db" / scene / name)
    code, out, err = run_cli(capsys, "evaluate", tmp_path / "db", "--output", tmp_path / "eval", "--cache-dir",
                             tmp_path / "store", "-q", "--report-queries", "1")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["meta"]["mode"] == "two_stage" and report["meta"]["config"]["shortlist_k"] == 15
    check = report["meta"]["calibration"]
    assert check is not None and check["method"] == "logistic" and "nyala" in check["fitted_on"]
    assert 0 <= check["brier"] <= 1 and check["pairs"] == 12  # every directed pair of the two scenes
    assert report["cmc"]["1"] == 1.0
    assert "two-stage; calibrated (logistic)" in out
