"""The catalogue-scale stage-1 index (``shortlist_index: "aggregated"``): VLAD candidates, then LNBNN over them.

Real stage-1 features (the default Hessian-affine / SIFT detector) of real nyala photos (``../shared``, skipped
when absent). What must hold:

* with candidates covering the whole database its scores ARE the per-descriptor index's (same LNBNN, same
  spatial check): the only approximation is which annotations become candidates;
* a photo of the query's individual is among the VLAD candidates;
* save / load / add after load / remove (with compaction) give the same scores as building at once, and the
  folder holds only the files the saved index names;
* a damaged or incomplete index is reported with its path and rebuilt by ``synced_index``; a killed writer's
  tail in the vectors file is ignored and overwritten;
* ``auto`` switches from the per-descriptor index to this one beyond ``AUTO_AGGREGATED_ANNOTATIONS``;
* the CLI identifies with it end to end.
"""
import json
import logging
from collections import defaultdict

import cv2
import numpy as np
import pytest
from cli_runner import run_cli

from wbia_lightglue.core import load_config
from wbia_lightglue.engine.stage1 import (
    AggregatedIndex,
    Stage1Index,
    build_index,
    extract_stage1_features,
    load_index,
    synced_index,
)
from wbia_lightglue.engine.stage1 import index as index_module
from wbia_lightglue.engine.stage1.aggregated import WORDS

PHOTOS_PER_FLANK = 2


@pytest.fixture(scope="module")
def nyala_stage1(nyala_dir):
    """Stage-1 features of the first two left-flank photos of 8 individuals (16 photos) + labels."""
    groups = defaultdict(list)
    for row in (nyala_dir / "labels.csv").read_text().splitlines()[1:]:
        path, individual, side = row.split(",")[:3]
        if side == "left" and len(groups[individual]) < PHOTOS_PER_FLANK:
            groups[individual].append(nyala_dir / path)
    chosen = [(ind, p) for ind, paths in list(groups.items())[:8] if len(paths) == PHOTOS_PER_FLANK for p in paths]
    config = load_config(None)
    feats = extract_stage1_features([cv2.imread(str(p)) for _, p in chosen], config)
    return {"keys": [p.stem + "-" + ind for ind, p in chosen], "individuals": [ind for ind, _ in chosen],
            "features": feats, "config": config}


def scores_of(index, feats, **kw):
    result = index.search(feats, **kw)
    return result.scores


def test_candidates_covering_the_database_score_exactly_as_the_descriptor_index(nyala_stage1):
    keys, feats, config = nyala_stage1["keys"], nyala_stage1["features"], nyala_stage1["config"]
    database, query = keys[1:], feats[0]
    flat = build_index(database, feats[1:], load_config(None, shortlist_index="flat"))
    assert isinstance(flat, Stage1Index)
    aggregated = build_index(database, feats[1:], load_config(None, shortlist_index="aggregated"))
    assert isinstance(aggregated, AggregatedIndex) and len(aggregated) == len(database)
    expected = scores_of(flat, query)
    got = scores_of(aggregated, query, candidates=len(database), probes=WORDS)
    assert set(got) == set(expected)
    np.testing.assert_allclose([got[k] for k in database], [expected[k] for k in database], rtol=1e-5)
    assert max(expected.values()) > 0
    # a database member as the query, left out of its own ranking (exclude, as the pipeline asks): scored as by
    # a database without it (the per-descriptor index only approximates that: a query descriptor whose K + 1
    # nearest are mostly its own photo's keeps fewer than K + 1 after they are skipped)
    # nearest are mostly its own photo's keeps fewer than K + 1 after they are skipped). LNBNN alone: equal
    # distances may come in another order, and RANSAC's samples with them.
    member = keys[3]
    others = [k for k in database if k != member]
    without = build_index(others, [f for k, f in zip(keys, feats) if k in others],
                          load_config(None, shortlist_index="flat", shortlist_spatial=False))
    expected = scores_of(without, feats[3])
    aggregated = build_index(database, feats[1:], load_config(None, shortlist_index="aggregated",
                                                               shortlist_spatial=False))
    got = scores_of(aggregated, feats[3], exclude=[member], candidates=len(database), probes=WORDS)
    assert got[member] == 0.0
    np.testing.assert_allclose([got[k] for k in others], [expected[k] for k in others], rtol=1e-5)
    del config


