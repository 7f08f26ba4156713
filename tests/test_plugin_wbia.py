"""The WBIA plugin against a real wildbook-ia 4.0.4: a new database in tmp with real photos.

One session-scoped database holds, per individual, two views of a project-made textured scene
(tests/images.py), two scenes of real photos (tests/data/photos), plus (when ../shared/data is present)
same-side photos of three nyala individuals. Extra annotations: an unnamed one, a single sighting, and one
whose image file is corrupted after it was added.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from images import textured_chip, warp

from wbia_lightglue import core
from wbia_lightglue.engine import config as engine_config
from wbia_lightglue.wbia_plugin import compat as _wbia_compat

pytestmark = pytest.mark.wbia

_wbia_compat.apply()
with _wbia_compat.hidden_argv():  # utool parses sys.argv at import and misreads pytest's flags
    wbia = pytest.importorskip("wbia")

from wbia_lightglue import _plugin  # noqa: E402  (registered by `import wbia_lightglue`'s hook)
from wbia_lightglue.wbia_plugin import configs as plugin_configs  # noqa: E402
from wbia_lightglue.wbia_plugin import features as plugin_features  # noqa: E402
from wbia_lightglue.wbia_plugin import request as plugin_request  # noqa: E402
from wbia_lightglue.wbia_plugin.state import STATE as PLUGIN_STATE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PHOTOS = ROOT / "tests" / "data" / "photos"  # LightGlue's four sample photos (NOTICE there)
# exhaustive (raw LightGlue sums) unless a test says otherwise; the default two-stage has its own test
SMALL = {"max_num_keypoints": 256, "image_size": 320, "compile": False, "device": "cpu", "shortlist_k": 0}
SPECIES = "zebra_plains"


# ============================================================================ fixtures
@pytest.fixture(scope="session")
def config_dir(tmp_path_factory):
    """A config directory with a small default config.json and another file; core points at it."""
    root = tmp_path_factory.mktemp("v_config")
    (root / "config.json").write_text(json.dumps(SMALL))
    (root / "other.json").write_text(json.dumps({**SMALL, "score": "match_count"}))
    outside = tmp_path_factory.mktemp("outside") / "evil.json"
    outside.write_text(json.dumps(SMALL))
    (root / "escape.json").symlink_to(outside)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine_config, "DEFAULT_CONFIG_DIR", root)
        mp.setattr(engine_config, "DEFAULT_CONFIG_PATH", root / "config.json")
        yield root


def _write(path: Path, image: np.ndarray) -> str:
    assert cv2.imwrite(str(path), image)
    return str(path)


def _nyala_picks(per_individual: int = 2, individuals: int = 3):
    """Same-side (left) photos of the first individuals with at least two left sightings."""
    labels = SHARED / "nyala" / "labels.csv"
    if not labels.is_file():
        return []
    grouped = {}
    with labels.open() as fh:
        for row in csv.DictReader(fh):
            if row["side"] == "left":
                grouped.setdefault(row["individual"], {}).setdefault(row["sighting"], row["path"])
    chosen = [(ind, list(paths.values())[:per_individual]) for ind, paths in sorted(grouped.items())
              if len(paths) >= per_individual][:individuals]
    return [(f"nyala_{ind}", str(SHARED / "nyala" / p)) for ind, paths in chosen for p in paths]


@pytest.fixture(scope="session")
def db(tmp_path_factory, config_dir):
    """The test database: ``ibs`` plus aids by role."""
    images = tmp_path_factory.mktemp("images")
    dbdir = tmp_path_factory.mktemp("db") / "lightglue_testdb"
    entries = []  # (name or None, path, role)
    for k in range(3):
        chip = textured_chip(100 + k)
        entries.append((f"made_{k}", _write(images / f"made_{k}_a.png", chip), f"made_{k}_a"))
        entries.append((f"made_{k}", _write(images / f"made_{k}_b.png", warp(chip, angle=6 + k)), f"made_{k}_b"))
    entries.append((None, _write(images / "unnamed.png", textured_chip(200)), "unnamed"))
    entries.append(("single", _write(images / "single.png", textured_chip(201)), "single"))
    entries.append(("corrupt", _write(images / "corrupt.png", textured_chip(202)), "corrupt"))
    for stem, name in (("sacre_coeur1", "sacre"), ("sacre_coeur2", "sacre"), ("DSC_0410", "dsc"), ("DSC_0411", "dsc")):
        path = next(PHOTOS.glob(stem + ".*"))
        entries.append((name, str(path), stem))
    for name, path in _nyala_picks():
        entries.append((name, path, Path(path).stem + "_" + name))

    with _wbia_compat.hidden_argv():
        ibs = wbia.opendb(dbdir=str(dbdir), allow_newdir=True)
    gids = ibs.add_images([path for _, path, _ in entries])
    assert None not in gids
    sizes = ibs.get_image_sizes(gids)
    aids = ibs.add_annots(gids, bbox_list=[(0, 0, w, h) for w, h in sizes], species_list=[SPECIES] * len(gids))
    named = [(aid, name) for aid, (name, _, _) in zip(aids, entries) if name is not None]
    ibs.set_annot_names([a for a, _ in named], [n for _, n in named])
    role = {r: aid for aid, (_, _, r) in zip(aids, entries)}
    # Corrupt the database's own copy of one image after it was added.
    Path(ibs.get_image_paths([ibs.get_annot_gids(role["corrupt"])])[0]).write_bytes(b"not an image at all")
    yield {"ibs": ibs, "aids": list(aids), "role": role, "dbdir": dbdir, "entries": entries}
    ibs.close() if hasattr(ibs, "close") else None


@pytest.fixture
def extraction_spy(monkeypatch):
    """Counts the annotations that reach core.extract_features."""
    calls = []
    original = core.extract_features

    def spy(chips, *args, **kwargs):
        calls.append(list(kwargs.get("keys") or []))
        return original(chips, *args, **kwargs)

    monkeypatch.setattr(core, "extract_features", spy)
    return calls


def _made(db):
    return [db["role"][f"made_{k}_{v}"] for k in range(3) for v in "ab"]


# ============================================================================ registration and features
def test_tables_and_methods_registered(db):
    ibs = db["ibs"]
    assert {"LightGlueFeatures", "LightGlue"} <= set(ibs.depc_annot.tablenames)
    assert ibs.depc_annot.requestclass_dict["LightGlue"] is _plugin.LightGlueRequest
    assert ibs.depc_annot.configclass_dict["LightGlue"]().get_config_name() == "LightGlue"
    for name in ("lightglue_compute_features", "lightglue_features", "lightglue_match_scores", "lightglue_evaluate"):
        assert callable(getattr(ibs, name))


def test_features_computed_once_then_read_from_sqlite(db, extraction_spy):
    ibs = db["ibs"]
    aids = _made(db)[:4]
    table = ibs.depc_annot["LightGlueFeatures"]
    before = len(table._get_all_rowids())
    core.get_feature_cache(core.load_config()).clear()
    first = ibs.lightglue_features(aids)
    assert sorted(a for call in extraction_spy for a in call) == sorted(aids)
    assert len(table._get_all_rowids()) == before + len(aids)
    assert all(len(f["keypoints"]) > 50 and f["descriptors"].shape[1] == 128 for f in first)

    # Second call: the in-memory cache; after clearing it: SQLite. Never extracted again.
    ibs.lightglue_features(aids)
    core.get_feature_cache(core.load_config()).clear()
    again = ibs.lightglue_features(aids)
    assert sum(len(call) for call in extraction_spy) == len(aids)
    for a, b in zip(first, again):
        np.testing.assert_allclose(a["keypoints"], b["keypoints"])
        np.testing.assert_allclose(a["descriptors"], b["descriptors"])
        np.testing.assert_array_equal(a["image_size"], b["image_size"])
    assert len(table._get_all_rowids()) == before + len(aids)

    # use_depc=False computes without SQLite; the same features.
    core.get_feature_cache(core.load_config()).clear()
    direct = ibs.lightglue_features(aids[:1], use_depc=False)
    np.testing.assert_allclose(direct[0]["keypoints"], first[0]["keypoints"], atol=1e-4)
    assert len(table._get_all_rowids()) == before + len(aids)


def test_bad_image_gets_empty_features_and_a_warning(db, caplog):
    ibs = db["ibs"]
    bad, good = db["role"]["corrupt"], db["role"]["single"]
    with caplog.at_level(logging.WARNING, logger="wbia_lightglue"):
        feats = ibs.lightglue_compute_features([good, bad])
    assert len(feats[0]["keypoints"]) > 0
    assert len(feats[1]["keypoints"]) == 0
    assert any(f"annotation {bad}" in r.getMessage() for r in caplog.records)


# ============================================================================ scores and queries
def test_match_scores_rank_true_match_first(db):
    ibs = db["ibs"]
    made = _made(db)
    extra = [db["role"][r] for r in ("unnamed", "single", "corrupt")]
    for k in range(3):
        qaid, true = made[2 * k], made[2 * k + 1]
        daids = [a for a in made + extra if a != qaid]
        scores = ibs.lightglue_match_scores(qaid, daids)
        assert len(scores) == len(daids)
        assert daids[int(np.argmax(scores))] == true
        assert scores[daids.index(db["role"]["corrupt"])] == 0.0
    # the query itself is never matched: 0
    assert ibs.lightglue_match_scores(made[0], [made[0], made[1]])[0] == 0.0


def test_real_photos_rank_true_view_first(db):
    role = db["role"]
    ibs = db["ibs"]
    # The two DSC views match at 256 keypoints / 320 px; the two Sacre-Coeur views (a large change of
    # viewpoint and scale) need more keypoints, so here they serve as distractors.
    photos = [role[r] for r in ("sacre_coeur1", "sacre_coeur2", "DSC_0410", "DSC_0411")]
    for query, true in (("DSC_0410", "DSC_0411"), ("DSC_0411", "DSC_0410")):
        daids = [aid for aid in photos if aid != role[query]]
        scores = ibs.lightglue_match_scores(role[query], daids)
        assert daids[int(np.argmax(scores))] == role[true], scores
        assert max(scores) > 5 * sorted(scores)[-2], scores


def test_query_chips_returns_annot_matches_with_right_top_name(db, extraction_spy):
    ibs = db["ibs"]
    made = _made(db)
    extra = [db["role"][r] for r in ("unnamed", "single", "corrupt")]
    qaids = [made[0], made[2]]
    daids = made + extra
    cms = ibs.query_chips(qaids, daids, cfgdict={"pipeline_root": "LightGlue"})
    assert [cm.qaid for cm in cms] == qaids
    for cm in cms:
        assert isinstance(cm, wbia.AnnotMatch)
        assert cm.qaid not in list(cm.daid_list)  # never matched with itself
        assert len(cm.daid_list) == len(daids) - 1
        assert cm.get_top_nids()[0] == ibs.get_annot_nids(cm.qaid)
        assert cm.name_score_list.max() == cm.annot_score_list.max()  # name score = max (default)
        assert cm.annot_score_list[list(cm.daid_list).index(db["role"]["corrupt"])] == 0.0

    # The same pairs again through the depc request: read back, nothing recomputed.
    table = ibs.depc_annot["LightGlue"]
    rows = len(table._get_all_rowids())
    extracted = sum(len(c) for c in extraction_spy)
    cms2 = ibs.depc_annot.new_request("LightGlue", qaids, daids, {}).execute()
    assert len(table._get_all_rowids()) == rows
    assert sum(len(c) for c in extraction_spy) == extracted
    np.testing.assert_allclose(cms2[0].annot_score_list, cms[0].annot_score_list)

    # name_score='sum' changes how name scores aggregate, not the annotation scores.
    cm_sum = ibs.depc_annot.new_request("LightGlue", qaids[:1], daids, {"name_score": "sum"}).execute()[0]
    nid = ibs.get_annot_nids(made[1])
    in_name = [s for s, n in zip(cm_sum.annot_score_list, cm_sum.dnid_list) if n == nid]
    assert cm_sum.name_score_list[list(cm_sum.unique_nids).index(nid)] == pytest.approx(sum(in_name))


def test_request_computes_each_needed_pair_once_batched_by_query(db, monkeypatch):
    ibs = db["ibs"]
    made = _made(db)
    calls = []
    original = core.match_pairs

    def spy(query, database, *args, **kwargs):
        calls.append(len(database))
        return original(query, database, *args, **kwargs)

    monkeypatch.setattr(core, "match_pairs", spy)
    cfg = {"config_path": str(engine_config.DEFAULT_CONFIG_DIR / "other.json")}  # new config: nothing stored yet
    cms = ibs.depc_annot.new_request("LightGlue", made[:3], made, cfg).execute()
    assert len(cms) == 3
    assert sorted(calls) == [5, 5, 5]  # one batched call per query, each pair once, no self pair
    ibs.depc_annot.new_request("LightGlue", made[:3], made, cfg).execute()
    assert sorted(calls) == [5, 5, 5]
    with pytest.raises(ValueError, match="outside the config directory"):  # requests come from the web too
        ibs.depc_annot.new_request("LightGlue", made[:1], made, {"config_path": "/etc/passwd"})


def _wbia_render_config(draw_matches: bool, draw_heatmask: bool, view_orientation: str = "horizontal") -> dict:
    """The render options WBIA 4.0.4's ensure_review_image passes to render_single_result (web/apis_query.py)."""
    return {"dpi": 300, "overlay": True, "draw_fmatches": True, "draw_fmatch": draw_matches,
            "show_matches": draw_matches, "show_ell": draw_matches, "show_lines": draw_matches, "show_ori": False,
            "heatmask": draw_heatmask, "vert": view_orientation == "vertical", "show_aidstr": False,
            "show_name": False, "show_exemplar": False, "show_num_gt": False, "show_timedelta": False,
            "show_name_rank": False, "show_score": False, "show_annot_score": False, "show_name_score": False,
            "draw_lbl": False, "draw_border": False, "white_background": True}


