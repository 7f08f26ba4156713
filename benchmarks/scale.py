"""Stage 1 at catalogue scale: build, grow, query and recall of the stage-1 index at N annotations.

    python benchmarks/scale.py --annotations 100000 --json benchmarks/results/scale/n100000.json

The database is the real nyala photos (``../shared/data/nyala``, stage-1 features at the DEFAULT settings:
Hessian-affine at 500 px, up to 4,000 descriptors) planted among synthetic annotations up to N. A synthetic
annotation is drawn from a real photo of an individual that is neither a query nor planted (its template): 85%
of the template's descriptors and 15% of another template's, so its count is a real photo's, each with Gaussian
noise whose size is the median distance of a real descriptor to its nearest neighbour in photos of other
individuals (so that copies of one template are as far apart as unrelated real photos, not near-duplicates),
its keypoints moved by a random similarity transform. Synthetic features are written once into a feature store
under ``--work`` (about 200 KB an annotation: 20 GB at 10^5) and reused by every N.

Phases, each in its own process so that ``peak_rss_mb`` is the index's own (the largest of build, add, query):

* ``build``: the product's ``synced_index`` over N - 1,000 annotations from the cached features (streamed a
  chunk at a time), saved: ``build_s``;
* ``add``: load it, add the last 1,000 annotations, save: ``add_1000_s`` (and ``load_s``);
* ``query``: stage 1 of each real query photo (the query's stage-1 features are extracted beforehand, as the
  pipeline does): ``query_p50_s`` / ``query_p95_s``; top 20 kept for the recall phase, also at other candidate
  counts (``--candidates``);
* ``exact``: exact LNBNN over EVERY vector of the same index (streamed from its vectors file, exact kNN) for the
  first ``--exact-queries`` queries: ``recall_at_20`` = |approximate top 20 & exact top 20| / 20, averaged; and
  how often a photo of the query's individual (same flank) is in each top 20.

Time it on a quiet machine (nothing else CPU-heavy running).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import NYALA, RESULTS, machine  # noqa: E402

from wbia_lightglue.data.dataset import load_dataset  # noqa: E402
from wbia_lightglue.data.store import FeatureStore, annotation_features  # noqa: E402
from wbia_lightglue.engine.config import load_config  # noqa: E402
from wbia_lightglue.engine.stage1 import (  # noqa: E402
    AggregatedIndex,
    Neighbours,
    build_index,
    load_index,
    merge_neighbours,
    score_neighbours,
    synced_index,
)
from wbia_lightglue.engine.stage1.aggregated import neighbour_table  # noqa: E402

WORK = RESULTS / "scale"
ADD = 1000
TOP = 20


def top_keys(result: Any) -> List[str]:
    """The ``TOP`` best-scored annotations of a stage-1 search."""
    return sorted(result.scores, key=lambda k: -result.scores[k])[:TOP]


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ============================================================================ the plan: real photos + synthetic
def real_photos(base: Path, config: Any) -> Dict[str, Any]:
    """Stage-1 features of every nyala photo (extracted once into ``base/store``) with their labels."""
    dataset = load_dataset(NYALA)
    stored = annotation_features(dataset.annotations, FeatureStore(base / "store"), config, kind="stage1",
                                 progress=True)
    return {"annotations": stored.annotations, "features": stored.features, "keys": stored.keys}


def make_plan(base: Path, work: Path, annotations: int, queries: int, config: Any) -> Dict[str, Any]:
    """Which real photos are queries, planted or templates; the synthetic keys; written to ``work/plan.json``."""
    real = real_photos(base, config)
    groups: Dict[tuple, List[int]] = defaultdict(list)
    for i, annot in enumerate(real["annotations"]):
        groups[(annot.individual, annot.attributes.get("side", ""))].append(i)
    # queries: the first photo of the first `queries` (individual, right flank) groups with >= 2 photos; the rest of
    # those individuals' photos are planted; the other individuals' photos are the synthetic templates
    query_rows: List[int] = []
    planted_rows: List[int] = []
    query_individuals = set()
    for group, rows in groups.items():  # right flanks: the index's settings were chosen on left flanks
        if group[1] == "right" and len(rows) >= 2 and len(query_rows) < queries:
            query_rows.append(rows[0])
            query_individuals.add(group[0])
    for group, rows in groups.items():
        if group[0] in query_individuals:
            planted_rows.extend(r for r in rows if r not in query_rows)
    template_rows = [i for i in range(len(real["keys"])) if real["annotations"][i].individual not in query_individuals]
    synthetic = annotations - len(planted_rows)
    if synthetic < ADD:
        raise SystemExit(f"--annotations {annotations} leaves no room for {ADD} synthetic annotations")
    synthetic_keys = [hashlib.sha256(f"synthetic {i}".encode()).hexdigest() for i in range(synthetic)]
    counts = [len(f["descriptors"]) for f in real["features"]]
    plan = {
        "annotations": annotations,
        "queries": [real["keys"][i] for i in query_rows],
        "query_groups": [[real["annotations"][i].individual, real["annotations"][i].attributes.get("side", "")]
                         for i in query_rows],
        "planted": [real["keys"][i] for i in planted_rows],
        "planted_groups": [[real["annotations"][i].individual, real["annotations"][i].attributes.get("side", "")]
                           for i in planted_rows],
        "templates": [real["keys"][i] for i in template_rows],
        "synthetic": synthetic_keys,
        "default_features_per_annotation": float(np.mean(counts)),
        "real_photos": len(counts),
    }
    # the database in insertion order: planted real photos spread among the synthetic ones; the last ADD are added
    rng = np.random.default_rng(0)
    database = plan["planted"] + synthetic_keys
    order = rng.permutation(len(database))
    plan["database"] = [database[i] for i in order]
    (work / "plan.json").write_text(json.dumps(plan))
    return plan


def noise_scale(features: Sequence[Mapping[str, Any]], rng: np.random.Generator) -> float:
    """Median distance of a real descriptor to its nearest neighbour among 20 photos of other photos, / sqrt(128):
    the per-component Gaussian noise that puts a synthetic copy as far from its template as an unrelated photo."""
    import faiss

    picks = rng.choice(len(features), 21, replace=False)
    probe = np.asarray(features[picks[0]]["descriptors"], np.float32)[:500]
    pool = np.concatenate([features[i]["descriptors"] for i in picks[1:]]).astype(np.float32)
    dist2, _ = faiss.knn(probe, pool, 1)
    return float(np.median(np.sqrt(dist2[:, 0])) / np.sqrt(probe.shape[1]))


def generate(base: Path, plan: Mapping[str, Any], config: Any) -> Dict[str, Any]:
    """Write the synthetic annotations' stage-1 features into ``base/synthetic`` (those already there are kept:
    synthetic annotation i is the same whatever N, so sizes share them)."""
    from tqdm import tqdm

    store = FeatureStore(base / "synthetic")
    fingerprint = FeatureStore.fingerprint(config, "stage1")
    real_store = FeatureStore(base / "store")
    templates = [real_store.load(k, fingerprint) for k in plan["templates"]]
    sigma = noise_scale(templates, np.random.default_rng(1))
    table = np.clip(np.round(np.random.default_rng(2).normal(0, sigma, 1 << 24)), -127, 127).astype(np.int16)
    for i, key in enumerate(tqdm(plan["synthetic"], desc="synthetic annotations", unit="annot")):
        if store.entry_path(key, fingerprint).is_file():
            continue
        rng = np.random.default_rng([3, i])
        template = templates[int(rng.integers(len(templates)))]
        desc, xy = np.asarray(template["descriptors"]), np.asarray(template["keypoints"], np.float32)
        # 85% of the template's regions, the rest from another template: the real count, not the same set twice
        other = templates[int(rng.integers(len(templates)))]
        swap = rng.random(len(desc)) < 0.15
        picks = rng.integers(0, max(len(other["descriptors"]), 1), int(swap.sum()))
        if len(other["descriptors"]):
            desc, xy = desc.copy(), xy.copy()
            desc[swap], xy[swap] = np.asarray(other["descriptors"])[picks], np.asarray(other["keypoints"])[picks]
        start = int(rng.integers(0, len(table) - desc.size)) if desc.size else 0
        noisy = np.clip(desc.astype(np.int16) + table[start:start + desc.size].reshape(desc.shape), 0, 255)
        angle, scale = rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.25)
        rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], np.float32)
        size = np.asarray(template["image_size"])
        moved = (xy - size / 2) @ rot.T + size / 2 + rng.normal(0, 2, xy.shape)
        store.save(key, fingerprint, {"descriptors": noisy.astype(np.uint8), "keypoints": moved.astype(np.float32),
                                      "image_size": size})
    return {"count": len(plan["synthetic"]), "noise_sigma": sigma, "templates": len(templates)}


def features_of(base: Path, config: Any):
    """Cached stage-1 features by key: the real photos' store, then the synthetic one."""
    fingerprint = FeatureStore.fingerprint(config, "stage1")
    stores = [FeatureStore(base / "store"), FeatureStore(base / "synthetic")]

    def load(keys: List[str]) -> List[Dict[str, Any]]:
        out = []
        for key in keys:
            feats = stores[0].load(key, fingerprint) or stores[1].load(key, fingerprint)
            if feats is None:
                raise SystemExit(f"no cached stage-1 features for {key}: rerun the generate phase")
            out.append(feats)
        return out
    return load