def test_fewer_candidates_are_scored_as_a_database_of_them_alone(nyala_stage1):
    keys, feats = nyala_stage1["keys"], nyala_stage1["features"]
    config = load_config(None, shortlist_index="aggregated", shortlist_spatial=False)
    index = build_index(keys[1:], feats[1:], config)
    rows = index.candidate_rows(feats[0], candidates=6)
    chosen = [index.keys[r] for r in rows]
    assert len(chosen) == 6 and len(set(chosen)) == 6
    # the VLAD order: similarities non-increasing
    query_vlad = index.vlad([feats[0]["descriptors"]])[0]
    similarity = [float(index._vlad.reconstruct(int(r)) @ query_vlad) for r in rows]
    assert similarity == sorted(similarity, reverse=True)
    scores = scores_of(index, feats[0], candidates=6, probes=WORDS)
    assert all(scores[k] == 0.0 for k in keys[1:] if k not in chosen)
    alone = build_index(chosen, [feats[keys.index(k)] for k in chosen],
                        load_config(None, shortlist_index="flat", shortlist_spatial=False))
    expected = scores_of(alone, feats[0])
    np.testing.assert_allclose([scores[k] for k in chosen], [expected[k] for k in chosen], rtol=1e-5)
    # fewer probed words: an approximation of that kNN, most of the same votes
    approx = scores_of(index, feats[0], candidates=6)
    assert np.corrcoef([approx[k] for k in chosen], [expected[k] for k in chosen])[0, 1] > 0.9


def test_save_load_grow_shrink_equal_a_fresh_build(nyala_stage1, tmp_path):
    keys, feats = nyala_stage1["keys"], nyala_stage1["features"]
    config = load_config(None, shortlist_index="aggregated")
    path = tmp_path / "index" / "db.npz"
    first = build_index(keys[1:9], feats[1:9], config)
    first.save(path)
    loaded = load_index(path, config)
    assert isinstance(loaded, AggregatedIndex) and loaded.keys == keys[1:9]
    assert scores_of(loaded, feats[0]) == scores_of(first, feats[0])
    # grown after loading: appends to the saved vectors file; the vocabulary stays the first one's
    loaded.add(keys[9:], feats[9:])
    loaded.save(path)
    again = load_index(path, config)
    assert again.keys == keys[1:]
    fresh = AggregatedIndex(config)
    fresh.add(keys[1:9], feats[1:9])
    fresh.add(keys[9:], feats[9:])
    assert scores_of(again, feats[0]) == scores_of(fresh, feats[0])
    # shrunk below half: the vectors file is compacted under a new name, the old one removed at save
    gone = keys[1:12]
    again.remove(gone)
    again.save(path)
    names = sorted(p.name for p in path.parent.iterdir())
    assert len(names) == 3 and "db.npz" in names and any(n.startswith("db.1.") and n.endswith(".vectors")
                                                          for n in names), names
    final = load_index(path, config)
    assert final.keys == keys[12:]
    rest = AggregatedIndex(config)
    rest._centroids, rest._vlad = final._centroids, type(final._vlad)(final._vlad.d, final._vlad.sq.qtype,
                                                                      final._vlad.metric_type)
    rest.add(keys[12:], feats[12:])
    np.testing.assert_allclose(sorted(scores_of(final, feats[0]).values()),
                               sorted(scores_of(rest, feats[0]).values()), rtol=1e-5)