def test_review_images_follow_wbia_render_options_and_reuse_the_jobs_matches(db, monkeypatch):
    ibs = db["ibs"]
    made = _made(db)
    calls = []
    original = core.match_pairs
    monkeypatch.setattr(core, "match_pairs", lambda q, d, *a, **k: calls.append(len(d)) or original(q, d, *a, **k))
    core.get_match_cache().clear()
    cfg = {"config_path": str(engine_config.DEFAULT_CONFIG_DIR / "other.json"), "name_score": "sum"}  # not stored
    request = ibs.depc_annot.new_request("LightGlue", [made[0]], [made[1], made[2], made[4]], cfg)
    cm = request.execute()[0]
    assert calls == [3]  # the scoring pass: one batched call
    versions = {"matches": (True, False), "heatmask": (False, True), "clean": (False, False)}
    images = {v: request.render_single_result(cm, made[1], **_wbia_render_config(*flags))
              for v, flags in versions.items()}
    assert calls == [3]  # three review images, no LightGlue run: the scoring pass's matches
    chips = ibs.get_annot_chips([made[0], made[1]])
    for image in images.values():
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
        assert image.shape[1] > chips[0].shape[1] + chips[1].shape[1]  # side by side (view 'horizontal')
    clean = images["clean"].astype(int)
    assert np.abs(images["matches"].astype(int) - clean).mean() > 1  # lines drawn over the chips
    assert np.abs(images["heatmask"].astype(int) - clean).mean() > 1  # heat blended into the chips
    hsv = {v: cv2.cvtColor(images[v], cv2.COLOR_BGR2HSV)[..., 1].mean() for v in images}
    assert hsv["heatmask"] > hsv["clean"] + 5 and hsv["matches"] > hsv["clean"]
    stacked = request.render_single_result(cm, made[1], **_wbia_render_config(False, True, "vertical"))
    side_by_side = images["heatmask"]
    assert stacked.shape[0] > stacked.shape[1] and side_by_side.shape[1] > side_by_side.shape[0]  # 'vert': stacked
    # A pair this process did not score (here: the cache emptied) is matched once for all its versions.
    core.get_match_cache().clear()
    for flags in ((True, False), (False, True), (False, False)):
        request.render_single_result(cm, made[2], **_wbia_render_config(*flags))
    assert calls == [3, 1]


