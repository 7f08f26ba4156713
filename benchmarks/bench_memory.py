"""Memory: bytes per cached annotation, and the peak memory of a 1-vs-N identification.

    python benchmarks/bench_memory.py                      # 512 and 2048 keypoints, 1-vs-1000 at 512
    python benchmarks/bench_memory.py --database 200 --match-keypoints 2048

The database is built from real photos (nyala when ../shared is present, see bench_common.load_chips);
to reach N entries without N extractions, each extracted annotation is reused with its keypoints
shifted by a few pixels (a different feature set to the matcher, same size and cost). The peak is the
process's maximum resident set size, measured in a fresh subprocess per figure.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def per_annotation_bytes(keypoints: int) -> int:
    from bench_common import load_chips

    from wbia_lightglue import core

    config = core.Config(dict(max_num_keypoints=keypoints))
    feats = core.extract_features(load_chips(3), config, progress=False)
    cache = core.FeatureCache(max_entries=100)
    for i, f in enumerate(feats):
        cache.put(i, config.feature_fingerprint, f)
    return cache.stats()["bytes"] // len(feats)


def one_vs_many(keypoints: int, database: int) -> dict:
    """Run in a fresh process: peak RSS before and after a 1-vs-``database`` identification."""
    from bench_common import load_chips

    from wbia_lightglue import core

    config = core.Config(dict(max_num_keypoints=keypoints))
    base = core.extract_features(load_chips(9), config, progress=False)
    query, seeds = base[0], base[1:]
    rng = np.random.default_rng(0)
    db = []
    for i in range(database):
        f = dict(seeds[i % len(seeds)])
        f["keypoints"] = (f["keypoints"] + rng.normal(0, 2, f["keypoints"].shape)).astype(np.float32)
        db.append(f)
    core.match_scores(query, db[:2], config)  # models loaded and warmed: measure the identification
    before = rss_mib()
    start = time.perf_counter()
    scores = core.match_scores(query, db, config)
    return {"keypoints": keypoints, "database": database, "seconds": time.perf_counter() - start,
            "rss_before_mib": before, "peak_rss_mib": rss_mib(), "scores": len(scores),
            "feature_mib": sum(core.features_nbytes(f) for f in db) / 2**20}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keypoints", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--database", type=int, default=1000)
    parser.add_argument("--match-keypoints", type=int, default=512)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one_vs_many(args.match_keypoints, args.database)))
        return
    for k in args.keypoints:
        b = per_annotation_bytes(k)
        print(f"cached annotation at {k} keypoints: {b:,} bytes ({b / 2**20:.2f} MiB; 10,000 annotations = "
              f"{10000 * b / 2**30:.1f} GiB)", flush=True)
    out = subprocess.run([sys.executable, __file__, "--child", "--database", str(args.database),
                          "--match-keypoints", str(args.match_keypoints)], capture_output=True, text=True, check=True)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"1-vs-{row['database']} at {row['keypoints']} keypoints: {row['seconds']:.1f} s, "
          f"database features {row['feature_mib']:.0f} MiB, process peak {row['peak_rss_mib']:.0f} MiB "
          f"(after loading models and features: {row['rss_before_mib']:.0f} MiB)")


if __name__ == "__main__":
    main()
