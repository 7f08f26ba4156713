"""The WBIA plugin against a real wildbook-ia 4.0.4: a new database in tmp with real photos.

One session-scoped database holds, per individual, two views of a project-made textured scene
(tests/images.py), plus (when ../shared/data is present) two scenes of real photos and same-side
photos of three nyala individuals. Extra annotations: an unnamed one, a single sighting, and one
whose image file is corrupted after it was added.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
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
from wbia_lightglue.wbia_plugin import plugin as plugin_module  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
SMALL = {"max_num_keypoints": 256, "image_size": 320, "compile": False, "device": "cpu"}
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
    photos = SHARED / "photos"
    if photos.is_dir():
        for stem, name in (("sacre_coeur1", "sacre"), ("sacre_coeur2", "sacre"),
                           ("DSC_0410", "dsc"), ("DSC_0411", "dsc")):
            path = next(photos.glob(stem + ".*"))
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
    if "DSC_0410" not in role:
        pytest.skip("../shared/data/photos is absent")
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
    original = core.match_scores

    def spy(query, database, *args, **kwargs):
        calls.append(len(database))
        return original(query, database, *args, **kwargs)

    monkeypatch.setattr(core, "match_scores", spy)
    cfg = {"config_path": str(engine_config.DEFAULT_CONFIG_DIR / "other.json")}  # new config: nothing stored yet
    cms = ibs.depc_annot.new_request("LightGlue", made[:3], made, cfg).execute()
    assert len(cms) == 3
    assert sorted(calls) == [5, 5, 5]  # one batched call per query, each pair once, no self pair
    ibs.depc_annot.new_request("LightGlue", made[:3], made, cfg).execute()
    assert sorted(calls) == [5, 5, 5]
    with pytest.raises(ValueError, match="outside the config directory"):  # requests come from the web too
        ibs.depc_annot.new_request("LightGlue", made[:1], made, {"config_path": "/etc/passwd"})


def test_render_single_result_draws_correspondences(db):
    ibs = db["ibs"]
    made = _made(db)
    request = ibs.depc_annot.new_request("LightGlue", [made[0]], [made[1]], {})
    cm = request.execute()[0]
    image = request.render_single_result(cm, made[1])
    chips = ibs.get_annot_chips([made[0], made[1]])
    assert image.ndim == 3 and image.shape[2] == 3
    assert image.shape[1] > chips[0].shape[1] + chips[1].shape[1]  # both chips side by side
    # Correspondence lines are coloured (green/yellow/red), which the grey-ish chips alone are not.
    plain = np.zeros_like(image)
    colourful = (image[..., 1].astype(int) - image[..., 0].astype(int) > 120).sum()
    assert colourful > 200 and colourful > (plain[..., 1] > 0).sum()


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


# ============================================================================ cache invalidation
def test_bbox_change_invalidates_cached_and_stored_features(db, extraction_spy):
    ibs = db["ibs"]
    aid = db["role"]["single"]
    config = core.load_config()
    cache = core.get_feature_cache(config)
    before = ibs.lightglue_features([aid])[0]
    annot_uuid = ibs.get_annot_uuids([aid])[0]
    assert cache.get(annot_uuid, config.feature_fingerprint) is not None
    w, h = ibs.get_image_sizes([ibs.get_annot_gids(aid)])[0]
    ibs.set_annot_bboxes([aid], [(0, 0, w // 2, h)])  # another aspect ratio: another chip size
    assert cache.get(annot_uuid, config.feature_fingerprint) is None
    extraction_spy.clear()
    after = ibs.lightglue_features([aid])[0]
    assert [aid] in extraction_spy  # recomputed from the new chip, not read back from SQLite
    assert tuple(after["image_size"]) != tuple(before["image_size"])
    stored = ibs.depc_annot.get("LightGlueFeatures", [aid], "image_size",
                                config=plugin_module._features_depc_config(config))[0]
    np.testing.assert_array_equal(stored, after["image_size"])


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

    seen = {}

    def fake_run_module(name, run_name=None, alter_sys=False):
        seen.update(name=name, run_name=run_name, alter_sys=alter_sys, argv=list(sys.argv),
                    plugin="wbia_lightglue._plugin" in sys.modules)

    monkeypatch.setattr(runpy, "run_module", fake_run_module)
    monkeypatch.setattr(sys, "argv", ["wbia-lightglue-serve"])
    serve.main(["--dbdir", "/tmp/db", "--web", "--port", "5000"])
    assert seen == {"name": "wbia.dev", "run_name": "__main__", "alter_sys": True, "plugin": True,
                    "argv": ["wbia-lightglue-serve", "--dbdir", "/tmp/db", "--web", "--port", "5000"]}


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
    original = core.match_scores
    monkeypatch.setattr(core, "match_scores",
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
    index = next(i for (d, fp), i in plugin_module._INDEXES.items()
                 if d == str(ibs.get_dbdir()) and fp == config.shortlist_fingerprint)
    old = str(ibs.get_annot_visual_uuids([made[5]])[0])
    assert old in index
    w, h = ibs.get_annot_bboxes([made[5]])[0][2:]
    ibs.set_annot_bboxes([made[5]], [(0, 0, w - 10, h - 10)])
    assert old not in index
    scores = ibs.lightglue_stage1_scores(made[0], made, config)
    assert str(ibs.get_annot_visual_uuids([made[5]])[0]) in index and len(scores) == len(made)
