"""Two-stage identification on real nyala photos: accuracy (variants x shortlist_k), shortlist recall, speed/scale.

Accuracy subset (``select``): ``../shared/data/nyala-fullres`` (40 individuals at full resolution); for every
(individual, flank) with >= 2 photos, the first ``--per-flank`` (default 2) by sighting. Individuals in natural
order are split by parity: part A (1st, 3rd, ...) chooses settings (stage-1 variant, logistic fusion weights),
part B (2nd, 4th, ...; held-out individuals) is where every figure is reported. Photos are compared within a
flank only (protocol groups = side), 1-vs-all, ranking by individual (name score max, ties pessimistic).

* stage 1 = ``engine.stage1`` (Hessian-affine or DoG SIFT on the photo downsized to a long edge <=
  shortlist_image_size, FAISS, LNBNN; ``+spatial``: RANSAC similarity check), one index per flank, leave-one-out
  (``evaluation.datasets.stage1_matrix``, the code ``wbia-lightglue evaluate`` runs);
* part A chooses the stage-1 variant by shortlist recall at ``CHOOSE_K`` and fits the ``logistic`` fusion on
  the LightGlue scores of its top-``FIT_K`` pairs;
* stage 2 = LightGlue at ``--keypoints`` (image_size 512): part B exhaustively (the baseline, and every k
  reads from it); pair scores cached;
* fused = the pipeline (``pipeline.score_matrix`` over ``evaluation.datasets.DatasetSource``; engine.fusion)
  with ``sum_log1p``, ``logistic`` (fitted on part A) and ``lightglue`` (re-ranking only);
* HotSpotter = WBIA 4.0.4's default pipeline (``ibs.query_chips``) on the same photos, per flank, alone and as
  stage 1 (``shortlist_source='hotspotter'``), with ``--hotspotter`` (needs wbia importable).

Recall at scale: stage-1 shortlist recall at k on ALL 1,205 photos of ``../shared/data/nyala`` (640 px), per flank
(IVF indexes: ~600 photos a flank is past the exact-search size); the recall IVF and PQ cost against exact
search is measured on the 130 full-resolution photos.

Timing (``--timing-only`` runs only this part): per-query stage 1 (search) and stage 2 (k LightGlue pairs at
1024 keypoints) at 1-vs-1,000 / 1-vs-10,000, exhaustive LightGlue measured on ``--exhaustive-pairs`` pairs and
extrapolated; stage-1 query time and index memory at ``--scale`` annotations, built from REAL stage-1
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
import resource
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from bench_common import machine

from wbia_lightglue.data.dataset import Annotation, natural_key
from wbia_lightglue.data.store import FeatureStore, annotation_features
from wbia_lightglue.engine.config import Config, load_config
from wbia_lightglue.engine.fusion import fit_logistic, fused_config, shortlist_positions
from wbia_lightglue.engine.scoring import match_scores
from wbia_lightglue.engine.stage1 import Stage1Index
from wbia_lightglue.evaluation.datasets import DatasetSource, stage1_matrix
from wbia_lightglue.evaluation.protocol import EvaluationReport, evaluate_scores
from wbia_lightglue.pipeline import score_matrix

logger = logging.getLogger("wbia_lightglue")


def two_stage_matrix(stage1: np.ndarray, feats: list, cfg: Any, *, pair_scores: Any,
                     progress: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """(fused, lightglue) matrices of every photo through the pipeline, from a stage-1 matrix and cached pairs."""
    matrices = score_matrix(len(feats), DatasetSource(feats, cfg, stage1=stage1, pair_scores=pair_scores), cfg,
                            progress=progress)
    return matrices.scores, matrices.lightglue

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


def paired_bootstrap(new: EvaluationReport, old: EvaluationReport, rounds: int = 10_000) -> dict:
    """95% intervals of the Rank-1 and mAP gain of ``new`` over ``old``, resampling the same queries."""
    pairs = [(a.rank, b.rank, a.average_precision, b.average_precision)
             for a, b in zip(new.queries, old.queries) if a.rank is not None and b.rank is not None]
    arr = np.asarray(pairs, np.float64)
    hit = (arr[:, 0] == 1).astype(float) - (arr[:, 1] == 1).astype(float)
    ap = arr[:, 2] - arr[:, 3]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(arr), (rounds, len(arr)))
    out = {"queries": len(arr), "rank1_gain": float(hit.mean()), "map_gain": float(ap.mean()),
           "rank1_wins_losses": [int((hit > 0).sum()), int((hit < 0).sum())]}
    for name, values in (("rank1_gain_95", hit), ("map_gain_95", ap)):
        means = values[idx].mean(axis=1)
        out[name] = [float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))]
    return out


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
    s1 = annotation_features(al.annotations, store, config, progress=True, kind="stage1")
    assert s1.keys == al.keys, "an annotation failed one extractor but not the other"
    return al.annotations, al.features, s1.features


def stage1_variants(base: Config) -> Dict[str, Config]:
    """The stage-1 candidates part A chooses from (the chosen one is the shipped default)."""
    hesaff, sift = base.replace(shortlist_detector="hesaff"), base.replace(shortlist_detector="sift")
    return {
        "hesaff 700 px +spatial": hesaff.replace(shortlist_image_size=700),
        "hesaff 700 px": hesaff.replace(shortlist_image_size=700, shortlist_spatial=False),
        "hesaff 500 px +spatial": hesaff.replace(shortlist_image_size=500),
        "hesaff 1000 px +spatial": hesaff.replace(shortlist_image_size=1000),
        "sift 700 px 3000 +spatial": sift.replace(shortlist_image_size=700, shortlist_features=3000),
        "sift 1600 px 1000": sift.replace(shortlist_image_size=1600, shortlist_features=1000,
                                          shortlist_spatial=False),
    }


def accuracy(output: Path, keypoints: int, per_flank: int, hotspotter: bool, max_k: Optional[int] = None) -> dict:
    import faiss

    faiss.omp_set_num_threads(1)  # accuracy only: OpenMP spinning on a shared, loaded CPU cost 2.5x wall time
    store = FeatureStore(output / "store")
    base = load_config(None, max_num_keypoints=keypoints, device="cpu")
    variants = stage1_variants(base)
    part_a, part_b = select(FULLRES, per_flank)
    out: Dict[str, Any] = {"machine": machine(), "keypoints": keypoints, "per_flank": per_flank,
                           "part_a_photos": len(part_a), "part_b_photos": len(part_b)}
    parts = {}
    for name, annots in (("A", part_a), ("B", part_b)):
        aliked = annotation_features(annots, store, base, progress=True)
        annots, feats = aliked.annotations, aliked.features
        groups = [a.attributes["side"] for a in annots]
        stage1 = {}
        for variant, cfg in variants.items():
            path = output / f"stage1_{name}_{cfg.shortlist_fingerprint}_{cfg['shortlist_spatial']}.npz"
            if path.is_file():
                stage1[variant] = np.load(path)["scores"]
                continue
            s1 = annotation_features(annots, store, cfg, progress=True, kind="stage1")
            assert s1.keys == aliked.keys, "an annotation failed one extractor but not the other"
            with Timer() as t:
                stage1[variant] = stage1_matrix(s1.features, cfg, groups)
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
    # ... and shortlist_k: the smallest k whose Rank-1 (fixed fusion sum_log1p) on part A is within one query
    # of the best k's (LightGlue cost grows with k; one query is below what part A can resolve)
    a_rows = {}
    for k in KS:
        fused, _ = two_stage_matrix(stage1[chosen], feats, variants[chosen].replace(shortlist_k=k),
                                    pair_scores=cache, progress=False)
        rep = report(fused, annots)
        a_rows[k] = {"rank1": rep.rank1, "rank5": rep.cmc[5], "mAP": rep.mean_average_precision,
                     "recall": recall_at(stage1[chosen], labels, k)}
    best = max(r["rank1"] for r in a_rows.values())
    chosen_k = min(k for k in KS if a_rows[k]["rank1"] >= best - 1.0 / len(annots) - 1e-9)
    out.update(part_a_choice=choice, chosen_stage1=chosen, logistic_weights=weights,
               part_a_pairs_fitted=int(mask.sum()), part_a_k=a_rows, chosen_k=chosen_k,
               part_a_lightglue_pairs=len(cache.scores))
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
    for variant in variants:  # every candidate alone (part A chose among them); fused: the chosen one
        if variant != chosen:
            row(f"stage 1 alone: {variant} (recall at {CHOOSE_K})", stage1[variant],
                recall_at(stage1[variant], labels, CHOOSE_K))
    sources: Dict[str, np.ndarray] = {chosen: stage1[chosen]}
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
    if exhaustive is not None:  # is the gain of the chosen two-stage setting more than query sampling?
        fused, _ = two_stage_matrix(stage1[chosen], feats, variants[chosen].replace(shortlist_k=chosen_k),
                                    pair_scores=cache, progress=False)
        out["bootstrap_vs_exhaustive"] = paired_bootstrap(report(fused, annots), report(exhaustive, annots))
        if hotspotter:
            out["bootstrap_vs_hotspotter"] = paired_bootstrap(report(fused, annots),
                                                              report(sources["hotspotter"], annots))
    out["part_b"] = rows
    out["part_b_max_k"] = max_k
    out["part_b_lightglue_pairs"] = len(cache.scores)
    return out


def hotspotter_matrix(output: Path, annots: List[Annotation], part: str, use_cache: bool = True) -> np.ndarray:
    """WBIA HotSpotter annotation scores (default pipeline), per flank, cached; absent/-inf -> 0."""
    path = output / f"hotspotter_{part}.npz"
    names = np.array([str(a.path) for a in annots])
    if use_cache and path.is_file():
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
    stored = annotation_features(annots, FeatureStore(output / "store"), base, progress=True, kind="stage1")
    groups = [a.attributes["side"] for a in stored.annotations]
    labels = [a.individual for a in stored.annotations]
    out: Dict[str, Any] = {"photos": len(stored.annotations)}
    for variant, cfg in (("default (auto: ivf, 8-bit SQ)", base),):
        with Timer() as t:
            s1 = stage1_matrix(stored.features, cfg, groups)
        out[variant] = {f"recall@{k}": recall_at(s1, labels, k) for k in KS}
        out[variant]["seconds"] = t.wall
        logger.info("recall at 1,205 (%s): %s", variant, out[variant])
    return out


# ============================================================================ timing
def replicate(feats: Sequence[dict], count: int, rng: np.random.Generator) -> Callable[[int], dict]:
    """The i-th synthetic annotation: a real photo's descriptors with +-2 uniform noise (cost, not accuracy)."""
    def make(i: int, cap: Optional[int] = None) -> dict:
        src = feats[i % len(feats)]
        desc, xy = src["descriptors"][:cap], src["keypoints"][:cap]  # slices copied below (np.clip, astype)
        noise = rng.integers(-2, 3, desc.shape, dtype=np.int16)
        return {"descriptors": np.clip(desc.astype(np.int16) + noise, 0, 255).astype(np.uint8),
                "keypoints": np.array(xy), "image_size": src["image_size"]}
    return make


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


