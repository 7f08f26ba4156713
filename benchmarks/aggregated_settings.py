"""How the aggregated stage-1 index's candidates and probes were chosen: against exact LNBNN on real photos.

    python benchmarks/aggregated_settings.py --queries 40

The choosing part: the LEFT flanks of ``../shared/data/nyala`` (599 photos at the default stage-1 settings), each of
the first ``--queries`` photos with another photo of its individual as a query against the rest. For each
(candidates, probes) pair: how much of exact LNBNN's top 20 (a flat per-descriptor index over the same photos) the
aggregated index's top 20 keeps, how often the individual is in its top 20 (exact's rate printed first), and the
seconds a query. ``benchmarks/scale.py`` reports the chosen setting on right flanks.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import NYALA, RESULTS  # noqa: E402

from wbia_lightglue.data.dataset import load_dataset  # noqa: E402
from wbia_lightglue.data.store import FeatureStore, annotation_features  # noqa: E402
from wbia_lightglue.engine.config import load_config  # noqa: E402
from wbia_lightglue.engine.stage1 import AggregatedIndex, build_index  # noqa: E402

TOP = 20


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--candidates", type=int, nargs="+", default=[100, 200, 400])
    parser.add_argument("--probes", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--store", type=Path, default=RESULTS / "scale" / "store")
    args = parser.parse_args(list(argv) or None)
    config = load_config(None)
    dataset = load_dataset(NYALA)
    left = [a for a in dataset.annotations if a.attributes.get("side") == "left"]
    stored = annotation_features(left, FeatureStore(args.store), config, kind="stage1", progress=True)
    keys, feats = stored.keys, stored.features
    individual = {k: a.individual for k, a in zip(keys, stored.annotations)}
    queries = [k for k in keys if sum(individual[o] == individual[k] for o in keys) >= 2][:args.queries]
    flat = build_index(keys, feats, load_config(None, shortlist_index="flat"))
    by_key = dict(zip(keys, feats))

    def top(scores: dict, query: str) -> list:
        return sorted((k for k in scores if k != query), key=lambda k: -scores[k])[:TOP]

    exact = {q: top(flat.search(by_key[q], exclude=[q]).scores, q) for q in queries}
    print(f"{len(keys)} left-flank photos, {len(queries)} queries; exact LNBNN finds the individual in its top "
          f"{TOP} for {np.mean([any(individual[k] == individual[q] for k in exact[q]) for q in queries]):.3f}")
    index = AggregatedIndex(config)
    index.add(keys, feats)
    for candidates in args.candidates:
        for probes in args.probes:
            kept, found, start = [], [], time.perf_counter()
            for q in queries:
                ranked = top(index.search(by_key[q], exclude=[q], candidates=candidates, probes=probes).scores, q)
                kept.append(len(set(ranked) & set(exact[q])) / TOP)
                found.append(any(individual[k] == individual[q] for k in ranked))
            print(f"candidates {candidates:4d} probes {probes}: keeps {np.mean(kept):.3f} of exact's top {TOP}, "
                  f"individual {np.mean(found):.3f}, {(time.perf_counter() - start) / len(queries):.2f} s a query")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
