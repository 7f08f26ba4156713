"""Extraction, bad input, the feature cache and the model registry."""
import random
import threading

import cv2
import numpy as np
import pytest
from images import textured_chip

from wbia_lightglue import core
from wbia_lightglue.core import FeatureCache, FeatureMismatchError, InvalidChipError

SMALL = core.Config(dict(max_num_keypoints=128, image_size=256, device="cpu"))


# ---------------------------------------------------------------------------- extraction
def test_features_have_documented_shapes_and_chip_coordinates():
    chip = textured_chip(0, size=(150, 400))
    [feats] = core.extract_features([chip], SMALL, progress=False)
    assert feats["keypoints"].shape == (128, 2) and feats["keypoints"].dtype == np.float32
    assert feats["descriptors"].shape == (128, 128)
    assert feats["keypoint_scores"].shape == (128,)
    assert tuple(feats["image_size"]) == (400, 150)
    assert feats["fingerprint"] == SMALL.feature_fingerprint
    x, y = feats["keypoints"].T
    assert x.min() >= -0.5 and x.max() <= 400 and y.min() >= -0.5 and y.max() <= 150
    np.testing.assert_allclose(np.linalg.norm(feats["descriptors"], axis=1), 1, atol=1e-4)


def test_keypoints_map_back_to_the_chips_own_pixels():
    # B is A upscaled exactly as extraction would: both feed the network the same image, so A's
    # keypoints must be B's mapped through the pixel-centre convention.
    small = textured_chip(1, size=(96, 128))
    big = cv2.resize(small, (256, 192), interpolation=cv2.INTER_LINEAR)
    fa, fb = core.extract_features([small, big], SMALL, progress=False)
    np.testing.assert_allclose(fa["keypoints"], (fb["keypoints"] + 0.5) / 2 - 0.5, atol=1e-3)
    np.testing.assert_allclose(fa["descriptors"], fb["descriptors"], atol=1e-5)


def test_grayscale_and_bgra_chips_are_accepted():
    bgr = textured_chip(2)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    bgra = cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)
    f_bgr, f_gray, f_gray3, f_bgra = core.extract_features([bgr, gray, gray[:, :, None], bgra], SMALL,
                                                           progress=False)
    assert len(f_gray["keypoints"]) == len(f_gray3["keypoints"]) == 128
    np.testing.assert_array_equal(f_bgra["keypoints"], f_bgr["keypoints"])


BAD_CHIPS = {
    "empty": (np.zeros((0, 0, 3), np.uint8), "empty"),
    "one pixel": (np.zeros((1, 1, 3), np.uint8), "1x1 pixels"),
    "float": (np.zeros((64, 64, 3), np.float32), "dtype float32"),
    "nan": (np.full((64, 64, 3), np.nan), "contains NaN"),
    "uint16": (np.zeros((64, 64, 3), np.uint16), "dtype uint16"),
    "five channels": (np.zeros((64, 64, 5), np.uint8), "shape (64, 64, 5)"),
    "not an array": ([[1, 2], [3, 4]], "numpy array"),
    "sliver": (np.zeros((8, 2000, 3), np.uint8), "aspect ratio"),
}


@pytest.mark.parametrize("name", list(BAD_CHIPS))
def test_bad_chip_raises_a_clear_error_naming_the_annotation(name):
    chip, needle = BAD_CHIPS[name]
    with pytest.raises(InvalidChipError) as err:
        core.extract_features([chip], SMALL, keys=["aid 17"], on_error="raise", progress=False)
    assert "annotation 'aid 17'" in str(err.value)
    assert needle in str(err.value)


def test_one_bad_chip_never_fails_the_others_in_its_batch(caplog):
    good = textured_chip(3)
    chips = [good, np.zeros((0, 0, 3), np.uint8), np.full((64, 64, 3), np.nan), warp_copy(good)]
    feats = core.extract_features(chips, SMALL, keys=[1, 2, 3, 4], progress=False)
    assert [len(f["keypoints"]) for f in feats] == [128, 0, 0, 128]
    assert "annotation 2" in feats[1]["error"] and "annotation 3" in feats[2]["error"]
    assert "annotation 2" in caplog.text and "annotation 3" in caplog.text
    # screening off: the mirrored copy is a weak pair, which screening would stop after 2 layers
    scores = core.match_scores(feats[0], feats[1:], SMALL.replace(screen_layer=0))
    assert scores[0] == 0.0 and scores[1] == 0.0 and scores[2] > 1.0


def warp_copy(chip):
    return np.ascontiguousarray(chip[:, ::-1])  # mirror: still textured, different keypoints


def test_features_from_another_config_are_refused():
    [feats] = core.extract_features([textured_chip(4)], SMALL, progress=False)
    other = SMALL.replace(max_num_keypoints=64)
    with pytest.raises(FeatureMismatchError, match="database entry 0.*another config"):
        core.match_scores({**feats, "fingerprint": other.feature_fingerprint}, [feats], other)
    broken = {**feats, "descriptors": feats["descriptors"][:, :64]}
    with pytest.raises(FeatureMismatchError, match="database entry 1.*N x 128"):
        core.match_scores(feats, [feats, broken], SMALL)


# ---------------------------------------------------------------------------- cache
def fake_features(n=10, key=0):
    return {"keypoints": np.full((n, 2), key, np.float32), "descriptors": np.zeros((n, 128), np.float32)}