SCALE_PQ_FROM = 50_000  # annotations: from here the scale curve uses ivfpq, built in one bulk add (growing
# it 1,000 at a time re-trains at every 8x and re-adds everything: ~15 min at 10^4 already) ...
SCALE_PQ_FEATURES = 200  # ... over at most this many descriptors an annotation (the raw copy the index keeps
# for re-training would be 20 GB at 10^5 x ~1,550); pq_recall() measures what both cost on real photos


def timing(output: Path, keypoints: int, scale: Sequence[int], exhaustive_pairs: int, ks: Sequence[int],
           hotspotter: bool = False) -> dict:
    store = FeatureStore(output / "store")
    base = load_config(None, max_num_keypoints=keypoints, device="cpu")
    part_a, part_b = select(FULLRES, 2)
    annots, feats, s1_feats = part_inputs(part_a + part_b, store, base)
    out: Dict[str, Any] = {"machine": machine(), "loadavg_before": loadavg(), "keypoints": keypoints,
                           "threads": __import__("torch").get_num_threads(),
                           "stage1_descriptors_per_photo": float(np.mean([len(f["descriptors"]) for f in s1_feats]))}
    # stage 2: k LightGlue pairs (independent of N) and exhaustive pairs
    query, others = feats[0], feats[1:]
    match_scores(query, others[:4], base)  # warm-up
    for k in ks:
        with Timer() as t:
            match_scores(query, [others[i % len(others)] for i in range(k)], base)
        out[f"stage2_top{k}"] = {"wall": t.wall, "cpu": t.cpu}
        logger.info("stage 2, %d LightGlue pairs: %.2f s", k, t.wall)
    with Timer() as t:
        match_scores(query, [others[i % len(others)] for i in range(exhaustive_pairs)], base)
    out["exhaustive_pairs"] = exhaustive_pairs
    out["exhaustive_per_pair"] = {"wall": t.wall / exhaustive_pairs, "cpu": t.cpu / exhaustive_pairs}
    logger.info("exhaustive LightGlue: %.3f s a pair", t.wall / exhaustive_pairs)
    # stage-1 extraction of one query photo (full resolution, downsized to shortlist_image_size)
    from wbia_lightglue.data.images import read_image
    from wbia_lightglue.engine.stage1 import extract_stage1_features

    chips = [read_image(a.path) for a in annots[:10]]
    with Timer() as t:
        extract_stage1_features(chips, base)
    out["stage1_extract_per_photo"] = {"wall": t.wall / len(chips), "cpu": t.cpu / len(chips)}
    logger.info("stage-1 features of a full-resolution photo: %.2f s", t.wall / len(chips))
    # stage 1 at scale
    rng = np.random.default_rng(0)
    make = replicate(s1_feats, max(scale), rng)
    queries = [s1_feats[i] for i in range(0, len(s1_feats), max(1, len(s1_feats) // 5))][:5]
    for n in scale:
        kind = "ivfpq" if n >= SCALE_PQ_FROM else "auto"
        cap = SCALE_PQ_FEATURES if n >= SCALE_PQ_FROM else None

        def synthetic(i: int, cap: Optional[int] = cap) -> dict:
            return make(i, cap)

        cfg = base.replace(shortlist_index=kind)
        index = Stage1Index(cfg)
        with Timer() as build:
            step = n if n >= SCALE_PQ_FROM else 1000  # incremental growth below, one bulk add above
            for start in range(0, n, step):
                chunk = range(start, min(n, start + step))
                index.add([f"s{i}" for i in chunk], [synthetic(i) for i in chunk])
        index.search(queries[0])  # warm-up
        with Timer() as t:
            for q in queries:
                index.search(q)
        out[f"stage1_{n}"] = {
            "index": index.kind, "features_cap": cap, "vectors": index.num_vectors, "build_wall": build.wall,
            "build_cpu": build.cpu, "query_wall": t.wall / len(queries), "query_cpu": t.cpu / len(queries),
            "index_mib": index.index_bytes() / 2**20, "raw_mib": index.raw_bytes() / 2**20,
            "peak_rss_mib": rss_mib()}
        logger.info("stage 1 at %d: %s", n, out[f"stage1_{n}"])
        (output / "timing_partial.json").write_text(json.dumps(out, indent=1))  # a long run killed keeps these
        del index
    if hotspotter:  # WBIA's HotSpotter per query on the same photos (1-vs-flank, ~65 annotations)
        with Timer() as t:
            hotspotter_matrix(output, annots, "timing", use_cache=False)
        out["hotspotter_per_query"] = {"wall": t.wall / len(annots), "cpu": t.cpu / len(annots),
                                       "database": len(annots) // 2, "note": "wall includes WBIA's chip + "
                                       "feature computation and its index build, amortised over the queries"}
    out["loadavg_after"] = loadavg()
    return out


def timing_table(t: dict, ks: Sequence[int] = KS) -> str:
    per_pair = t["exhaustive_per_pair"]["wall"]
    k = int(load_config(None)["shortlist_k"])  # the default shortlist, when it was timed
    k = k if f"stage2_top{k}" in t else max(ks)
    lines = [f"{t['machine']}; {t['threads']} torch threads; load average before {t['loadavg_before']}, after "
             f"{t['loadavg_after']}; {t['keypoints']} keypoints; stage 1: "
             f"{t['stage1_descriptors_per_photo']:.0f} descriptors a photo\n",
             f"| annotations | stage-1 index | index MiB | raw MiB | stage 1 s/query | + stage 2 top-{k} s | "
             "two-stage s/query | exhaustive s/query |", "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for key, r in t.items():
        if not key.startswith("stage1_") or not key[7:].isdigit():
            continue
        n = int(key[7:])
        kind = r["index"] + (f", {r['features_cap']} desc/annot" if r["features_cap"] else "")
        stage2 = t[f"stage2_top{k}"]["wall"]
        lines.append(f"| {n:,} | {kind} | {r['index_mib']:.0f} | {r['raw_mib']:.0f} | {r['query_wall']:.2f} | "
                     f"{stage2:.2f} | {r['query_wall'] + stage2 + t['stage1_extract_per_photo']['wall']:.2f} | "
                     f"{n * per_pair:.0f} |")
    lines.append("\nstage 2 (LightGlue on the shortlist) s/query: " +
                 ", ".join(f"k={k} {t[f'stage2_top{k}']['wall']:.2f}" for k in ks) +
                 f"; exhaustive {per_pair:.3f} s a pair (measured on {t['exhaustive_pairs']} pairs, x N above); "
                 f"stage-1 extraction of the query photo {t['stage1_extract_per_photo']['wall']:.2f} s "
                 "(in two-stage s/query)")
    if "hotspotter_per_query" in t:
        h = t["hotspotter_per_query"]
        lines.append(f"HotSpotter (WBIA default pipeline) on the same photos: {h['wall']:.2f} s a query at 1-vs-"
                     f"~{h['database']}, {h['note']}")
    return "\n".join(lines)


def pq_recall(output: Path, keypoints: int) -> dict:
    """What PQ (and the scale curve's descriptor cap) cost on the real photos: part A + B stage-1 recall."""
    store = FeatureStore(output / "store")
    base = load_config(None, max_num_keypoints=keypoints, device="cpu")
    part_a, part_b = select(FULLRES, 2)
    out = {}
    for name, cfg in (("flat", base.replace(shortlist_index="flat")), ("ivf", base.replace(shortlist_index="ivf")),
                      ("ivfpq", base.replace(shortlist_index="ivfpq")),
                      (f"ivfpq, {SCALE_PQ_FEATURES} desc/annot",
                       base.replace(shortlist_index="ivfpq", shortlist_features=SCALE_PQ_FEATURES))):
        stored = annotation_features(part_a + part_b, store, cfg, progress=False, kind="stage1")
        annots = stored.annotations
        groups = [a.attributes["side"] for a in annots]
        labels = [a.individual for a in annots]
        s1 = stage1_matrix(stored.features, cfg, groups)
        out[name] = {f"recall@{k}": recall_at(s1, labels, k) for k in KS}
        out[name]["rank1"] = report(s1, annots).rank1
        logger.info("recall on %d photos, %s: %s", len(annots), name, out[name])
    return out


# ============================================================================ output
def table(acc: dict) -> str:
    lines = [f"Part A ({acc['part_a_photos']} photos) chose stage 1 by shortlist recall at {CHOOSE_K}: "
             + ", ".join(f"{v} {c['recall']:.2f}" for v, c in acc["part_a_choice"].items())
             + "; then shortlist_k (smallest within one query of the best Rank-1, sum_log1p): "
             + ", ".join(f"k={k} {100 * r['rank1']:.1f}" for k, r in acc["part_a_k"].items())
             + f" -> k = {acc['chosen_k']}\n",
             f"Part B (held-out individuals, {acc['part_b_photos']} photos), {acc['keypoints']} keypoints; "
             f"stage 1 chosen on part A: {acc['chosen_stage1']}; logistic weights (bias, w_lg, w_s1) = "
             f"{tuple(round(w, 3) for w in acc['logistic_weights'])}\n",
             "| variant | R-1 | R-5 | mAP | shortlist recall |", "|---|---:|---:|---:|---:|"]
    for name, r in acc["part_b"].items():
        recall = "-" if r["recall"] is None else f"{r['recall']:.2f}"
        lines.append(f"| {name} | {100 * r['rank1']:.1f} | {100 * r['rank5']:.1f} | {r['mAP']:.3f} | {recall} |")
    for key in ("bootstrap_vs_exhaustive", "bootstrap_vs_hotspotter"):
        if key in acc:
            b = acc[key]
            lines.append(f"\n{acc['chosen_stage1']} -> LightGlue top {acc['chosen_k']} (sum_log1p) {key[10:]}: "
                         f"Rank-1 {100 * b['rank1_gain']:+.1f} points (95% {100 * b['rank1_gain_95'][0]:+.1f} .. "
                         f"{100 * b['rank1_gain_95'][1]:+.1f}; {b['rank1_wins_losses'][0]} queries won, "
                         f"{b['rank1_wins_losses'][1]} lost), mAP {b['map_gain']:+.3f} (95% {b['map_gain_95'][0]:+.3f} "
                         f".. {b['map_gain_95'][1]:+.3f}), {b['queries']} queries, paired bootstrap")
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
    parser.add_argument("--scale", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--exhaustive-pairs", type=int, default=200)
    parser.add_argument("--timing-ks", type=int, nargs="+", default=list(KS), help="shortlist lengths timed")
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
        results["timing"] = timing(args.output, args.keypoints, args.scale, args.exhaustive_pairs, args.timing_ks,
                                   args.hotspotter)
        name = "timing.json" if args.scale == [1000, 10000, 100000] else f"timing_{'_'.join(map(str, args.scale))}.json"
        (args.output / name).write_text(json.dumps(results["timing"], indent=1))
        print(timing_table(results["timing"], args.timing_ks))
    return results


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
