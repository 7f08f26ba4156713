"""Score screening (``screen_layer`` / ``screen_score``) on the nyala protocol: accuracy and work saved.

LightGlue scores a pair at the layer it stops; upstream stops when 95% of the points are confident, which
for a pair of different animals usually takes 4-7 of the 9 layers. Screening adds a second exit: after
``screen_layer`` layers, a pair whose confidence sum is already below ``screen_score`` stops there.

One adaptive pass per keypoint count over the fixed subset of ``quality_nyala.py`` (same-flank pairs)
records, for every pair, the final (upstream-identical) score, the layer it stopped at, and its
confidence sum after every layer it ran (cached in ``<output>/trace_<keypoints>.npz``). Every
(layer, threshold) setting is then replayed from the trace: its scores, Rank-1 / Rank-5 / mAP with the
``max`` name score beside the unscreened baseline, and the transformer layers it runs (pair-layers, the
unit of cost) as a fraction of the baseline's.

    python benchmarks/screen_nyala.py                       # 512 and 1024 keypoints (~30 min on 2 cores)
    python benchmarks/screen_nyala.py --individuals 6 --keypoints 256      # a smoke run
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np
from bench_common import (
    DEFAULT_INDIVIDUALS,
    DEFAULT_MAX_PER_FLANK,
    NYALA,
    RESULTS,
    score_matrix,
    select_subset,
    subset_features,
)

from wbia_lightglue import core
from wbia_lightglue.engine.match_types import LayerScores
from wbia_lightglue.evaluation.protocol import evaluate_scores, later_partners

logger = logging.getLogger("wbia_lightglue")

DEFAULT_OUTPUT = RESULTS / "screen_nyala"
LAYERS = (1, 2, 3)
THRESHOLDS = (0.5, 1, 2, 3, 4, 6, 8, 10, 12, 15)


def trace_subset(feats: Sequence[dict], groups: Sequence[str], config: core.Config, cache: Path,
                 meta: dict) -> Dict[str, np.ndarray]:
    """pairs (P x 2), final score, stop layer and per-layer scores (P x n_layers, NaN = not run)."""
    if cache.is_file():
        with np.load(cache) as data:
            if json.loads(str(data["meta"])) == meta:
                return {k: data[k] for k in ("pairs", "final", "stop", "layers", "seconds")}
    from tqdm.auto import tqdm

    exact = config.replace(screen_layer=0)
    matcher = core.get_matcher(exact)  # the product's matcher, upstream's exact forward
    settings = core.match_settings(exact)
    n_layers = matcher.n_layers
    pairs, final, stop, layers = [], [], [], []
    seconds = 0.0
    for i in tqdm(range(len(feats)), desc=f"trace {config['max_num_keypoints']} kp", unit="query"):
        partners = later_partners(i, len(feats), groups)
        if not partners:
            continue
        trace: Dict[int, Dict[int, float]] = {}  # position among the partners -> {layer: confidence sum}

        def record(scores: LayerScores, trace: Dict[int, Dict[int, float]] = trace) -> None:
            for position, total in zip(scores.positions, scores.confidence_sums):
                trace.setdefault(position, {})[scores.layer] = total

        start = time.perf_counter()
        results = matcher.match(feats[i], [feats[j] for j in partners], settings, layer_hook=record)
        seconds += time.perf_counter() - start
        for position, (j, result) in enumerate(zip(partners, results)):
            per_layer = np.full(n_layers, np.nan)
            for layer, value in trace.get(position, {}).items():
                per_layer[layer - 1] = value
            per_layer[result.stop_layer - 1] = result.score
            pairs.append((i, j))
            final.append(result.score)
            stop.append(result.stop_layer)
            layers.append(per_layer)
    out = {"pairs": np.array(pairs), "final": np.array(final), "stop": np.array(stop),
           "layers": np.array(layers), "seconds": np.float64(seconds)}
    np.savez_compressed(cache, meta=np.array(json.dumps(meta)), **out)
    return out


def replay(trace: Dict[str, np.ndarray], layer: int, threshold: float):
    """Scores and pair-layers run with screening at ``layer`` / ``threshold``."""
    at = trace["layers"][:, layer - 1]
    screened = (trace["stop"] > layer) & (at < threshold)
    scores = np.where(screened, at, trace["final"])
    work = np.where(screened, layer, trace["stop"]).sum()
    return scores, int(work), int(screened.sum())


def run_keypoints(annots, keypoints: int, output: Path, layers: Sequence[int], thresholds: Sequence[float],
                  cache_dir) -> List[dict]:
    config = core.Config({"max_num_keypoints": keypoints})
    stored = subset_features(annots, config, cache_dir, progress=False)
    feats, keys = stored.features, stored.keys
    labels = [a.individual for a in annots]
    groups = [a.attributes["side"] for a in annots]
    meta = {"photos": keys, "groups": groups, "match_fingerprint": config.match_fingerprint}
    trace = trace_subset(feats, groups, config, output / f"trace_{keypoints}.npz", meta)
    n = len(annots)
    same = np.array([labels[i] == labels[j] for i, j in trace["pairs"]])

    def evaluate(values):
        rep = evaluate_scores(score_matrix(n, trace["pairs"], values), labels, groups=groups, ranks=(1, 5))
        return rep.cmc[1], rep.cmc[5], rep.mean_average_precision

    base = evaluate(trace["final"])
    base_work = int(trace["stop"].sum())
    rows = [dict(keypoints=keypoints, layer=0, threshold=0.0, rank1=base[0], rank5=base[1], mAP=base[2],
                 work=1.0, screened=0, true_screened=0)]
    for layer in layers:
        for threshold in thresholds:
            scores, work, screened = replay(trace, layer, threshold)
            r1, r5, ap = evaluate(scores)
            true_screened = int((same & (scores != trace["final"])).sum())
            rows.append(dict(keypoints=keypoints, layer=layer, threshold=threshold, rank1=r1, rank5=r5, mAP=ap,
                             work=work / base_work, screened=screened, true_screened=true_screened))
    logger.info("%d kp: %d pairs (%d same individual), mean stop layer %.2f, trace pass %.0f s", keypoints,
                len(trace["pairs"]), int(same.sum()), trace["stop"].mean(), float(trace["seconds"]))
    return rows


def main(argv=None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--keypoints", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--individuals", type=int, default=DEFAULT_INDIVIDUALS)
    parser.add_argument("--max-per-flank", type=int, default=DEFAULT_MAX_PER_FLANK)
    parser.add_argument("--skip-individuals", type=int, default=0,
                        help="start after this many eligible individuals (40: the held-out set; use its own --output)")
    parser.add_argument("--layers", type=int, nargs="+", default=list(LAYERS))
    parser.add_argument("--thresholds", type=float, nargs="+", default=list(THRESHOLDS))
    parser.add_argument("--cache-dir", type=Path)
    args = parser.parse_args(argv)
    args.output.mkdir(parents=True, exist_ok=True)
    annots = select_subset(NYALA, args.individuals, args.max_per_flank,
                                         args.skip_individuals)
    rows = []
    for k in args.keypoints:
        rows += run_keypoints(annots, k, args.output, args.layers, args.thresholds, args.cache_dir)
    print(f"nyala subset of quality_nyala.py (skipping {args.skip_individuals} individuals): {len(annots)} photos, "
          f"{len({a.individual for a in annots})} individuals; name score max")
    print(f"{'kp':>5} {'layer':>5} {'min score':>9} {'R-1':>6} {'R-5':>6} {'mAP':>6} {'work':>6} "
          f"{'screened':>8} {'true':>5}")
    for r in rows:
        print(f"{r['keypoints']:>5} {r['layer'] or '-':>5} {r['threshold']:>9g} {100 * r['rank1']:>6.1f} "
              f"{100 * r['rank5']:>6.1f} {r['mAP']:>6.3f} {r['work']:>6.2f} {r['screened']:>8} "
              f"{r['true_screened']:>5}")
    (args.output / "screen_nyala.json").write_text(json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
