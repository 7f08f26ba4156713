"""Two-stage identification on real nyala photos: accuracy (variants x shortlist_k), shortlist recall, speed/scale.

Accuracy subset (``select``): ``../shared/data/nyala-fullres`` (40 individuals at full resolution); for every
(individual, flank) with >= 2 photos, the first ``--per-flank`` (default 2) by sighting. Individuals in natural
order are split by parity: part A (1st, 3rd, ...) chooses settings (stage-1 variant, logistic fusion weights),
part B (2nd, 4th, ...; held-out individuals) is where every figure is reported. Photos are compared within a
flank only (protocol groups = side), 1-vs-all, ranking by individual (name score max, ties pessimistic).

* stage 1 = ``engine.shortlist`` (RootSIFT on the full-resolution photo, long edge <= shortlist_image_size,
  FAISS, LNBNN; ``+spatial``: RANSAC similarity check), one index per flank, leave-one-out
  (``evaluation.datasets.stage1_matrix``, the code ``wbia-lightglue evaluate`` runs);
* part A chooses the stage-1 variant by shortlist recall at ``CHOOSE_K`` and fits the ``logistic`` fusion on
  the LightGlue scores of its top-``FIT_K`` pairs;
* stage 2 = LightGlue at ``--keypoints`` (image_size 512): part B exhaustively (the baseline, and every k
  reads from it); pair scores cached;
* fused = ``evaluation.datasets.two_stage_matrix`` (engine.fusion) with ``sum_log1p``, ``logistic`` (fitted
  on part A) and ``lightglue`` (re-ranking only);
* HotSpotter = WBIA 4.0.4's default pipeline (``ibs.query_chips``) on the same photos, per flank, alone and as
  stage 1 (``shortlist_source='hotspotter'``), with ``--hotspotter`` (needs wbia importable).

Recall at scale: stage-1 shortlist recall at k on ALL 1,205 photos of ``../shared/data/nyala`` (640 px), per flank
(IVF indexes: ~600 photos a flank is past the exact-search size); the recall IVF and PQ cost against exact
search is measured on the 130 full-resolution photos.

Timing (``--timing-only`` runs only this part): per-query stage 1 (search) and stage 2 (k LightGlue pairs at
1024 keypoints) at 1-vs-1,000 / 1-vs-10,000, exhaustive LightGlue measured on ``--exhaustive-pairs`` pairs and
extrapolated; stage-1 query time and index memory at ``--scale`` annotations, built from REAL RootSIFT
descriptors replicated with small uniform noise (+-2 of 255) - that measures cost, not accuracy; the
recall PQ costs on the real photos. Wall and process CPU seconds and /proc/loadavg are printed: figures
taken while the machine is loaded are inflated.

    python benchmarks/two_stage.py                      # accuracy + recall + timing
    python benchmarks/two_stage.py --hotspotter          # also WBIA's HotSpotter (alone and as stage 1)
    python benchmarks/two_stage.py --timing-only         # only the speed/scale table
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from wbia_lightglue.data.dataset import Annotation, natural_key
from wbia_lightglue.data.store import FeatureStore, annotation_features
from wbia_lightglue.engine.config import Config, load_config
from wbia_lightglue.engine.fusion import fit_logistic, fused_config, shortlist_positions
from wbia_lightglue.engine.scoring import match_scores
from wbia_lightglue.engine.shortlist import ShortlistIndex
from wbia_lightglue.evaluation.datasets import stage1_matrix, two_stage_matrix
from wbia_lightglue.evaluation.protocol import EvaluationReport, evaluate_scores

logger = logging.getLogger("wbia_lightglue")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FULLRES = SHARED / "nyala-fullres" / "labels.csv"
NYALA = SHARED / "nyala" / "labels.csv"
OUTPUT = ROOT / "benchmarks" / "results" / "two_stage"
KS = (5, 10, 20, 50)
CHOOSE_K = 10
FIT_K = 5
RANKS = (1, 5, 10)


# ============================================================================ helpers
def machine() -> str:
    cpu = "?"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{platform.node()}: {cpu}, {os.cpu_count()} cores"


def loadavg() -> str:
    try:
        return open("/proc/loadavg").read().split(" ", 3)[:3].__str__()
    except OSError:
        return "?"


class Timer:
    """Wall and process-CPU seconds of a block (CPU counts all threads of this process)."""

    def __enter__(self) -> "Timer":
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.wall, self.cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu


def read_rows(labels: Path) -> List[dict]:
    with open(labels, newline="") as handle:
        return list(csv.DictReader(handle))


def select(labels: Path = FULLRES, per_flank: int = 2) -> Tuple[List[Annotation], List[Annotation]]:
    """(part A, part B): see the module docstring."""
    by: Dict[Tuple[str, str], List[dict]] = defaultdict(list)
    for row in read_rows(labels):
        by[(row["individual"], row["side"])].append(row)
    names = sorted({ind for ind, _ in by}, key=natural_key)
    parts: Tuple[List[Annotation], List[Annotation]] = ([], [])
    for n, name in enumerate(names):
        for side in ("left", "right"):
            rows = sorted(by.get((name, side), []), key=lambda r: natural_key(r["sighting"]))[:per_flank]
            if len(rows) >= 2:
                parts[n % 2].extend(Annotation(labels.parent / r["path"], name, None, {"side": side}) for r in rows)
    return parts


def recall_at(stage1: np.ndarray, labels: Sequence[Any], k: int) -> float:
    """Fraction of answerable queries whose top-k stage-1 annotations hold one of their individual."""
    hits = []
    for q in range(len(labels)):
        others = [j for j in range(len(labels)) if j != q and not np.isnan(stage1[q, j])]
        relevant = [labels[j] == labels[q] for j in others]
        if not any(relevant):
            continue
        top = shortlist_positions(stage1[q, others], k)
        hits.append(any(relevant[p] for p in top))
    return float(np.mean(hits)) if hits else float("nan")


def report(scores: np.ndarray, annots: Sequence[Annotation]) -> EvaluationReport:
    return evaluate_scores(scores, [a.individual for a in annots], ids=[a.name for a in annots],
                           groups=[a.attributes["side"] for a in annots], ranks=RANKS)


class PairCache:
    """LightGlue scores of unordered pairs (i, j) of one part, cached on disk as JSON."""

    def __init__(self, path: Path, feats: Sequence[dict], config: Config):
        self.path, self.feats, self.config = path, feats, config
        self.scores: Dict[str, float] = json.loads(path.read_text()) if path.is_file() else {}
        self.seconds = 0.0

    def __call__(self, i: int, partners: List[int]) -> List[float]:
        todo = [j for j in partners if f"{min(i, j)},{max(i, j)}" not in self.scores]
        if todo:
            start = time.perf_counter()
            values = match_scores(self.feats[i], [self.feats[j] for j in todo], self.config)
            self.seconds += time.perf_counter() - start
            self.scores.update({f"{min(i, j)},{max(i, j)}": float(v) for j, v in zip(todo, values)})
            self.path.write_text(json.dumps(self.scores))
        return [self.scores[f"{min(i, j)},{max(i, j)}"] for j in partners]

    def matrix(self, n: int, groups: Sequence[str]) -> np.ndarray:
        """Exhaustive within-group matrix (matches what is missing)."""
        out = np.full((n, n), np.nan)
        for i in range(n):
            partners = [j for j in range(n) if j != i and groups[j] == groups[i]]
            if partners:
                out[i, partners] = self(i, partners)
        return out


# ============================================================================ accuracy
def part_inputs(annots: List[Annotation], store: FeatureStore, config: Config):
    al = annotation_features(annots, store, config, progress=True)
    s1 = annotation_features(al.annotations, store, config, progress=True, kind="rootsift")
    assert s1.keys == al.keys, "an annotation failed one extractor but not the other"
    return al.annotations, al.features, s1.features


def accuracy(output: Path, keypoints: int, per_flank: int, hotspotter: bool, max_k: Optional[int] = None) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)  # accuracy only: OpenMP spinning on a shared, loaded CPU cost 2.5x wall time
    store = FeatureStore(output / "store")
    base = load_config(None, max_num_keypoints=keypoints, device="cpu")
    variants = {"rootsift": base, "rootsift+spatial": base.replace(shortlist_spatial=True)}
    part_a, part_b = select(FULLRES, per_flank)
    out: Dict[str, Any] = {"machine": machine(), "keypoints": keypoints, "per_flank": per_flank,
                           "part_a_photos": len(part_a), "part_b_photos": len(part_b)}
    parts = {}
    for name, annots in (("A", part_a), ("B", part_b)):
        annots, feats, s1_feats = part_inputs(annots, store, base)
        groups = [a.attributes["side"] for a in annots]
        stage1 = {}
        for variant, cfg in variants.items():
            path = output / f"stage1_{name}_{variant}.npz"
            if path.is_file():
                stage1[variant] = np.load(path)["scores"]
                continue
            with Timer() as t:
                stage1[variant] = stage1_matrix(s1_feats, cfg, groups)
            np.savez(path, scores=stage1[variant])
            logger.info("part %s stage 1 %s: %.1f s", name, variant, t.wall)
        cache = PairCache(output / f"lightglue_{name}_{keypoints}.json", feats, base)
        parts[name] = (annots, feats, groups, stage1, cache)

    # ---- part A: choose the stage-1 variant by its shortlist recall at CHOOSE_K (then its Rank-1 alone), and
    # fit the logistic fusion on the LightGlue pairs of the chosen variant's top FIT_K
    annots, feats, groups, stage1, cache = parts["A"]
    labels = [a.individual for a in annots]
    choice = {}
    for variant in variants:
        choice[variant] = {"recall": recall_at(stage1[variant], labels, CHOOSE_K),
                           "stage1_rank1": report(stage1[variant], annots).rank1}
    chosen = max(choice, key=lambda v: (choice[v]["recall"], choice[v]["stage1_rank1"]))
    cfg = variants[chosen].replace(shortlist_k=FIT_K)
    _, lg_a = two_stage_matrix(stage1[chosen], feats, cfg, pair_scores=cache, progress=False)
    mask = ~np.isnan(lg_a)
    lab = np.asarray(labels)
    same = (lab[:, None] == lab[None, :])[mask]
    weights = fit_logistic(lg_a[mask], stage1[chosen][mask], same)
    out.update(part_a_choice=choice, chosen_stage1=chosen, logistic_weights=weights,
               part_a_pairs_fitted=int(mask.sum()), part_a_lightglue_pairs=len(cache.scores))
    logger.info("part A: chose %s (%s); logistic weights %s", chosen, choice, weights)

    # ---- part B: everything reported
    annots, feats, groups, stage1, cache = parts["B"]
    labels = [a.individual for a in annots]
    # LightGlue pairs in the order the shortlists need them (a partial run still yields the small-k rows)
    ks = [k for k in KS if max_k is None or k <= max_k]
    for k in ks:
        two_stage_matrix(stage1[chosen], feats, variants[chosen].replace(shortlist_k=k), pair_scores=cache,
                         progress=False)
    exhaustive = cache.matrix(len(annots), groups) if max_k is None else None
    rows: Dict[str, dict] = {}

    def row(name: str, scores: np.ndarray, recall: Optional[float] = None) -> None:
        rep = report(scores, annots)
        rows[name] = {"rank1": rep.rank1, "rank5": rep.cmc[5], "mAP": rep.mean_average_precision,
                      "recall": recall, "answerable": rep.num_answerable}

    if exhaustive is not None:
        row("LightGlue exhaustive", exhaustive)
    sources: Dict[str, np.ndarray] = {v: stage1[v] for v in variants}
    if max_k is not None:  # only the chosen stage 1 has its pairs matched
        sources = {chosen: stage1[chosen]}
        if hotspotter:
            row("stage 1 alone: hotspotter", hotspotter_matrix(output, annots, "B"))
    if hotspotter:
        sources["hotspotter"] = hotspotter_matrix(output, annots, "B")
    for source, s1 in sources.items():
        row(f"stage 1 alone: {source}", s1)
        cfg = variants.get(source, variants[chosen])
        fusions = {"sum_log1p": cfg, "lightglue": cfg.replace(fusion="lightglue")}
        if source == chosen:
            fusions["logistic"] = fused_config(cfg, weights)
        for k in ks:
            recall = recall_at(s1, labels, k)
            for fusion, fcfg in fusions.items():
                fused, _ = two_stage_matrix(s1, feats, fcfg.replace(shortlist_k=k), pair_scores=cache,
                                            progress=False)
                row(f"{source} -> LightGlue top {k}, fusion {fusion}", fused, recall)
        if max_k is None:  # fusion over all pairs (every pair matched: the upper bound of fusing, not sublinear)
            all_cfg = cfg.replace(shortlist_k=len(annots))
            fused, _ = two_stage_matrix(s1, feats, all_cfg, pair_scores=cache, progress=False)
            row(f"{source} + LightGlue all pairs, fusion sum_log1p", fused)
        for k in KS:  # stage-1 recall at every k, matched or not
            rows.setdefault(f"shortlist recall of {source} at {k}", {"rank1": float("nan"), "rank5": float("nan"),
                                                                     "mAP": float("nan"),
                                                                     "recall": recall_at(s1, labels, k)})
    out["part_b"] = rows
    out["part_b_max_k"] = max_k
    out["part_b_lightglue_pairs"] = len(cache.scores)
    return out


def hotspotter_matrix(output: Path, annots: List[Annotation], part: str) -> np.ndarray:
    """WBIA HotSpotter annotation scores (default pipeline), per flank, cached; absent/-inf -> 0."""
    path = output / f"hotspotter_{part}.npz"
    names = np.array([str(a.path) for a in annots])
    if path.is_file():
        with np.load(path) as data:
            if np.array_equal(data["paths"], names):
                return data["scores"]
    import tempfile

    from wbia_lightglue.wbia_plugin import compat

    compat.apply()
    with compat.hidden_argv():
        import wbia
    with tempfile.TemporaryDirectory(prefix="two_stage_hs_") as tmp:
        ibs = wbia.opendb(dbdir=tmp, allow_newdir=True)
        gids = ibs.add_images([str(a.path) for a in annots])
        sizes = ibs.get_image_sizes(gids)
        aids = ibs.add_annots(gids, bbox_list=[(0, 0, w, h) for w, h in sizes], species_list=["nyala"] * len(gids))
        ibs.set_annot_names(aids, [f"nyala_{a.individual}" for a in annots])
        n = len(aids)
        scores = np.full((n, n), np.nan)
        start = time.perf_counter()
        for side in sorted({a.attributes["side"] for a in annots}):
            members = [i for i, a in enumerate(annots) if a.attributes["side"] == side]
            member_aids = [aids[i] for i in members]
            for cm in ibs.query_chips(member_aids, member_aids, cfgdict={}, use_cache=False):
                q = aids.index(cm.qaid)
                others = [i for i in members if i != q]
                values = cm.get_annot_scores([aids[i] for i in others])
                scores[q, others] = [float(v) if v is not None and np.isfinite(v) else 0.0 for v in values]
        logger.info("HotSpotter part %s: %d queries in %.1f s", part, n, time.perf_counter() - start)
        ibs.close() if hasattr(ibs, "close") else None
    np.savez(path, scores=scores, paths=names)
    return scores


def recall_large(output: Path, base: Config) -> dict:
    """Stage-1 shortlist recall at k over all 1,205 nyala photos (640 px), per flank."""
    rows = read_rows(NYALA)
    annots = [Annotation(NYALA.parent / r["path"], r["individual"], None, {"side": r["side"]}) for r in rows]
    stored = annotation_features(annots, FeatureStore(output / "store"), base, progress=True, kind="rootsift")
    groups = [a.attributes["side"] for a in stored.annotations]
    labels = [a.individual for a in stored.annotations]
    out: Dict[str, Any] = {"photos": len(stored.annotations)}
    for variant, cfg in (("rootsift ivf (8-bit SQ)", base.replace(shortlist_index="ivf")),
                         ("rootsift ivfpq (32 B)", base.replace(shortlist_index="ivfpq"))):
        with Timer() as t:
            s1 = stage1_matrix(stored.features, cfg, groups)
        out[variant] = {f"recall@{k}": recall_at(s1, labels, k) for k in KS}
        out[variant]["seconds"] = t.wall
        logger.info("recall at 1,205 (%s): %s", variant, out[variant])
    return out


# ============================================================================ timing
def replicate(feats: Sequence[dict], count: int, rng: np.random.Generator) -> Callable[[int], dict]:
    """The i-th synthetic annotation: a real photo's descriptors with +-2 uniform noise (cost, not accuracy)."""
    def make(i: int) -> dict:
        src = feats[i % len(feats)]
        noise = rng.integers(-2, 3, src["descriptors"].shape)
        return {"descriptors": np.clip(src["descriptors"].astype(np.int16) + noise, 0, 255).astype(np.uint8),
                "keypoints": src["keypoints"], "image_size": src["image_size"]}
    return make


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timing(output: Path, keypoints: int, scale: Sequence[int], exhaustive_pairs: int, ks: Sequence[int]) -> dict:
    store = FeatureStore(output / "store")
    base = load_config(None, max_num_keypoints=keypoints, device="cpu")
    part_a, part_b = select(FULLRES, 2)
    annots, feats, s1_feats = part_inputs(part_a + part_b, store, base)
    out: Dict[str, Any] = {"machine": machine(), "loadavg_before": loadavg(), "keypoints": keypoints,
                           "threads": __import__("torch").get_num_threads()}
    # stage 2: k LightGlue pairs (independent of N) and exhaustive pairs
    query, others = feats[0], feats[1:]
    match_scores(query, others[:4], base)  # warm-up
    for k in ks:
        with Timer() as t:
            match_scores(query, [others[i % len(others)] for i in range(k)], base)
        out[f"stage2_top{k}"] = {"wall": t.wall, "cpu": t.cpu}
    with Timer() as t:
        match_scores(query, [others[i % len(others)] for i in range(exhaustive_pairs)], base)
    out["exhaustive_pairs"] = exhaustive_pairs
    out["exhaustive_per_pair"] = {"wall": t.wall / exhaustive_pairs, "cpu": t.cpu / exhaustive_pairs}
    # stage 1 at scale
    rng = np.random.default_rng(0)
    make = replicate(s1_feats, max(scale), rng)
    queries = [s1_feats[i] for i in range(0, len(s1_feats), max(1, len(s1_feats) // 5))][:5]
    for n in scale:
        for kind in (["auto"] if n < 50_000 else ["ivfpq"]):
            cfg = base.replace(shortlist_index=kind)
            index = ShortlistIndex(cfg)
            with Timer() as build:
                for start in range(0, n, 1000):
                    chunk = range(start, min(n, start + 1000))
                    index.add([f"s{i}" for i in chunk], [make(i) for i in chunk])
            index.search(queries[0])  # warm-up
            with Timer() as t:
                for q in queries:
                    index.search(q)
            out[f"stage1_{n}_{kind}"] = {
                "index": index.kind, "vectors": index.num_vectors, "build_wall": build.wall, "build_cpu": build.cpu,
                "query_wall": t.wall / len(queries), "query_cpu": t.cpu / len(queries),
                "index_mib": index.index_bytes() / 2**20, "raw_mib": index.raw_bytes() / 2**20,
                "peak_rss_mib": rss_mib()}
            logger.info("stage 1 at %d (%s): %s", n, kind, out[f"stage1_{n}_{kind}"])
            del index
    out["loadavg_after"] = loadavg()
    return out


def pq_recall(output: Path, keypoints: int) -> dict:
    """What PQ costs on the real photos: part A + B stage-1 recall, flat vs ivf vs ivfpq."""
    store = FeatureStore(output / "store")
    base = load_config(None, max_num_keypoints=keypoints, device="cpu")
    part_a, part_b = select(FULLRES, 2)
    annots, _, s1_feats = part_inputs(part_a + part_b, store, base)
    groups = [a.attributes["side"] for a in annots]
    labels = [a.individual for a in annots]
    out = {}
    for kind in ("flat", "ivf", "ivfpq"):
        s1 = stage1_matrix(s1_feats, base.replace(shortlist_index=kind), groups)
        out[kind] = {f"recall@{k}": recall_at(s1, labels, k) for k in KS}
    return out


# ============================================================================ output
def table(acc: dict) -> str:
    lines = [f"Part B (held-out individuals, {acc['part_b_photos']} photos), {acc['keypoints']} keypoints; "
             f"stage 1 chosen on part A: {acc['chosen_stage1']}; logistic weights (bias, w_lg, w_s1) = "
             f"{tuple(round(w, 3) for w in acc['logistic_weights'])}\n",
             "| variant | R-1 | R-5 | mAP | shortlist recall |", "|---|---:|---:|---:|---:|"]
    for name, r in acc["part_b"].items():
        recall = "-" if r["recall"] is None else f"{r['recall']:.2f}"
        lines.append(f"| {name} | {100 * r['rank1']:.1f} | {100 * r['rank5']:.1f} | {r['mAP']:.3f} | {recall} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--keypoints", type=int, default=1024)
    parser.add_argument("--per-flank", type=int, default=2)
    parser.add_argument("--hotspotter", action="store_true", help="also WBIA's HotSpotter (needs wbia)")
    parser.add_argument("--timing-only", action="store_true")
    parser.add_argument("--no-timing", action="store_true")
    parser.add_argument("--max-k", type=int, help="part B: match only the top-k shortlists (no exhaustive "
                        "LightGlue, no other stage-1 variant): a partial run when CPU time is short")
    parser.add_argument("--skip-recall", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true", help="recall and timing only")
    parser.add_argument("--scale", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--exhaustive-pairs", type=int, default=1000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args.output.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {}
    print(f"machine: {machine()}; load average {loadavg()}")
    if not args.timing_only and not args.skip_accuracy:
        results["accuracy"] = accuracy(args.output, args.keypoints, args.per_flank, args.hotspotter, args.max_k)
        (args.output / "accuracy.json").write_text(json.dumps(results["accuracy"], indent=1))
        print(table(results["accuracy"]))
    if not args.timing_only and not args.skip_recall:
        results["recall_1205"] = recall_large(args.output, load_config(None, device="cpu"))
        results["pq_recall"] = pq_recall(args.output, args.keypoints)
        (args.output / "recall.json").write_text(json.dumps({k: results[k] for k in ("recall_1205", "pq_recall")},
                                                            indent=1))
        print(json.dumps({k: results[k] for k in ("recall_1205", "pq_recall")}, indent=1))
    if not args.no_timing:
        results["timing"] = timing(args.output, args.keypoints, args.scale, args.exhaustive_pairs, KS)
        (args.output / "timing.json").write_text(json.dumps(results["timing"], indent=1))
        print(json.dumps(results["timing"], indent=1))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