# ============================================================================ phases (each its own process)
def phase_build(work: Path, plan: Mapping[str, Any], config: Any) -> Dict[str, Any]:
    path = work / "index" / "stage1.npz"
    for old in path.parent.glob("stage1.*"):
        old.unlink()
    keys = plan["database"][:-ADD]
    start = time.perf_counter()
    index, added, _ = synced_index(path, config, keys, features_of(work.parent, config))
    build_s = time.perf_counter() - start
    return {"build_s": build_s, "built_annotations": added, "index_kind": index.kind, "build_rss_mb": rss_mb()}


def phase_add(work: Path, plan: Mapping[str, Any], config: Any) -> Dict[str, Any]:
    path = work / "index" / "stage1.npz"
    start = time.perf_counter()
    index = load_index(path, config)
    load_s = time.perf_counter() - start
    start = time.perf_counter()
    index, added, _ = synced_index(path, config, plan["database"], features_of(work.parent, config), index=index)
    add_s = time.perf_counter() - start
    assert added == ADD, added
    files = [p for p in path.parent.iterdir() if p.name.startswith("stage1.")]
    return {"add_1000_s": add_s, "load_s": load_s, "add_rss_mb": rss_mb(), "annotations_indexed": len(index),
            "vectors": index.num_vectors, "features_per_annotation": index.num_vectors / len(index),
            "index_memory_bytes": index.index_bytes(),
            "index_bytes_on_disk": sum(p.stat().st_size for p in files),
            "index_files": {p.name.split(".")[-1]: p.stat().st_size for p in files}}


