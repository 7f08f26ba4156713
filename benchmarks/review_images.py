"""Review images: render time per candidate, and the README's heatmask picture.

    python benchmarks/review_images.py                         # 10 nyala pairs, default config (2048 kp, 512 px)
    python benchmarks/review_images.py --pairs 20 --keypoints 256 --image-size 256

WBIA draws three review images for each candidate it shows (``matches``, ``heatmask``, ``clean``) with the
plugin's ``render_single_result``. This times the same renderer (``evaluation.drawing.render_pair``) on
nyala photos used as chips (whole-photo annotations, as the server test builds them), from one LightGlue
result per pair, next to the time LightGlue itself took for that pair (one pair per call, models warm).
The first pair is two photos of the same individual; its heatmask is written to ``--figure``.
"""
from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path
from typing import Dict, List, Tuple

import cv2
import numpy as np

from wbia_lightglue import core
from wbia_lightglue.evaluation import drawing

HERE = Path(__file__).resolve().parent
NYALA = HERE.parent.parent / "shared" / "data" / "nyala"
VERSIONS = ("matches", "heatmask", "clean")


def nyala_pairs(count: int) -> List[Tuple[Path, Path]]:
    """Pairs of left-flank photos of one individual each (first sightings first), individuals in id order."""
    left: Dict[str, List[str]] = {}
    with (NYALA / "labels.csv").open() as fh:
        for row in csv.DictReader(fh):
            if row["side"] == "left":
                left.setdefault(row["individual"], []).append(row["path"])
    pairs = []
    for individual in sorted(left, key=int):
        paths = sorted(left[individual], key=lambda p: int(Path(p).name.split("_")[0]))
        if len(paths) >= 2:
            pairs.append((NYALA / paths[0], NYALA / paths[1]))
    return pairs[:count]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--keypoints", type=int, default=2048)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3, help="renders per version and pair (the median is kept)")
    parser.add_argument("--figure", type=Path, default=HERE / "figures" / "review_heatmask.jpg")
    parser.add_argument("--figure-size", type=int, default=300, help="height of each chip in the figure, pixels")
    args = parser.parse_args()

    config = core.resolve_config({"max_num_keypoints": args.keypoints, "image_size": args.image_size})
    pairs = nyala_pairs(args.pairs)
    if not pairs:
        raise SystemExit(f"no nyala photos under {NYALA}")
    print(f"{len(pairs)} pairs, {args.keypoints} keypoints, image size {args.image_size}, torch on CPU")
    print(f"{'pair':<28} {'matches':>7} {'LightGlue ms':>12} " + " ".join(f"{v + ' ms':>12}" for v in VERSIONS)
          + f" {'all three ms':>12}")
    totals: Dict[str, List[float]] = {v: [] for v in (*VERSIONS, "lightglue", "render")}
    for index, (path0, path1) in enumerate(pairs):
        chips = [cv2.imread(str(path0)), cv2.imread(str(path1))]
        feats = core.extract_features(chips, config, progress=False)
        core.match_pairs(feats[0], [feats[1]], config, return_matches=True)  # warm-up (first call builds models)
        start = time.perf_counter()
        result = core.match_pairs(feats[0], [feats[1]], config, return_matches=True)[0]
        lightglue_ms = 1000 * (time.perf_counter() - start)
        row = {}
        for version in VERSIONS:
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                image = drawing.render_pair(chips[0], chips[1], feats[0]["keypoints"], feats[1]["keypoints"],
                                            result.matches, result.confidences, version)
                times.append(1000 * (time.perf_counter() - start))
            row[version] = float(np.median(times))
            totals[version].append(row[version])
        totals["lightglue"].append(lightglue_ms)
        totals["render"].append(sum(row.values()))
        name = f"{path0.parent.name}: {path0.stem} / {path1.stem}"
        print(f"{name:<28} {result.num_matches:>7} {lightglue_ms:>12.0f} "
              + " ".join(f"{row[v]:>12.0f}" for v in VERSIONS) + f" {sum(row.values()):>12.0f}")
        if index == 0 and args.figure:
            image = drawing.render_pair(chips[0], chips[1], feats[0]["keypoints"], feats[1]["keypoints"],
                                        result.matches, result.confidences, "heatmask", max_size=args.figure_size)
            args.figure.parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(args.figure), image, [cv2.IMWRITE_JPEG_QUALITY, 85])
            print(f"  heatmask of this pair written to {args.figure} ({args.figure.stat().st_size // 1024} KB)")
    print("median over pairs: LightGlue {:.0f} ms; render matches {:.0f} / heatmask {:.0f} / clean {:.0f} ms; "
          "all three {:.0f} ms per candidate".format(
              np.median(totals["lightglue"]), *(np.median(totals[v]) for v in VERSIONS), np.median(totals["render"])))


if __name__ == "__main__":
    main()