def test_review_image_names_change_with_the_query(db):
    """WBIA names review image files after the request's cfgstr (and qaid, daid): an edited query needs a new name."""
    ibs = db["ibs"]
    made = _made(db)
    cfgstrs = {ibs.depc_annot.new_request("LightGlue", [q], made[2:], {}).get_cfgstr() for q in made[:2]}
    assert len(cfgstrs) == 2


def test_query_without_a_chip_fails_the_request_with_the_reason(db):
    ibs = db["ibs"]
    corrupt = db["role"]["corrupt"]
    with pytest.raises(_plugin.QueryChipError, match=rf"query annotation {corrupt} .*missing or unreadable"):
        ibs.query_chips([corrupt], _made(db), cfgdict={"pipeline_root": "LightGlue"})


def test_review_version_from_wbia_render_options():
    version = plugin_request.review_version
    assert version(_wbia_render_config(False, True)) == "heatmask"
    assert version(_wbia_render_config(True, False)) == "matches"
    assert version(_wbia_render_config(False, False)) == "clean"
    assert version({}) == "matches"  # called without options (scripts): the correspondences
    assert version({"show_matches": False}) == "clean"


def test_evaluate_known_rank1_with_unnamed_and_single_sighting(db, caplog):
    ibs = db["ibs"]
    aids = _made(db) + [db["role"][r] for r in ("unnamed", "single", "corrupt")]
    with caplog.at_level(logging.INFO, logger="wbia_lightglue"):
        rank1 = ibs.lightglue_evaluate(aids, ranks=(1, 5))
    assert rank1 == 1.0
    text = "\n".join(r.getMessage() for r in caplog.records)
    # 6 answerable (3 pairs); unnamed, single and corrupt (single sighting) skipped
    assert "answerable queries 6 of 9 (3 skipped)" in text
    assert "mAP" in text


def test_evaluate_nyala(db):
    nyala = [aid for aid, (name, _, _) in zip(db["aids"], db["entries"]) if name and name.startswith("nyala_")]
    if not nyala:
        pytest.skip("../shared/data/nyala is absent")
    ibs = db["ibs"]
    rank1 = ibs.lightglue_evaluate(nyala, ranks=(1,))
    # real animals: accuracy is the benchmark's job; here the ibs method must agree with the protocol
    # applied to its own pairwise scores (each unordered pair once, mirrored)
    from wbia_lightglue.evaluation.protocol import evaluate_scores

    n = len(nyala)
    scores = np.full((n, n), np.nan)
    for i in range(n - 1):
        row = ibs.lightglue_match_scores(nyala[i], nyala[i + 1:])
        scores[i, i + 1:] = row
        scores[i + 1:, i] = row
    report = evaluate_scores(scores, ibs.get_annot_nids(nyala), ranks=(1,))
    assert report.num_answerable == n
    assert rank1 == pytest.approx(report.rank1)


# ============================================================================ fresh features
def _new_annot(db, tmp_path, seed: int) -> int:
    """A new annotation on its own project-made image (nothing computed for it yet)."""
    ibs = db["ibs"]
    gid = ibs.add_images([_write(tmp_path / f"fresh_{seed}.png", textured_chip(seed))])[0]
    w, h = ibs.get_image_sizes([gid])[0]
    return ibs.add_annots([gid], bbox_list=[(0, 0, w, h)], species_list=[SPECIES])[0]