def phase_query(work: Path, plan: Mapping[str, Any], config: Any, candidates: Sequence[int]) -> Dict[str, Any]:
    index = load_index(work / "index" / "stage1.npz", config)
    queries = features_of(work.parent, config)(plan["queries"])
    times, tops = [], []
    for feats in queries:
        start = time.perf_counter()
        result = index.search(feats)
        times.append(time.perf_counter() - start)
        tops.append(top_keys(result))
    sweep = {}
    if isinstance(index, AggregatedIndex):
        for count in candidates:
            ranked = []
            for feats in queries:
                result = index.search(feats, candidates=count)
                ranked.append(top_keys(result))
            sweep[str(count)] = ranked
    (work / "query_tops.json").write_text(json.dumps({"default": tops, "sweep": sweep}))
    # how often a photo of the query's individual (same flank) is in the top 20: here, and for exact LNBNN over the
    # planted real photos alone (no synthetic annotations: what the catalogue and the index cost, together)
    group_of = {k: tuple(g) for k, g in zip(plan["planted"], plan["planted_groups"])}
    groups = [tuple(g) for g in plan["query_groups"]]

    def hit(ranked: Sequence[Sequence[str]]) -> float:
        return float(np.mean([any(group_of.get(k) == g for k in top) for top, g in zip(ranked, groups)]))

    alone = build_index(plan["planted"], features_of(work.parent, config)(plan["planted"]),
                        load_config(None, shortlist_index="flat"))
    alone_tops = []
    for feats in queries:
        result = alone.search(feats)
        alone_tops.append(top_keys(result))
    return {"query_s": times, "query_p50_s": float(np.percentile(times, 50)),
            "query_p95_s": float(np.percentile(times, 95)), "query_rss_mb": rss_mb(),
            "candidates": getattr(index, "candidates", None),
            "individual_in_top_20_all_queries": {
                "index": hit(tops), "planted real photos alone, exact": hit(alone_tops),
                **{f"candidates {c}": hit(t) for c, t in sweep.items()}}}


def exact_tops(index: Any, queries: Sequence[Mapping[str, Any]]) -> List[List[str]]:
    """Top 20 of exact LNBNN over every vector of ``index`` (an aggregated index's vectors file, streamed)."""
    import faiss
    from tqdm import tqdm

    fetch = index.k + 1
    descs = [np.asarray(q["descriptors"], np.float32) for q in queries]
    bounds = np.cumsum([0] + [len(d) for d in descs])
    stacked = np.concatenate(descs)
    table = None
    with tqdm(total=index.num_vectors, desc="exact search", unit="vec", unit_scale=True) as bar:
        for rows, desc, xy in index.iter_rows(1 << 21):
            owner = np.repeat(rows, index._count[rows])
            dist2, ids = faiss.knn(stacked, desc.astype(np.float32), min(fetch, len(desc)))
            part = neighbour_table(np.sqrt(np.maximum(dist2, 0)), ids, owner, xy)
            table = part if table is None else merge_neighbours([table, part], fetch)
            bar.update(len(desc))
    assert table is not None
    keys = index.keys
    row_of = {key: i for i, key in enumerate(keys)}
    tops = []
    for q, feats in enumerate(queries):
        part = Neighbours(table.dist[bounds[q]:bounds[q + 1]], table.slots[bounds[q]:bounds[q + 1]],
                          table.xy[bounds[q]:bounds[q + 1]])
        result = score_neighbours(part, feats, keys, row_of, keys, index.k, (), index.spatial, 50)
        tops.append(top_keys(result))
    return tops


