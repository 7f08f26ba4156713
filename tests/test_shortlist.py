"""Two-stage identification: the stage-1 index (exact kNN, incremental, persisted), RootSIFT features,
the fused score, and the exhaustive mode's exact equality with one-stage scores (real weights, real photos)."""
import numpy as np
import pytest

from wbia_lightglue.core import extract_features, load_config, match_scores
from wbia_lightglue.engine.fusion import fit_logistic, fuse, shortlist_positions
from wbia_lightglue.engine.stage1 import Stage1Index, build_index, extract_stage1_features, hesaff, rootsift
from wbia_lightglue.pipeline import score_query


def random_features(rng, count, per=40, spread=60):
    return [{"descriptors": rng.integers(0, spread, (per, 128)).astype(np.uint8),
             "keypoints": (rng.random((per, 2)) * 200).astype(np.float32),
             "image_size": np.array([200, 200])} for _ in range(count)]


def flat_config(**kw):
    return load_config(None, shortlist_index="flat", **kw)


def test_flat_index_returns_exactly_brute_force_knn():
    rng = np.random.default_rng(1)
    feats = random_features(rng, 12)
    index = build_index([f"a{i}" for i in range(12)], feats, flat_config())
    base = np.concatenate([f["descriptors"] for f in feats]).astype(np.float64)
    query = rng.integers(0, 60, (30, 128)).astype(np.float64)
    dist, ids = index.knn(query, 7)
    brute = np.sqrt(((query[:, None] - base[None]) ** 2).sum(-1))
    expected = np.argsort(brute, axis=1, kind="stable")[:, :7]
    np.testing.assert_allclose(dist, np.take_along_axis(brute, expected, 1), rtol=1e-5)
    assert np.array_equal(ids, expected)  # random integer descriptors in 128-d: no ties


def test_torch_search_equals_faiss_flat():
    rng = np.random.default_rng(2)
    feats = random_features(rng, 6)
    keys = [f"a{i}" for i in range(6)]
    faiss_index = build_index(keys, feats, flat_config())
    torch_index = build_index(keys, feats, flat_config(), device="torch-cpu")  # the CUDA code path, on CPU
    query = feats[0]["descriptors"]
    d1, i1 = faiss_index.knn(query, 5)
    d2, i2 = torch_index.knn(query, 5)
    np.testing.assert_allclose(d1, d2, rtol=1e-4, atol=1e-3)
    assert (i1 == i2).mean() > 0.99


def test_lnbnn_scores_find_the_shared_annotation_and_exclude_works():
    rng = np.random.default_rng(3)
    feats = random_features(rng, 10)
    query = {**feats[4], "descriptors": np.clip(feats[4]["descriptors"].astype(int) + rng.integers(-2, 3, (40, 128)),
                                                0, 255).astype(np.uint8)}
    index = build_index([f"a{i}" for i in range(10)], feats, flat_config())
    result = index.search(query)
    assert max(result.scores, key=result.scores.get) == "a4"
    assert set(result.scores) == {f"a{i}" for i in range(10)}
    excluded = index.search(query, exclude=["a4"])
    assert excluded.scores["a4"] == 0.0
    assert all(np.isfinite(v) and v >= 0 for v in excluded.scores.values())


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_incremental_add_equals_rebuild(kind):
    rng = np.random.default_rng(4)
    feats = random_features(rng, 20, per=200)
    keys = [f"a{i}" for i in range(20)]
    config = load_config(None, shortlist_index=kind, shortlist_nprobe=4)
    incremental = Stage1Index(config)
    for start in range(0, 20, 5):
        incremental.add(keys[start:start + 5], feats[start:start + 5])
    if kind == "flat":
        rebuilt = build_index(keys, feats, config)
    else:  # an IVF index keeps its first training: a rebuild with that same training
        rebuilt = Stage1Index(config)
        rebuilt.add(keys[:5], feats[:5])
        rebuilt.remove(keys[:5])
        rebuilt.add(keys, feats)
        assert rebuilt._trained_on == incremental._trained_on
    assert incremental.num_vectors == rebuilt.num_vectors == 4000
    for q in (0, 7, 19):
        assert incremental.search(feats[q]).scores == rebuilt.search(feats[q]).scores