def _halve_bbox(ibs, aid: int) -> None:
    w, h = ibs.get_image_sizes([ibs.get_annot_gids(aid)])[0]
    ibs.set_annot_bboxes([aid], [(0, 0, w // 2, h)])  # another aspect ratio: another chip size


def _chip_size(ibs, aid: int) -> tuple:
    height, width = ibs.get_annot_chips([aid])[0].shape[:2]
    return (width, height)


def _stored_rowid(ibs, aid: int, config):
    return ibs.depc_annot.get_rowids("LightGlueFeatures", [aid], config=plugin_configs.features_depc_config(config),
                                     ensure=False)[0]


def test_bbox_change_gives_the_annotation_a_new_feature_key(db, extraction_spy):
    ibs = db["ibs"]
    aid = db["role"]["single"]
    config = core.load_config()
    cache = core.get_feature_cache(config)
    before = ibs.lightglue_features([aid])[0]
    key = plugin_features.feature_keys(ibs, [aid])[0]
    assert key == (ibs.get_annot_uuids([aid])[0], ibs.get_annot_visual_uuids([aid])[0])
    assert cache.get(key, config.feature_fingerprint) is not None
    _halve_bbox(ibs, aid)
    new_key = plugin_features.feature_keys(ibs, [aid])[0]
    assert new_key[0] == key[0] and new_key[1] != key[1]  # WBIA gave the edited annotation a new visual UUID
    assert cache.get(key, config.feature_fingerprint) is None  # and the old entry was let go (memory)
    extraction_spy.clear()
    after = ibs.lightglue_features([aid])[0]
    assert [aid] in extraction_spy  # recomputed from the new chip, not read back from SQLite
    assert tuple(after["image_size"]) != tuple(before["image_size"])
    stored = ibs.depc_annot.get("LightGlueFeatures", [aid], "image_size",
                                config=plugin_configs.features_depc_config(config))[0]
    np.testing.assert_array_equal(stored, after["image_size"])


def test_image_unreadable_for_a_moment_is_retried_by_the_next_request(db, tmp_path):
    ibs = db["ibs"]
    config = core.load_config()
    aid = _new_annot(db, tmp_path, 300)
    twin_chip = textured_chip(300)
    twin_chip[0, 0] = 255 - twin_chip[0, 0]  # another file (WBIA keys images by content), the same animal
    twin_gid = ibs.add_images([_write(tmp_path / "twin.png", twin_chip)])[0]
    w, h = ibs.get_image_sizes([twin_gid])[0]
    twin = ibs.add_annots([twin_gid], bbox_list=[(0, 0, w, h)], species_list=[SPECIES])[0]
    pairs = ibs.depc_annot["LightGlue"]
    stored = Path(ibs.get_image_paths([ibs.get_annot_gids(aid)])[0])
    away = stored.with_name(stored.name + ".away")
    stored.rename(away)
    try:
        feats = ibs.lightglue_features([aid])[0]
        rows = len(pairs._get_all_rowids())
        cm = ibs.depc_annot.new_request("LightGlue", [twin], [aid], {}).execute()[0]
        assert cm.annot_score_list.tolist() == [0.0]
        assert len(pairs._get_all_rowids()) == rows  # the 0 of that moment is not stored either
    finally:
        away.rename(stored)
    assert len(feats["keypoints"]) == 0 and "missing or unreadable" in feats["error"] and str(stored) in feats["error"]
    assert _stored_rowid(ibs, aid, config) is None  # nothing pinned in SQLite ...
    key = plugin_features.feature_keys(ibs, [aid])[0]
    assert core.get_feature_cache(config).get(key, config.feature_fingerprint) is None  # ... nor in memory
    again = ibs.lightglue_features([aid])[0]  # the image is back: computed and stored now
    assert len(again["keypoints"]) > 50 and "error" not in again
    assert _stored_rowid(ibs, aid, config) is not None
    cm = ibs.depc_annot.new_request("LightGlue", [twin], [aid], {}).execute()[0]
    assert cm.annot_score_list[0] > 50 and len(pairs._get_all_rowids()) == rows + 1


def test_empty_rows_stored_by_older_versions_are_computed_again(db, tmp_path, monkeypatch):
    ibs = db["ibs"]
    config = core.load_config()
    aid = _new_annot(db, tmp_path, 303)
    # What older versions stored for an unreadable image: a row of empty features of a (0, 0) chip.
    with monkeypatch.context() as mp:  # the feature table's computation, as older versions ran it
        mp.setattr(plugin_features, "compute_features",
                   lambda ibs, aids, cfg: [core.empty_features(cfg) for _ in aids])
        assert len(ibs.lightglue_features([aid])[0]["keypoints"]) == 0
    core.get_feature_cache(config).clear()
    feats = ibs.lightglue_features([aid])[0]
    assert len(feats["keypoints"]) > 50
    stored = ibs.depc_annot.get("LightGlueFeatures", [aid], "keypoints",
                                config=plugin_configs.features_depc_config(config))[0]
    assert len(stored) == len(feats["keypoints"])


def test_an_edit_during_extraction_is_not_undone_by_the_late_write(db, tmp_path, monkeypatch):
    ibs = db["ibs"]
    config = core.load_config()
    aid = _new_annot(db, tmp_path, 301)
    old_key = plugin_features.feature_keys(ibs, [aid])[0]
    old_chip = _chip_size(ibs, aid)
    original = core.extract_features
    edited = []

    def extract_then_edit(chips, *args, **kwargs):
        out = original(chips, *args, **kwargs)
        if aid in (kwargs.get("keys") or []) and not edited:
            _halve_bbox(ibs, aid)  # as another process would, while this one still extracts the old chip
            edited.append(True)
        return out

    monkeypatch.setattr(core, "extract_features", extract_then_edit)
    first = ibs.lightglue_features([aid])[0]
    assert edited and first.get("stale")
    # The old chip's features reached neither SQLite (written after WBIA's deletion) nor memory.
    assert _stored_rowid(ibs, aid, config) is None
    new_key = plugin_features.feature_keys(ibs, [aid])[0]
    cache = core.get_feature_cache(config)
    assert cache.get(old_key, config.feature_fingerprint) is None
    assert cache.get(new_key, config.feature_fingerprint) is None
    fresh = ibs.lightglue_features([aid])[0]
    new_chip = _chip_size(ibs, aid)
    assert new_chip != old_chip
    assert tuple(first["image_size"]) == old_chip and tuple(fresh["image_size"]) == new_chip
    assert tuple(ibs.depc_annot.get("LightGlueFeatures", [aid], "image_size",
                                    config=plugin_configs.features_depc_config(config))[0]) == new_chip


WORKER = textwrap.dedent("""
    import json, sys
    import wbia_lightglue, wbia
    from wbia_lightglue import core
    ibs = wbia.opendb(dbdir=sys.argv[1])
    aid, other = int(sys.argv[2]), int(sys.argv[3])
    cache = core.get_feature_cache(core.load_config())
    for command in sys.stdin:
        if command.strip() != "features":
            break
        cached = len(cache)
        feats = ibs.lightglue_features([aid])[0]
        score = ibs.lightglue_match_scores(aid, [other])[0]
        print("RESULT " + json.dumps({"image_size": [int(v) for v in feats["image_size"]], "cached_before": cached,
                                      "score": score}), flush=True)
""")


def _result_line(proc, timeout: float = 300) -> dict:
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
    raise AssertionError(f"no result from the worker process (exit code {proc.poll()})")


def test_an_edit_in_one_process_is_never_served_stale_by_another(db, config_dir, tmp_path):
    """Two real processes on one database, as WBIA's web process and a job-engine worker: the worker has the
    annotation's features in memory; this process changes its bbox; the worker's next request uses the new chip."""
    ibs = db["ibs"]
    aid = _new_annot(db, tmp_path, 302)
    gid = ibs.get_annot_gids(aid)
    w, h = ibs.get_image_sizes([gid])[0]
    other = ibs.add_annots([gid], bbox_list=[(1, 0, w - 1, h)], species_list=[SPECIES])[0]  # nearly its twin
    assert other != aid
    ibs.lightglue_features([aid, other])
    old_chip = _chip_size(ibs, aid)
    env = {**os.environ, "WBIA_LIGHTGLUE_CONFIG_DIR": str(config_dir),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(db["dbdir"]), str(aid), str(other)], env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        proc.stdin.write("features\n")
        proc.stdin.flush()
        before = _result_line(proc)
        _halve_bbox(ibs, aid)  # here, in the "web" process
        expected = ibs.lightglue_features([aid])[0]
        expected_score = ibs.lightglue_match_scores(aid, [other])[0]
        proc.stdin.write("features\n")
        proc.stdin.flush()
        after = _result_line(proc)
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    new_chip = _chip_size(ibs, aid)
    assert tuple(before["image_size"]) == old_chip != new_chip
    assert after["cached_before"] >= 2  # the worker still held the old entries in memory ...
    assert tuple(after["image_size"]) == new_chip == tuple(int(v) for v in expected["image_size"])  # ... unused
    assert after["score"] == pytest.approx(expected_score, rel=1e-4)
    assert before["score"] > 50 and after["score"] != pytest.approx(before["score"], rel=1e-3)


# ============================================================================ web API
def _app(ibs):
    from wbia.control import controller_inject

    app = controller_inject.get_flask_app()
    app.ibs = ibs
    return app


def _uuid_json(u) -> dict:
    return {"__UUID__": str(u)}


def test_api_routes_test_client(db, config_dir):
    ibs = db["ibs"]
    made = _made(db)
    quuid, duuids = ibs.get_annot_uuids([made[0]])[0], ibs.get_annot_uuids(made[1:])
    client = _app(ibs).test_client()

    def call(route, method="get", **params):
        response = getattr(client, method)(f"/api/plugin/lightglue/{route}/",
                                           data=json.dumps(params), content_type="application/json")
        return response.status_code, json.loads(response.data)

    code, body = call("match/score", "post", query_annot_uuid=_uuid_json(quuid),
                      database_annot_uuid_list=[_uuid_json(u) for u in duuids])
    assert code == 200 and body["status"]["success"], body
    scores = body["response"]["score_list"]
    assert scores == pytest.approx(ibs.lightglue_match_scores(made[0], made[1:]))
    assert body["response"]["database_annot_uuid_list"][int(np.argmax(scores))] == str(duuids[0])

    code, body = call("config", config_path="other.json")
    assert code == 200 and body["response"]["config"]["score"] == "match_count"
    assert body["response"]["config"]["max_num_keypoints"] == 256
    # issue 21: successes name the config as the caller does, never the server's directory
    assert body["response"]["config_path"] == "other.json" and "config_dir" not in body["response"]
    code, body = call("config")
    assert body["response"]["config_path"] == "config.json", body["response"]["config_path"]
    code, body = call("match/score", "post", query_annot_uuid=_uuid_json(quuid),
                      database_annot_uuid_list=[_uuid_json(u) for u in duuids[:1]], config_path="other.json")
    assert code == 200 and body["response"]["config_path"] == "other.json"
    for route in ("config", "match/score"):
        params = {} if route == "config" else {"query_annot_uuid": _uuid_json(quuid),
                                               "database_annot_uuid_list": [_uuid_json(duuids[0])]}
        response = client.post(f"/api/plugin/lightglue/{route}/", data=json.dumps(params),
                               content_type="application/json") if route != "config" else \
            client.get("/api/plugin/lightglue/config/")
        text = response.data.decode()
        assert str(config_dir) not in text and str(config_dir.resolve()) not in text, (route, text[:500])

    code, body = call("feature", annot_uuid_list=[_uuid_json(u) for u in duuids])
    assert code == 200 and body["response"]["computed_list"] == [True] * len(duuids)

    # errors: unknown UUID, malformed list, bad UUID, config paths outside the directory
    code, body = call("match/score", query_annot_uuid=_uuid_json(uuid.uuid4()),
                      database_annot_uuid_list=[_uuid_json(u) for u in duuids])
    assert not body["status"]["success"] and "Unknown annot UUIDs" in body["status"]["message"]
    code, body = call("match/score", query_annot_uuid=_uuid_json(quuid), database_annot_uuid_list="abc")
    assert not body["status"]["success"] and "must be a JSON list" in body["status"]["message"]
    code, body = call("match/score", query_annot_uuid="not-a-uuid", database_annot_uuid_list=[])
    assert not body["status"]["success"] and "is not a UUID" in body["status"]["message"]
    for bad in ("../outside/evil.json", "/etc/passwd", "escape.json", "missing.json"):
        code, body = call("config", config_path=bad)
        assert code == 400 and not body["status"]["success"], (bad, body)
        assert "config_path" in body["status"]["message"]


def test_review_route_with_an_unreadable_query_photo_names_no_server_path(db):
    """Issue 21: the POST review route's 400 for a query whose image is unreadable says so without the path."""
    ibs = db["ibs"]
    corrupt = db["role"]["corrupt"]
    image = ibs.get_image_paths([ibs.get_annot_gids(corrupt)])[0]
    client = _app(ibs).test_client()
    response = client.post("/api/review/query/chip/best/", data={
        "query_annot_uuid_list": json.dumps([str(ibs.get_annot_uuids([corrupt])[0])]),
        "database_annot_uuid_list": json.dumps([str(u) for u in ibs.get_annot_uuids(_made(db)[:2])]),
        "pipeline_root": "LightGlue"})
    text = response.data.decode()
    assert response.status_code == 400, text[:2000]
    message = json.loads(text)["status"]["message"]
    assert f"query annotation {corrupt}" in message and "missing or unreadable" in message, message
    assert "<server path>" in message and "Traceback" not in text
    for secret in (image, str(Path(image).parent), str(db["dbdir"])):
        assert secret not in text, (secret, text[:2000])


def test_api_real_server(db):
    from urllib.error import HTTPError
    from urllib.request import Request, urlopen

    from werkzeug.serving import make_server

    ibs = db["ibs"]
    made = _made(db)
    server = make_server("127.0.0.1", 0, _app(ibs), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_port}/api/plugin/lightglue"
        params = {"query_annot_uuid": _uuid_json(ibs.get_annot_uuids([made[2]])[0]),
                  "database_annot_uuid_list": [_uuid_json(u) for u in ibs.get_annot_uuids(made)]}
        request = Request(f"{base}/match/score/", data=json.dumps(params).encode(), method="POST",
                          headers={"Content-Type": "application/json"})
        body = json.loads(urlopen(request, timeout=120).read())
        assert body["status"]["success"]
        scores = body["response"]["score_list"]
        assert scores[2] == 0.0 and int(np.argmax(scores)) == 3
        try:
            urlopen(f"{base}/config/?config_path=../../etc/passwd", timeout=60)
            raise AssertionError("a config path outside the directory was accepted")
        except HTTPError as exc:
            assert exc.code == 400
            assert "may not contain '..'" in json.loads(exc.read())["status"]["message"]
    finally:
        server.shutdown()
        thread.join(timeout=10)


def test_api_hostile_input_gets_short_4xx_answers(db, config_dir, monkeypatch):
    """Issue 11: capped lists, overlong / NUL config paths, bad config files, unusable calibrations and
    unexpected failures: a short JSON message, no traceback, no absolute server path, no file contents."""
    from wbia_lightglue.wbia_plugin import routes

    ibs = db["ibs"]
    made = _made(db)
    quuid, duuids = ibs.get_annot_uuids([made[0]])[0], ibs.get_annot_uuids(made[1:])
    client = _app(ibs).test_client()
    (config_dir / "capped.json").write_text(json.dumps({**SMALL, "web_max_database": 2}))
    (config_dir / "bad.json").write_text('{"screen_score": Infinity, "max_num_keypoints": 256}')
    (config_dir / "secret.json").write_text(json.dumps({"password": "hunter2" * 40}))
    (config_dir / "calbroken.json").write_text(json.dumps(SMALL))
    (config_dir / "calbroken.calibration.json").write_bytes(b"\x00\xffnot json at all")

    def call(route, method="get", **params):
        response = getattr(client, method)(f"/api/plugin/lightglue/{route}/", data=json.dumps(params),
                                           content_type="application/json")
        text = response.data.decode()
        if response.status_code != 200:  # errors; a success names the config file it used, by design
            assert "Traceback" not in text and str(config_dir) not in text, text[:2000]
        return response.status_code, json.loads(text)

    def score(database, **params):
        return call("match/score", "post", query_annot_uuid=_uuid_json(quuid),
                    database_annot_uuid_list=[_uuid_json(u) for u in database], **params)

    # list caps: a 400 naming the cap (and, for the synchronous route, the job route)
    code, body = call("feature", annot_uuid_list=[_uuid_json(uuid.uuid4()) for _ in range(routes.MAX_LIST_LENGTH + 1)])
    assert code == 400 and "holds 10001 entries; this route accepts at most 10000" in body["status"]["message"]
    code, body = score(duuids[:3], config_path="capped.json")
    message = body["status"]["message"]
    assert code == 400 and "at most 2 synchronously" in message and "/api/engine/query/graph/" in message
    code, body = score(duuids[:2], config_path="capped.json")
    assert code == 200 and len(body["response"]["score_list"]) == 2
    assert routes.sync_database_limit(core.Config(SMALL)) == 400  # automatic, CPU: 100 x (512 / 256)**2
    assert routes.sync_database_limit(core.Config({**SMALL, "max_num_keypoints": 2048})) == 10

    # config paths: overlong, a component over 255 bytes (ENAMETOOLONG: HTTP 500 before), NUL, bad contents
    for bad, needle in [("x" * 5000, "at most 255"), ("\u00e9" * 200 + ".json", "File name too long"),
                        ("a\x00b.json", "NUL"), ("bad.json", "'screen_score' must be a finite number"),
                        ("secret.json", "unknown key 'password'"), ("../x.json", "may not contain '..'")]:
        code, body = call("config", config_path=bad)
        message = body["status"]["message"]
        assert code == 400 and needle in message, (bad, body)
        assert len(message) < 700 and "hunter2" not in message
    code, body = call("config", config_path="bad.json")
    assert body["status"]["message"].startswith("config bad.json: key 'screen_score'")

    # an unusable calibration never breaks scoring: raw scores, no probabilities
    code, body = score(duuids[:2], config_path="calbroken.json")
    assert code == 200 and body["response"]["probability_list"] is None

    # a parameter the route does not take, and an unexpected failure deep inside: one line, no traceback
    code, body = score(duuids[:1], colour="blue")
    assert code == 400 and "unexpected keyword argument 'colour'" in body["status"]["message"]

    def boom(*args, **kwargs):
        raise RuntimeError(f"{config_dir}/internal/state is broken")

    monkeypatch.setattr(core, "match_pairs", boom)  # the plugin matches with match_pairs (it keeps the matches)
    code, body = score(duuids[:1])
    assert code == 500 and body["status"]["message"] == (
        "lightglue_api_match_scores failed (RuntimeError); the server log has the details")

    # /config/ always answers strict JSON (no NaN / Infinity can enter a config)
    response = client.get("/api/plugin/lightglue/config/")
    json.loads(response.data, parse_constant=lambda name: pytest.fail(f"/config/ emitted {name}"))


def test_config_path_resolution(config_dir):
    assert _plugin.resolve_config_path("other.json") == (config_dir / "other.json").resolve()
    assert _plugin.resolve_config_path(str(config_dir / "other.json")) == (config_dir / "other.json").resolve()
    assert _plugin.resolve_config_path(None) is None
    for bad in ("../x.json", "/etc/passwd", "escape.json", "sub/../other.json", "nope.json", 3):
        with pytest.raises(ValueError):
            _plugin.resolve_config_path(bad)


# ============================================================================ registration hook, second process
def test_import_hook_registers_plugin_and_reopen_reads_sqlite(db, config_dir):
    """A fresh process: `import wbia_lightglue` then `import wbia` registers the plugin before opendb,
    and the reopened database serves stored features without extracting."""
    ibs = db["ibs"]
    aids = _made(db)[:4]
    ibs.lightglue_features(aids)  # stored (idempotent)
    script = textwrap.dedent(f"""
        import json, sys
        import wbia_lightglue
        assert "wbia" not in sys.modules and "torch" not in sys.modules
        import wbia
        assert "wbia_lightglue._plugin" in sys.modules
        from wbia_lightglue import core
        calls = []
        original = core.extract_features
        core.extract_features = lambda chips, *a, **k: calls.append(len(chips)) or original(chips, *a, **k)
        ibs = wbia.opendb(dbdir={str(db["dbdir"])!r})
        feats = ibs.lightglue_features({aids!r})
        print("RESULT", json.dumps({{"calls": calls, "n": [len(f["keypoints"]) for f in feats],
                                    "tables": sorted(ibs.depc_annot.tablenames)}}))
    """)
    env = {**os.environ, "WBIA_LIGHTGLUE_CONFIG_DIR": str(config_dir),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["calls"] == []  # nothing extracted: read from SQLite
    assert all(n > 50 for n in result["n"])
    assert {"LightGlueFeatures", "LightGlue"} <= set(result["tables"])


def test_serve_registers_plugin_then_runs_wbia_dev_as_main(monkeypatch):
    import runpy

    from wbia_lightglue import serve
    from wbia_lightglue.wbia_plugin import launcher

    seen = {}

    def fake_run_module(name, run_name=None, alter_sys=False):
        seen.update(name=name, run_name=run_name, alter_sys=alter_sys, argv=list(sys.argv),
                    plugin="wbia_lightglue._plugin" in sys.modules)

    monkeypatch.setattr(runpy, "run_module", fake_run_module)
    monkeypatch.setattr(sys, "argv", ["wbia-lightglue-serve"])
    monkeypatch.delenv("QT_QPA_PLATFORM", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    sigterm = signal.getsignal(signal.SIGTERM)
    level = launcher.logger.level
    try:
        serve.main(["--dbdir", "/tmp/db", "--web", "--port", "5000"])
    finally:
        signal.signal(signal.SIGTERM, sigterm)  # the launcher turns SIGTERM into Ctrl+C
        launcher.logger.setLevel(level)
    assert seen == {"name": "wbia.dev", "run_name": "__main__", "alter_sys": True, "plugin": True,
                    "argv": ["wbia-lightglue-serve", "--dbdir", "/tmp/db", "--web", "--port", "5000"]}
    assert os.environ["QT_QPA_PLATFORM"] == "offscreen"  # headless review images


def test_launcher_host_option_is_its_own():
    from wbia_lightglue.wbia_plugin import launcher

    assert launcher._pop_option(["--dbdir", "d", "--host", "127.0.0.1", "--web"], "--host") == \
        ("127.0.0.1", ["--dbdir", "d", "--web"])
    assert launcher._pop_option(["--host=::1", "--web"], "--host") == ("::1", ["--web"])
    assert launcher._pop_option(["--web"], "--host") == (None, ["--web"])
    with pytest.raises(SystemExit, match="needs a value"):
        launcher._pop_option(["--web", "--host"], "--host")


def test_only_lightglue_jobs_are_retried_at_once(monkeypatch):
    from wbia.web import job_engine

    from wbia_lightglue.wbia_plugin import jobs

    seen = []
    monkeypatch.setattr(job_engine, "on_engine_request", lambda *args, **options: seen.append(options))
    jobs.retry_lightglue_jobs_at_once()
    jobs.retry_lightglue_jobs_at_once()  # once only
    lightglue = ([1], [2, 3], {}, {"pipeline_root": "LightGlue"}, True)  # query_chips_graph's arguments
    job_engine.on_engine_request(None, "job", "query_chips_graph", lightglue, {})
    job_engine.on_engine_request(None, "job", "query_chips_graph", ([1], [2], {}, {"pipeline_root": "vsmany"}), {})
    job_engine.on_engine_request(None, "job", "helloworld", (), {})
    assert seen == [{"retry_delay_min": 0, "retry_delay_max": 1}, {}, {}]


def test_python311_shims_restore_what_wbia_calls():
    import inspect

    def f(a, b=2, *args, c, d=4, **kw):
        pass

    def g(x, y="y"):
        pass

    assert inspect.formatargspec(*inspect.getfullargspec(f)) == "(a, b=2, *args, c, d=4, **kw)"
    assert inspect.formatargspec(*inspect.getargspec(g)) == "(x, y='y')"
    assert inspect.formatargspec(*inspect.getargspec(g)[0:3]) == "(x, y)"  # how utool formats a call
    import oauthlib.common

    assert oauthlib.common.bytes_type is bytes and oauthlib.common.unicode_type is str
    from flask_oauthlib import provider  # noqa: F401  (WBIA's web extensions import it)


# ============================================================================ calibration
def test_calibrate_saves_beside_the_config_and_the_api_returns_probabilities(db, config_dir):
    ibs = db["ibs"]
    made = _made(db)
    path = Path(ibs.lightglue_calibrate(made + [db["role"]["unnamed"]]))
    try:
        assert path == config_dir / "config.calibration.json"
        saved = json.loads(path.read_text())
        assert saved["match_fingerprint"] == core.load_config().match_fingerprint
        assert saved["num_pairs"] == 15 and saved["num_positive"] == 3  # the unnamed one is in no pair
        out = ibs.lightglue_api_match_scores(str(ibs.get_annot_uuids(made[0])),
                                             [str(u) for u in ibs.get_annot_uuids(made[1:])])
        probs = out["probability_list"]
        assert len(probs) == 5 and all(0 <= p <= 1 for p in probs)
        assert probs[0] == max(probs)  # its own individual's other view: the most likely
        other = ibs.lightglue_api_match_scores(str(ibs.get_annot_uuids(made[0])),
                                               [str(u) for u in ibs.get_annot_uuids(made[1:])], "other.json")
        assert other["probability_list"] is None  # another config file: no calibration of its own
    finally:
        path.unlink(missing_ok=True)


# ============================================================================ two-stage mode
def test_two_stage_query_chips_shortlists_stores_raw_scores_and_fuses(db, config_dir, monkeypatch):
    from wbia_lightglue.engine import fusion

    ibs = db["ibs"]
    made = _made(db)
    path = config_dir / "two_stage.json"
    path.write_text(json.dumps({**SMALL, "shortlist_k": 2, "shortlist_image_size": 400}))
    config = core.load_config(path)
    calls = []
    original = core.match_pairs  # the plugin matches with match_pairs (it keeps the matches for review images)
    monkeypatch.setattr(core, "match_pairs",
                        lambda q, d, *a, **kw: calls.append(len(d)) or original(q, d, *a, **kw))
    qaids = [made[0], made[3]]
    cms = ibs.query_chips(qaids, made, cfgdict={"pipeline_root": "LightGlue", "config_path": str(path)})
    assert [cm.qaid for cm in cms] == qaids
    assert sorted(calls) == [2, 2]  # LightGlue on the shortlist only
    for cm in cms:
        assert isinstance(cm, wbia.AnnotMatch) and len(cm.daid_list) == 5
        assert cm.get_top_nids()[0] == ibs.get_annot_nids(cm.qaid)
        assert np.isfinite(cm.annot_score_list).all()
        # the AnnotMatch holds the engine's fused scores: stage 1 from the plugin, stored raw LightGlue
        daids = [int(d) for d in cm.daid_list]
        stage1 = ibs.lightglue_stage1_scores(cm.qaid, daids, config)
        top = fusion.shortlist_positions(stage1, 2)
        raw = ibs.lightglue_match_scores(cm.qaid, [daids[p] for p in top], config)
        lg = np.zeros(len(daids))
        lg[top] = raw
        expected = fusion.fuse(lg, stage1, np.isin(np.arange(len(daids)), top), config)
        np.testing.assert_allclose(cm.annot_score_list, expected, rtol=1e-6)
    # the pair table keeps the raw confidence sums of the shortlisted pairs, nothing else
    stored = ibs.depc_annot.get("LightGlue", ([cms[0].qaid], [int(cms[0].daid_list[0])]), "score",
                                config={"config_path": str(path), "fingerprint": config.match_fingerprint})
    assert stored[0] >= 0
    # the job path (query_chips with pipeline_root) and a direct depc request give the same AnnotMatches
    cms2 = ibs.depc_annot.new_request("LightGlue", qaids, made, {"config_path": str(path)}).execute()
    for a, b in zip(cms, cms2):
        np.testing.assert_allclose(a.annot_score_list, b.annot_score_list)
    # the stage-1 index is persisted in the database's cache folder and kept in step
    saved = list((Path(ibs.get_cachedir()) / "lightglue_shortlist").glob("*.npz"))
    assert [p.stem for p in saved] == [config.shortlist_fingerprint]


def test_the_built_in_defaults_are_two_stage_with_calibrated_scores(db, config_dir):
    """query_chips with the defaults (no key but where to run): fused scores mapped by the shipped calibration."""
    from wbia_lightglue.engine import fusion

    ibs = db["ibs"]
    made = _made(db)
    path = config_dir / "defaults.json"
    path.write_text(json.dumps({"compile": False, "device": "cpu"}))  # neither changes a score
    config = core.load_config(path)
    assert config.mode == "two_stage" and config.pair_score_fingerprint == core.Config({}).pair_score_fingerprint
    shipped = core.load_calibration(config)
    assert shipped is not None and shipped.meta.get("date"), "no shipped calibration for the defaults"
    cms = ibs.query_chips(made[:2], made, cfgdict={"pipeline_root": "LightGlue", "config_path": str(path)})
    for cm in cms:
        assert cm.get_top_nids()[0] == ibs.get_annot_nids(cm.qaid)
        scores = np.asarray(cm.annot_score_list)
        assert np.all((scores > 0) & (scores < 1))  # probabilities
        assert cm.name_score_list.max() == pytest.approx(scores.max())
        daids = [int(d) for d in cm.daid_list]
        stage1 = ibs.lightglue_stage1_scores(cm.qaid, daids, config)
        raw = ibs.lightglue_match_scores(cm.qaid, daids, config)  # a database smaller than K: all matched
        fused = fusion.fuse(raw, stage1, np.ones(len(daids), bool), config)
        np.testing.assert_allclose(scores, shipped.probability(fused), rtol=1e-6)
        best = int(np.argmax(scores))
        assert ibs.get_annot_nids(daids[best]) == ibs.get_annot_nids(cm.qaid) and scores[best] > np.median(scores)


def test_two_stage_hotspotter_source_and_chip_change(db, config_dir):
    ibs = db["ibs"]
    made = _made(db)
    path = config_dir / "two_stage_hs.json"
    path.write_text(json.dumps({**SMALL, "shortlist_k": 2, "shortlist_source": "hotspotter"}))
    cms = ibs.query_chips([made[2]], made, cfgdict={"pipeline_root": "LightGlue", "config_path": str(path)})
    assert cms[0].get_top_nids()[0] == ibs.get_annot_nids(made[2])
    hs = ibs.lightglue_stage1_scores(made[2], made, path)
    assert hs[made.index(made[2])] == 0.0 and max(hs) > 0 and all(np.isfinite(hs))

    # a chip change (bbox edit) drops the annotation's stage-1 descriptors; the next query re-adds it
    index_path = config_dir / "two_stage_idx.json"
    index_path.write_text(json.dumps({**SMALL, "shortlist_k": 2, "shortlist_image_size": 400}))
    config = core.load_config(index_path)
    ibs.lightglue_stage1_scores(made[0], made, config)
    index = next(i for (d, fp), i in PLUGIN_STATE.stage1_indexes.items()
                 if d == str(ibs.get_dbdir()) and fp == config.shortlist_fingerprint)
    old = str(ibs.get_annot_visual_uuids([made[5]])[0])
    assert old in index
    w, h = ibs.get_annot_bboxes([made[5]])[0][2:]
    ibs.set_annot_bboxes([made[5]], [(0, 0, w - 10, h - 10)])
    assert old not in index
    scores = ibs.lightglue_stage1_scores(made[0], made, config)
    assert str(ibs.get_annot_visual_uuids([made[5]])[0]) in index and len(scores) == len(made)
