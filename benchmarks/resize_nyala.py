"""Which downsizing serves accuracy: OpenCV INTER_AREA (the product's) vs upstream ALIKED's antialiased bilinear.

Same subset and protocol as ``two_stage.py`` (nyala-fullres, first ``--per-flank`` photos of every flank with
>= 2, within-flank 1-vs-all, name score max): ALIKED is extracted with each method (``engine.extraction.
RESIZE_METHOD``; separate feature stores) and every within-flank pair of the chosen part is matched with
exhaustive LightGlue. The ``area`` pair scores are shared with ``two_stage.py`` (same cache file).

    python benchmarks/resize_nyala.py --part B --keypoints 1024
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import two_stage  # noqa: E402

from wbia_lightglue.data.store import FeatureStore, annotation_features  # noqa: E402
from wbia_lightglue.engine import extraction  # noqa: E402
from wbia_lightglue.engine.config import load_config  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=two_stage.OUTPUT)
    parser.add_argument("--keypoints", type=int, default=1024)
    parser.add_argument("--per-flank", type=int, default=2)
    parser.add_argument("--part", choices=("A", "B"), default="B")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = load_config(None, max_num_keypoints=args.keypoints, device="cpu")
    part = dict(zip("AB", two_stage.select(two_stage.FULLRES, args.per_flank)))[args.part]
    rows = {}
    for method in extraction.RESIZE_METHODS:
        extraction.RESIZE_METHOD = method
        store = FeatureStore(args.output / ("store" if method == "area" else f"store_{method}"))
        stored = annotation_features(part, store, config, progress=True)
        groups = [a.attributes["side"] for a in stored.annotations]
        suffix = "" if method == "area" else f"_{method}"
        cache = two_stage.PairCache(args.output / f"lightglue_{args.part}_{args.keypoints}{suffix}.json",
                                    stored.features, config)
        rep = two_stage.report(cache.matrix(len(stored.annotations), groups), stored.annotations)
        rows[method] = {"rank1": rep.rank1, "rank5": rep.cmc[5], "mAP": rep.mean_average_precision,
                        "queries": rep.num_answerable, "photos": len(stored.annotations)}
        print(method, rows[method], flush=True)
    extraction.RESIZE_METHOD = "area"
    (args.output / f"resize_{args.part}_{args.keypoints}.json").write_text(json.dumps(rows, indent=1))
    print(f"| resize (part {args.part}, {args.keypoints} kp) | R-1 | R-5 | mAP |\n|---|---:|---:|---:|")
    for method, r in rows.items():
        print(f"| {method} | {100 * r['rank1']:.1f} | {100 * r['rank5']:.1f} | {r['mAP']:.3f} |")
    assert np.isfinite([r["mAP"] for r in rows.values()]).all()


if __name__ == "__main__":
    main()