def test_remove_and_replace():
    rng = np.random.default_rng(5)
    feats = random_features(rng, 6)
    keys = [f"a{i}" for i in range(6)]
    index = build_index(keys, feats, flat_config())
    index.remove(["a2", "missing"])
    assert "a2" not in index and index.num_vectors == 200
    assert "a2" not in index.search(feats[2]).scores
    reference = build_index([k for k in keys if k != "a2"], [f for k, f in zip(keys, feats) if k != "a2"],
                            flat_config())
    assert index.search(feats[0]).scores == reference.search(feats[0]).scores
    index.add(["a0"], [feats[5]])  # same key, new contents: replaced, not duplicated
    assert len(index) == 5 and index.num_vectors == 200


def test_persistence_round_trip_then_incremental(tmp_path):
    rng = np.random.default_rng(6)
    feats = random_features(rng, 8)
    keys = [f"a{i}" for i in range(8)]
    config = flat_config()
    index = build_index(keys[:6], feats[:6], config)
    index.remove(["a1"])
    path = index.save(tmp_path / "index.npz")
    loaded = Stage1Index.load(path, config)
    assert loaded.keys == index.keys and loaded.num_vectors == index.num_vectors
    assert loaded.search(feats[3]).scores == index.search(feats[3]).scores
    added, removed = loaded.sync(keys[2:], lambda missing: [feats[keys.index(k)] for k in missing])
    assert (added, removed) == (2, 1) and sorted(loaded.keys) == sorted(keys[2:])
    with pytest.raises(ValueError, match="another config"):
        Stage1Index.load(path, load_config(None, shortlist_index="flat", shortlist_features=500))


@pytest.mark.parametrize("detector", ["hesaff", "sift"])
def test_stage1_features_on_a_real_photo(photos, detector):
    if detector == "hesaff" and not hesaff.available():
        pytest.skip("pyhesaff is not installed (wbia-lightglue setup-hesaff)")
    chip = next(iter(photos.values()))
    config = load_config(None, shortlist_detector=detector, shortlist_features=300, shortlist_image_size=400)
    feats = extract_stage1_features([chip, np.zeros((4, 4, 3), np.uint8)], config)
    kpts, desc = feats[0]["keypoints"], feats[0]["descriptors"]
    assert desc.dtype == np.uint8 and desc.shape[1] == 128 and 100 < len(desc) <= 300
    # keypoints in the chip's own pixels, spread over it (the 400-px detection was scaled back up)
    assert kpts.min() >= -1 and kpts[:, 0].max() <= chip.shape[1] and kpts[:, 1].max() <= chip.shape[0]
    assert np.ptp(kpts[:, 0]) > 0.5 * chip.shape[1]
    assert "error" in feats[1] and len(feats[1]["descriptors"]) == 0  # a bad chip never fails the others
    uncapped = extract_stage1_features([chip], config.replace(shortlist_features=20000))[0]
    assert len(uncapped["descriptors"]) > 300  # the cap kept a subset of what the detector finds
    if detector == "hesaff":  # the largest regions are kept: a subset of the uncapped rows
        rows = {tuple(r) for r in uncapped["descriptors"]}
        assert all(tuple(r) in rows for r in desc)


def test_rootsift_has_unit_l2_norm():
    sift = np.abs(np.random.default_rng(0).normal(size=(3, 128))).astype(np.float32)
    root = rootsift(sift).astype(np.float64) / 512
    np.testing.assert_allclose((root ** 2).sum(1), 1, atol=0.05)


def test_fused_score_is_finite_for_empty_and_zero_and_bad_inputs():
    for method in ("sum_log1p", "logistic", "lightglue"):
        config = load_config(None, fusion=method, shortlist_k=2)
        lg = np.array([0.0, np.nan, np.inf, -3.0, 5.0])
        s1 = np.array([0.0, 0.0, np.nan, -np.inf, 1e308])
        fused = fuse(lg, s1, [True, True, True, False, False], config)
        assert np.isfinite(fused).all(), (method, fused)
        assert np.isfinite(fuse([], [], [], config)).all()