def test_damage_is_named_and_rebuilt_and_a_killed_tail_ignored(nyala_stage1, tmp_path, caplog):
    keys, feats = nyala_stage1["keys"], nyala_stage1["features"]
    config = load_config(None, shortlist_index="aggregated")
    path = tmp_path / "db.npz"
    by_key = dict(zip(keys, feats))
    index, added, _ = synced_index(path, config, keys[1:], lambda ks: [by_key[k] for k in ks])
    assert added == len(keys) - 1 and path.is_file()
    expected = scores_of(index, feats[0])
    vectors = next(tmp_path.glob("db.*.vectors"))
    # a killed writer's tail beyond what the index owns: ignored, then overwritten by the next add
    with open(vectors, "ab") as out:
        out.write(b"\x07" * 5000)
    tailed = load_index(path, config)
    assert scores_of(tailed, feats[0]) == expected
    tailed.add([keys[0]], [feats[0]])
    assert tailed.read(tailed._row[keys[0]])[0].tobytes() == np.asarray(feats[0]["descriptors"]).tobytes()
    # truncated vectors file: named, then rebuilt by synced_index
    with open(vectors, "r+b") as out:
        out.truncate(1000)
    with pytest.raises(ValueError, match="damaged.*vectors file"):
        load_index(path, config)
    with caplog.at_level(logging.WARNING, logger="wbia_lightglue"):
        rebuilt, added, _ = synced_index(path, config, keys[1:], lambda ks: [by_key[k] for k in ks])
    assert added == len(keys) - 1 and "rebuilding" in caplog.text and str(path) in caplog.text
    assert scores_of(rebuilt, feats[0]) == expected
    # the VLAD sidecar gone: unreadable, named
    next(tmp_path.glob("db.*.vlad")).unlink()
    with pytest.raises(ValueError, match="unreadable"):
        load_index(path, config)
    # descriptors that disagree with their VLAD vectors (another file swapped in)
    synced_index(path, config, keys[1:], lambda ks: [by_key[k] for k in ks])
    vectors = next(tmp_path.glob("db.*.vectors"))
    data = bytearray(vectors.read_bytes())
    data[:len(data) // 2] = bytes(reversed(data[:len(data) // 2]))
    vectors.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="disagree with its VLAD vector"):
        load_index(path, config)


def test_auto_moves_to_the_aggregated_index_beyond_the_threshold(nyala_stage1, tmp_path, monkeypatch, caplog):
    keys, feats = nyala_stage1["keys"], nyala_stage1["features"]
    config = load_config(None)  # shortlist_index "auto"
    by_key = dict(zip(keys, feats))
    path = tmp_path / "db.npz"
    monkeypatch.setattr(index_module, "AUTO_AGGREGATED_ANNOTATIONS", 10)
    small, _, _ = synced_index(path, config, keys[:8], lambda ks: [by_key[k] for k in ks])
    assert isinstance(small, Stage1Index)
    with caplog.at_level(logging.INFO, logger="wbia_lightglue"):
        large, added, _ = synced_index(path, config, keys, lambda ks: [by_key[k] for k in ks])
    assert isinstance(large, AggregatedIndex) and added == len(keys)
    assert "rebuilding it as AggregatedIndex" in caplog.text
    assert isinstance(load_index(path, config), AggregatedIndex)


def test_identify_with_the_aggregated_index(nyala_dir, tmp_path, capsys):
    groups = defaultdict(list)
    for row in (nyala_dir / "labels.csv").read_text().splitlines()[1:]:
        path, individual, side = row.split(",")[:3]
        if side == "left" and len(groups[individual]) < 2:
            groups[individual].append(path)
    chosen = [(ind, paths) for ind, paths in groups.items() if len(paths) == 2][:5]
    database = tmp_path / "db.csv"
    database.write_text("path,individual\n" + "".join(f"{nyala_dir / p[1]},{ind}\n" for ind, p in chosen))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"shortlist_index": "aggregated", "shortlist_k": 2, "max_num_keypoints": 256,
                                  "image_size": 320}))
    code, _, err = run_cli(capsys, "identify", nyala_dir / chosen[0][1][0], database, "--config", config,
                           "--cache-dir", tmp_path / "cache", "--top", "3", "--json", tmp_path / "r.json", "-q")
    assert code == 0, err
    ranking = json.loads((tmp_path / "r.json").read_text())
    assert len(ranking["candidates"]) == 3 and all(np.isfinite(c["score"]) for c in ranking["candidates"])
    saved = [p for p in (tmp_path / "cache").rglob("*.npz") if p.with_name(p.stem + ".0.vectors").is_file()]
    assert len(saved) == 1 and isinstance(load_index(saved[0], load_config(config)), AggregatedIndex)
    # the second run loads the persisted index (nothing re-added) and ranks the same
    code, _, err = run_cli(capsys, "identify", nyala_dir / chosen[0][1][0], database, "--config", config,
                           "--cache-dir", tmp_path / "cache", "--top", "3", "--json", tmp_path / "r2.json", "-q")
    assert code == 0, err
    assert json.loads((tmp_path / "r2.json").read_text())["candidates"] == ranking["candidates"]