def test_cache_returns_every_feature_even_beyond_its_bound():
    cache = FeatureCache(max_entries=3)
    computed = []

    def compute(keys):
        computed.extend(keys)
        return [fake_features(key=k) for k in keys]

    out = cache.get_or_compute(list(range(10)), "fp", compute)
    assert [int(f["keypoints"][0, 0]) for f in out] == list(range(10))
    assert len(cache) == 3 and cache.stats()["evictions"] == 7
    out = cache.get_or_compute([9, 8, 0], "fp", compute)
    assert [int(f["keypoints"][0, 0]) for f in out] == [9, 8, 0]
    assert computed == list(range(10)) + [0]  # 9 and 8 were cached, 0 was evicted
    stats = cache.stats()
    assert (stats["hits"], stats["misses"]) == (2, 11)


def test_cache_keys_include_the_fingerprint_and_duplicates_are_computed_once():
    cache = FeatureCache(max_entries=10)
    calls = []
    cache.get_or_compute([1, 1, 2], "a", lambda keys: calls.append(list(keys)) or [fake_features() for _ in keys])
    cache.get_or_compute([1], "b", lambda keys: calls.append(list(keys)) or [fake_features() for _ in keys])
    assert calls == [[1, 2], [1]]


def test_cache_byte_bound_and_invalidation():
    one = core.features_nbytes(fake_features(10))
    cache = FeatureCache(max_entries=100, max_bytes=3 * one)
    for k in range(5):
        cache.put(k, "fp", fake_features(10))
    assert len(cache) == 3 and cache.stats()["bytes"] <= 3 * one
    assert cache.invalidate([3, 4, 99]) == 2 and len(cache) == 1


def test_cache_does_not_pin_features_of_unusable_chips():
    cache = FeatureCache(max_entries=10)
    bad = {**fake_features(0), "error": "annotation 1: the chip is empty"}
    assert cache.get_or_compute([1], "fp", lambda keys: [bad])[0] is bad
    assert len(cache) == 0


def test_cache_does_not_keep_features_computed_while_their_annotation_changed():
    cache = FeatureCache(max_entries=10)
    stale = {**fake_features(5), "stale": True}
    assert cache.get_or_compute([1], "fp", lambda keys: [stale])[0] is stale
    assert len(cache) == 0 and not core.cacheable(stale) and core.cacheable(fake_features(5))


def test_cache_composite_keys_are_invalidated_by_their_owner():
    # WBIA keys features by (annotation UUID, visual UUID): an edit makes a new key; the owner drops all
    cache = FeatureCache(max_entries=10)
    cache.put(("annot-a", "look-1"), "fp", fake_features())
    cache.put(("annot-a", "look-2"), "fp", fake_features())
    cache.put(("annot-b", "look-1"), "fp", fake_features())
    assert cache.get(("annot-a", "look-3"), "fp") is None
    assert cache.invalidate(["annot-a"]) == 2 and len(cache) == 1
    assert cache.get(("annot-b", "look-1"), "fp") is not None


def test_match_cache_keeps_only_drawable_results_within_its_bounds():
    def result(k, n=100):
        return core.MatchResult(score=float(k), num_matches=n, stop_layer=9,
                                matches=np.zeros((n, 2), np.int64), confidences=np.ones(n, np.float32))

    cache = core.MatchCache(max_entries=3, max_bytes=1 << 20)
    cache.put("no matches", core.MatchResult(score=1.0, num_matches=3, stop_layer=9))
    assert len(cache) == 0  # nothing to draw from
    for k in range(5):
        cache.put(k, result(k))
    assert len(cache) == 3 and cache.get(0) is None and cache.get(4).score == 4.0
    cache.get(2)  # most recently used now
    cache.put(5, result(5))
    assert cache.get(3) is None and cache.get(2) is not None
    small = core.MatchCache(max_entries=100, max_bytes=3000)  # one result is 100 x 20 bytes + overhead
    for k in range(3):
        small.put(k, result(k))
    assert len(small) == 1 and small.get(2) is not None


def test_cache_and_registry_survive_eight_threads():
    cache = FeatureCache(max_entries=20)
    registry = core.ModelRegistry()
    builds = []
    errors = []

    def build(key):
        builds.append(key)
        return object()

    def hammer(seed):
        rng = random.Random(seed)
        try:
            for _ in range(300):
                keys = [rng.randrange(50) for _ in range(rng.randrange(1, 8))]
                out = cache.get_or_compute(keys, rng.choice("ab"), lambda ks: [fake_features(key=k) for k in ks])
                assert [int(f["keypoints"][0, 0]) for f in out] == keys
                assert len(cache) <= 20
                key = rng.randrange(4)
                registry.get(key, lambda key=key: build(key))
                if rng.random() < 0.05:
                    cache.invalidate(keys)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(builds) == [0, 1, 2, 3]  # each model built exactly once
    assert len(cache) <= 20


def test_real_models_are_built_once_per_config_under_threads():
    configs = [SMALL, SMALL.replace(max_num_keypoints=64)]
    got = []

    def fetch(config):
        got.append(id(core.get_extractor(config)))

    threads = [threading.Thread(target=fetch, args=(configs[i % 2],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(got)) == 2
    assert core.get_extractor(configs[0]) is core.get_extractor(configs[0].replace(filter_threshold=0.2))


def test_name_scores():
    scores = [1.0, 5.0, 2.0, 4.0, 3.0]
    names = ["a", "a", "b", "b", "b"]
    assert core.name_scores(scores, names, "max") == {"a": 5.0, "b": 4.0}
    assert core.name_scores(scores, names, "sum") == {"a": 6.0, "b": 9.0}
    assert core.name_scores(scores, names, "mean_top3") == {"a": 3.0, "b": 3.0}