class ListSource:
    """A pipeline source over given stage-1 scores and a LightGlue function of candidate positions."""

    def __init__(self, stage1, lightglue):
        self.stage1, self.lightglue = list(stage1), lightglue

    def candidates(self, query, mode):
        return list(range(len(self.stage1)))

    def stage1_scores(self, query, candidates):
        return [self.stage1[c] for c in candidates]

    def lightglue_scores(self, query, candidates):
        return self.lightglue(list(candidates))


class FeatureSource(ListSource):
    """LightGlue on real features: the query is features[0]'s dict, candidates index ``database``."""

    def __init__(self, query, database, stage1, config):
        super().__init__(stage1, lambda pos: match_scores(query, [database[p] for p in pos], config))


def test_fusion_orders_shortlist_and_keeps_stage1_order_outside():
    config = load_config(None, shortlist_k=2)
    stage1 = np.array([5.0, 1.0, 9.0, 3.0])
    positions = shortlist_positions(stage1, 2)
    assert positions.tolist() == [2, 0]
    calls = []
    result = score_query(None, ListSource(stage1, lambda pos: calls.append(pos) or [0.0, 40.0]), config)
    assert calls == [[2, 0]]
    assert result.mode == "two_stage"
    assert result.matched.tolist() == [True, False, True, False]
    assert result.lightglue.tolist() == [40.0, 0.0, 0.0, 0.0]
    assert result.scores[0] > result.scores[2] > result.scores[3] > result.scores[1]
    for method in ("logistic", "lightglue"):
        fused = score_query(None, ListSource(stage1, lambda pos: [0.0, 40.0]), config.replace(fusion=method)).scores
        assert fused[0] >= fused[2] >= fused[3] >= fused[1]


def test_fit_logistic_separates_and_stays_monotone():
    rng = np.random.default_rng(7)
    same = rng.random(400) < 0.2
    lg = np.where(same, rng.gamma(5, 20, 400), rng.gamma(2, 5, 400))
    s1 = np.where(same, rng.gamma(3, 30, 400), rng.gamma(3, 10, 400))
    bias, w_lg, w_s1 = fit_logistic(lg, s1, same)
    assert w_lg > 0 and w_s1 > 0 and bias < 0


def test_exhaustive_mode_reproduces_one_stage_scores_exactly(photos):
    config = load_config(None, max_num_keypoints=256, image_size=320, device="cpu", shortlist_k=0)
    feats = extract_features(list(photos.values()), config, progress=False)
    expected = match_scores(feats[0], feats[1:], config)
    result = score_query(None, FeatureSource(feats[0], feats[1:], [3.0, 0.0, 1.0], config), config)
    assert result.mode == "exhaustive" and result.stage1 is None
    assert result.scores.tolist() == expected  # exactly: the same matcher call, no fusion
    assert result.matched.all()


def test_two_stage_with_empty_features_is_finite(photos):
    config = load_config(None, max_num_keypoints=256, image_size=320, device="cpu", shortlist_k=2)
    feats = extract_features(list(photos.values())[:2], config, progress=False)
    empty = {**feats[0], "keypoints": np.zeros((0, 2), np.float32), "descriptors": np.zeros((0, 128), np.float32),
             "keypoint_scores": np.zeros(0, np.float32)}
    result = score_query(None, FeatureSource(feats[0], [empty, feats[1], empty], [0.0, 0.0, 0.0], config), config)
    # no stage-1 evidence at all: every candidate is matched (issue 21), not the first shortlist_k
    assert np.isfinite(result.scores).all() and result.matched.sum() == 3 and result.fallback == "exhaustive"
    result = score_query(None, FeatureSource(empty, [feats[1]], [2.0], config), config)
    assert np.isfinite(result.scores).all()