def phase_exact(work: Path, plan: Mapping[str, Any], config: Any, count: int) -> Dict[str, Any]:
    index = load_index(work / "index" / "stage1.npz", config)
    queries = features_of(work.parent, config)(plan["queries"][:count])
    start = time.perf_counter()
    exact = exact_tops(index, queries)
    exact_s = time.perf_counter() - start
    approx = json.loads((work / "query_tops.json").read_text())
    group_of = {k: tuple(g) for k, g in zip(plan["planted"], plan["planted_groups"])}
    groups = [tuple(g) for g in plan["query_groups"][:count]]

    def overlap(tops: Sequence[Sequence[str]]) -> float:
        return float(np.mean([len(set(a) & set(e)) / TOP for a, e in zip(tops, exact)]))

    def hit(tops: Sequence[Sequence[str]]) -> float:
        return float(np.mean([any(group_of.get(k) == g for k in top) for top, g in zip(tops, groups)]))

    return {"exact_queries": count, "exact_s": exact_s, "recall_at_20": overlap(approx["default"][:count]),
            "recall_at_20_by_candidates": {c: overlap(t[:count]) for c, t in approx["sweep"].items()},
            "individual_in_top_20": {"exact": hit(exact), "index": hit(approx["default"][:count]),
                                     **{f"candidates {c}": hit(t[:count]) for c, t in approx["sweep"].items()}},
            "exact_rss_mb": rss_mb()}


# ============================================================================ driver
def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--annotations", type=int, default=100_000)
    parser.add_argument("--json", type=Path, help="write the figures here (default: --work/n<N>.json)")
    parser.add_argument("--work", type=Path, default=WORK, help="feature stores, plan and index (default %(default)s)")
    parser.add_argument("--queries", type=int, default=20, help="real query photos timed (default %(default)s)")
    parser.add_argument("--exact-queries", type=int, default=5,
                        help="queries also searched exactly over every vector, for recall (0: skip)")
    parser.add_argument("--candidates", type=int, nargs="*", default=[50, 200, 400],
                        help="other VLAD candidate counts whose recall is measured too")
    parser.add_argument("--phases", nargs="*", default=["build", "add", "query", "exact"],
                        help="phases to run after the synthetic features are generated (none: only generate)")
    parser.add_argument("--index", default="auto", help="shortlist_index (default %(default)s: aggregated beyond 10^4)")
    parser.add_argument("--phase", help=argparse.SUPPRESS)  # internal: run one phase in this process
    args = parser.parse_args(list(argv) or None)
    config = load_config(None, shortlist_index=args.index)
    work = args.work / f"n{args.annotations}"
    work.mkdir(parents=True, exist_ok=True)
    if args.phase:
        plan = json.loads((work / "plan.json").read_text())
        run = {"build": lambda: phase_build(work, plan, config), "add": lambda: phase_add(work, plan, config),
               "query": lambda: phase_query(work, plan, config, args.candidates),
               "exact": lambda: phase_exact(work, plan, config, args.exact_queries)}[args.phase]
        print("RESULT " + json.dumps(run()))
        return 0
    plan = make_plan(args.work, work, args.annotations, args.queries, config)
    info = generate(args.work, plan, config)
    result: Dict[str, Any] = {"annotations": args.annotations, "machine": machine(),
                              "default_features_per_annotation": plan["default_features_per_annotation"],
                              "real_photos": plan["real_photos"], "planted": len(plan["planted"]),
                              "queries": len(plan["queries"]), "synthetic": info}
    out = args.json or (work.parent / f"n{args.annotations}.json")
    for phase in args.phases:
        if phase == "exact" and args.exact_queries == 0:
            continue
        cmd = [sys.executable, __file__, "--phase", phase, "--annotations", str(args.annotations), "--index",
               args.index, "--work", str(args.work), "--exact-queries", str(args.exact_queries), "--candidates",
               *map(str, args.candidates)]
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
        if proc.returncode or not lines:
            raise SystemExit(f"phase {phase} failed (exit {proc.returncode})")
        result.update(json.loads(lines[-1][len("RESULT "):]))
        result["peak_rss_mb"] = max(result.get(f"{p}_rss_mb", 0) for p in ("build", "add", "query"))
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))  # partial results as it goes
        print(f"{phase}: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in result.items() if k.startswith(phase) or k in (
                                             "build_s", "add_1000_s", "query_p50_s", "query_p95_s", "recall_at_20",
                                             "peak_rss_mb", "index_bytes_on_disk")), flush=True)
    print(json.dumps({k: v for k, v in result.items() if k != "query_s"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
