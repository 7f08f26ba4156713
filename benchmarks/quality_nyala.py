"""Identification quality on real nyala photos: every score variant from ONE matching pass, per keypoint count.

Subset (fixed, deterministic; ``select_subset``): individuals in numeric id order; an individual is eligible
when one of its flanks has >= 2 photos; the first ``--individuals`` eligible ones are kept (default 40),
each with ONE flank - left for the 1st, 3rd, ... kept individual and right for the 2nd, 4th, ... (the
other flank when that one has < 2 photos), which balances the two flank groups - and at most
``--max-per-flank`` photos of it (default 3), the lowest sighting numbers first. Left and right flanks
share no pattern, so photos are compared only within a flank (the protocol's ``groups`` = side): with
one flank per individual every photo's query has 1-2 correct photos and the other individuals of its
flank as distractors.
Defaults: 40 individuals (31 with 3 photos, 9 with 2), 111 photos (54 left, 57 right), 3027 same-flank pairs.

For each keypoint count each same-flank pair is matched once (``core.match_pairs(return_matches=True)``,
one query against its later partners per call, as ``pipeline.SymmetricPairs``); the raw matches are
cached in ``<output>/matches_<keypoints>.npz`` (re-runs and new variants never re-match), and every
variant is derived from them:

* ``confidence_sum`` (the default score), ``match_count`` (confidence > 0.5), ``inlier_count`` and
  ``inlier_confidence_sum`` (MAGSAC fundamental matrix, ``core.geometric_inliers``): the engine's scores;
* ``kpscore_weighted``: confidence x sqrt(ALIKED keypoint score of both ends);
* ``lnbnn_t3``: the issue's naive LNBNN normalisation (confidence minus the query keypoint's 3rd best
  confidence over the database), kept to record its effect;
* distinctiveness (inverse document frequency of a query keypoint over the database, from the matches
  the batched matcher already returns; rows are query-oriented, so the score matrix is not symmetric):
  ``idf_photos`` (log((1 + N) / (1 + number of database photos the keypoint matches)), label-free),
  ``idf_names`` (the same over the database's *individuals*: a keypoint that matches many individuals -
  a rock, a log - counts little; uses only database labels, as a deployed database has them),
  ``inv_df_names`` (confidence / number of individuals matched), and ``idf_both`` (query-side
  ``idf_photos`` x the database photo's own ``idf_photos`` computed without the query).

Name scores max / sum / mean_top3 for each. Writes ``<output>/quality_nyala.md`` (table variant x
keypoints -> Rank-1, Rank-5, mAP), ``<output>/reports/<keypoints>/<variant>__<name score>.json``
(per-query rows, for query-by-query comparison) and ``<output>/summary.json``.

    python benchmarks/quality_nyala.py                                   # the full protocol (512, 1024)
    python benchmarks/quality_nyala.py --individuals 6 --max-per-flank 2 --keypoints 256   # a smoke run
"""
from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from bench_common import (
    DEFAULT_INDIVIDUALS,
    DEFAULT_MAX_PER_FLANK,
    NYALA,
    RANKS,
    RESULTS,
    select_subset,
    subset_features,
    summary_row,
)

from wbia_lightglue import core
from wbia_lightglue.data.dataset import Annotation
from wbia_lightglue.evaluation import calibration
from wbia_lightglue.evaluation.protocol import evaluate_scores, later_partners, same_group
from wbia_lightglue.files import atomic_write

logger = logging.getLogger("wbia_lightglue")

DEFAULT_OUTPUT = RESULTS / "quality_nyala"
DEFAULT_KEYPOINTS = (512, 1024)
NAME_SCORES = core.NAME_SCORES
MATCH_THRESHOLD = core.DEFAULTS["score_match_threshold"]  # match_count's confidence threshold
LNBNN_T = 3


# ============================================================================ matching (cached)
@dataclass
class PairMatches:
    """Raw LightGlue matches of every same-flank pair i < j (i = query side of the stored matches)."""

    pairs: np.ndarray  # P x 2 (i, j)
    matches: List[np.ndarray]  # per pair, K x 2 (keypoint of i, keypoint of j)
    confidences: List[np.ndarray]  # per pair, K
    seconds: float  # wall time spent matching (all sessions that filled the cache)

    def save(self, path: Path, meta: dict) -> None:
        counts = np.array([len(m) for m in self.matches], np.int64)
        arrays = {
            "pairs": self.pairs.astype(np.int32), "counts": counts,
            "matches": np.concatenate(self.matches).astype(np.int32) if self.matches else np.zeros((0, 2), np.int32),
            "confidences": (np.concatenate(self.confidences).astype(np.float32) if self.confidences
                            else np.zeros(0, np.float32)),
            "seconds": np.float64(self.seconds), "meta": np.array(json.dumps(meta)),
        }
        atomic_write(path, lambda out: np.savez_compressed(out, **arrays))

    @classmethod
    def load(cls, path: Path, meta: dict) -> Optional["PairMatches"]:
        if not path.is_file():
            return None
        with np.load(path) as data:
            if json.loads(str(data["meta"])) != meta:
                logger.warning("%s was made for another subset or config; re-matching", path)
                return None
            splits = np.cumsum(data["counts"])[:-1]
            return cls(data["pairs"].astype(np.int64), np.split(data["matches"].astype(np.int64), splits),
                       np.split(data["confidences"], splits), float(data["seconds"]))


def match_subset(feats: Sequence[dict], groups: Sequence[str], config: core.Config, cache: Path,
                 meta: dict, progress: bool = True, checkpoint_every: int = 8) -> PairMatches:
    """Match each same-group pair once (resuming from ``cache``; checkpointed every few queries)."""
    from tqdm.auto import tqdm

    found = PairMatches.load(cache, meta)
    done = PairMatches(np.zeros((0, 2), np.int64), [], [], 0.0) if found is None else found
    done_queries = {int(i) for i in done.pairs[:, 0]} if len(done.pairs) else set()
    n = len(feats)
    todo = [i for i in range(n) if i not in done_queries and later_partners(i, n, groups)]
    pairs, matches, confs = [tuple(p) for p in done.pairs], list(done.matches), list(done.confidences)
    seconds = done.seconds
    if todo:
        logger.info("matching %d queries (%d cached) -> %s", len(todo), len(done_queries), cache)
    if todo:
        core.get_matcher(config)  # load the weights outside the matching time
    bar = tqdm(todo, desc=f"match {config['max_num_keypoints']} kp", unit="query", disable=not progress)
    for count, i in enumerate(bar, start=1):
        partners = later_partners(i, n, groups)
        start = time.perf_counter()
        results = core.match_pairs(feats[i], [feats[j] for j in partners], config, return_matches=True)
        seconds += time.perf_counter() - start
        for j, result in zip(partners, results):
            pairs.append((i, j))
            matches.append(np.asarray(result.matches, np.int64).reshape(-1, 2))
            confs.append(np.asarray(result.confidences, np.float32))
        if count % checkpoint_every == 0 or count == len(todo):
            PairMatches(np.array(pairs, np.int64).reshape(-1, 2), matches, confs, seconds).save(cache, meta)
    return PairMatches(np.array(pairs, np.int64).reshape(-1, 2), matches, confs, seconds)


def pair_inliers(pm: PairMatches, feats: Sequence[dict], cache: Path, meta: dict) -> List[np.ndarray]:
    """MAGSAC inlier mask of every pair's matches (cached beside the matches)."""
    if cache.is_file():
        with np.load(cache) as data:
            if json.loads(str(data["meta"])) == meta and int(data["counts"].sum()) == sum(len(m) for m in pm.matches):
                return np.split(data["inliers"], np.cumsum(data["counts"])[:-1])
    masks = [core.geometric_inliers(feats[i]["keypoints"], feats[j]["keypoints"], m)
             for (i, j), m in zip(pm.pairs, pm.matches)]
    np.savez_compressed(cache, inliers=np.concatenate(masks) if masks else np.zeros(0, bool),
                        counts=np.array([len(m) for m in masks]), meta=np.array(json.dumps(meta)))
    return masks


# ============================================================================ score variants
@dataclass
class Oriented:
    """One pair's matches seen from a query: (query keypoint, database keypoint, confidence, inlier)."""

    q: np.ndarray
    d: np.ndarray
    conf: np.ndarray
    inlier: np.ndarray


def oriented_matches(pm: PairMatches, inliers: List[np.ndarray]) -> Dict[Tuple[int, int], Oriented]:
    """Both directions of every pair: (i, j) with i's keypoints first, and (j, i)."""
    out = {}
    for (i, j), m, c, inl in zip(pm.pairs, pm.matches, pm.confidences, inliers):
        c = np.asarray(c, np.float64)
        out[(int(i), int(j))] = Oriented(m[:, 0], m[:, 1], c, inl)
        out[(int(j), int(i))] = Oriented(m[:, 1], m[:, 0], c, inl)
    return out


def document_frequency(q: int, feats: Sequence[dict], om: Dict[Tuple[int, int], Oriented],
                       database: Sequence[int], labels: Sequence[str]) -> Tuple[np.ndarray, np.ndarray]:
    """Per keypoint of photo ``q``: how many database photos, and how many database individuals, it matches."""
    num = len(feats[q]["keypoints"])
    photos = np.zeros(num, np.int64)
    names: List[set] = [set() for _ in range(num)]
    for j in database:
        o = om[(q, j)]
        photos[o.q] += 1
        for k in o.q:
            names[k].add(labels[j])
    return photos, np.array([len(s) for s in names], np.int64)


def variant_scores(feats: Sequence[dict], labels: Sequence[str], groups: Sequence[str], pm: PairMatches,
                   inliers: List[np.ndarray]) -> Dict[str, np.ndarray]:
    """Every variant's n x n score matrix (row = query; NaN = not compared)."""
    n = len(feats)
    om = oriented_matches(pm, inliers)
    database = {q: [j for j in range(n) if j != q and same_group(groups, q, j)] for q in range(n)}
    df_photos, df_names, idf_photo = {}, {}, {}
    for q in range(n):
        df_photos[q], df_names[q] = document_frequency(q, feats, om, database[q], labels)
        idf_photo[q] = np.log((1 + len(database[q])) / (1 + df_photos[q]))
    scores = {name: np.full((n, n), np.nan) for name in VARIANTS}
    kp_scores = [np.asarray(f["keypoint_scores"], np.float64) for f in feats]
    for q in range(n):
        num_names = len({labels[j] for j in database[q]})
        # the t-th best confidence of each query keypoint over the database (0 when it matched fewer)
        per_kp = np.zeros((len(database[q]), len(feats[q]["keypoints"])))
        for row, j in enumerate(database[q]):
            o = om[(q, j)]
            per_kp[row, o.q] = o.conf
        t_best = -np.sort(-per_kp, axis=0)[LNBNN_T - 1] if len(database[q]) >= LNBNN_T else np.zeros(per_kp.shape[1])
        for j in database[q]:
            o = om[(q, j)]
            # the database photo's own distinctiveness, without the query's contribution
            # (log((1 + N - 1) / (1 + df - 1)): the query is one of j's database photos and matched these)
            idf_db = np.log(len(database[j]) / np.maximum(df_photos[j][o.d], 1))
            values = {  # the engine's own scores, then the experimental variants
                **{name: core.score_of_matches(name, o.conf, o.inlier, MATCH_THRESHOLD) for name in core.SCORE_NAMES},
                "kpscore_weighted": (o.conf * np.sqrt(kp_scores[q][o.q] * kp_scores[j][o.d])).sum(),
                "lnbnn_t3": np.maximum(o.conf - t_best[o.q], 0).sum(),
                "idf_photos": (o.conf * idf_photo[q][o.q]).sum(),
                "idf_names": (o.conf * np.log((1 + num_names) / (1 + df_names[q][o.q]))).sum(),
                "inv_df_names": (o.conf / np.maximum(df_names[q][o.q], 1)).sum(),
                "idf_both": (o.conf * idf_photo[q][o.q] * idf_db).sum(),
            }
            for name, value in values.items():
                scores[name][q, j] = value
    return scores


CALIBRATED_VARIANTS = ("confidence_sum", "inlier_count")
VARIANTS = ("confidence_sum", "match_count", "inlier_count", "inlier_confidence_sum", "kpscore_weighted",
            "lnbnn_t3", "idf_photos", "idf_names", "inv_df_names", "idf_both")


# ============================================================================ the benchmark
def run_keypoints(annots: List[Annotation], keypoints: int, output: Path, image_size: int,
                  cache_dir: Optional[Path], device: Optional[str], progress: bool,
                  screen: Sequence[float] = (core.DEFAULTS["screen_layer"], core.DEFAULTS["screen_score"]),
                  ) -> Dict[str, dict]:
    """Match (or load) one keypoint count, evaluate every variant x name score, save per-query reports."""
    config = core.Config({"max_num_keypoints": keypoints, "image_size": image_size,
                                   "screen_layer": int(screen[0]), "screen_score": float(screen[1]),
                                   **({"device": device} if device else {})})
    logger.info("config %s", config.to_dict())
    stored = subset_features(annots, config, cache_dir, progress)
    feats, keys = stored.features, stored.keys
    labels = [a.individual for a in annots]
    groups = [a.attributes["side"] for a in annots]
    ids = [a.name for a in annots]
    meta = {"photos": keys, "groups": groups, "match_fingerprint": config.match_fingerprint}
    pm = match_subset(feats, groups, config, output / f"matches_{keypoints}.npz", meta, progress)
    inliers = pair_inliers(pm, feats, output / f"inliers_{keypoints}.npz", meta)
    results: Dict[str, dict] = {}
    folder = output / "reports" / str(keypoints)
    folder.mkdir(parents=True, exist_ok=True)
    all_scores = variant_scores(feats, labels, groups, pm, inliers)
    for variant in CALIBRATED_VARIANTS:  # fitted on half the individuals, judged on the other half
        check = calibration.held_out_check(all_scores[variant], labels, config.replace(score=variant),
                                           plot=folder / f"reliability_{variant}.png")
        results[f"_calibration|{variant}"] = check
        logger.info("%d kp %s calibration (held-out individuals): %s", keypoints, variant, check)
    for variant, scores in all_scores.items():
        for name_score in NAME_SCORES:
            rep = evaluate_scores(scores, labels, ids=ids, groups=groups, ranks=RANKS, name_score=name_score)
            rep.meta.update(variant=variant, keypoints=keypoints, config=config.to_dict(),
                            num_pairs=len(pm.pairs), match_seconds=pm.seconds)
            rep.save(folder / f"{variant}__{name_score}.json")
            results[f"{variant}|{name_score}"] = summary_row(rep)
    logger.info("%d kp: %d pairs matched in %.0f s (%.2f pairs/s)", keypoints, len(pm.pairs), pm.seconds,
                len(pm.pairs) / max(pm.seconds, 1e-9))
    results["_run"] = {"pairs": len(pm.pairs), "match_seconds": pm.seconds, "photos": len(annots),
                       "individuals": len(set(labels)), "answerable": rep.num_answerable}
    return results


def markdown_table(summary: Dict[int, Dict[str, dict]], extra_rows: Sequence[Tuple[str, dict]] = ()) -> str:
    """variant x keypoints -> Rank-1 / Rank-5 / mAP, one block per name score."""
    kps = sorted(summary)
    lines = []
    for name_score in NAME_SCORES:
        lines += [f"\n**name score: {name_score}**\n",
                  "| variant | " + " | ".join(f"{k} kp R-1 | {k} kp R-5 | {k} kp mAP" for k in kps) + " |",
                  "|---|" + "---:|" * (3 * len(kps))]
        for variant in VARIANTS:
            cells = []
            for k in kps:
                row = summary[k][f"{variant}|{name_score}"]
                cells += [f"{100 * row['rank1']:.1f}", f"{100 * row['rank5']:.1f}", f"{row['mAP']:.3f}"]
            lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    for label, row in extra_rows:
        lines.append(f"\n{label}: Rank-1 {100 * row['rank1']:.1f}, Rank-5 {100 * row['rank5']:.1f}, "
                     f"mAP {row['mAP']:.3f}")
    for k in kps:
        for variant in CALIBRATED_VARIANTS:
            c = summary[k].get(f"_calibration|{variant}", {})
            if "brier" in c:
                lines.append(f"\ncalibration of {variant} at {k} kp (isotonic, fitted on half the individuals): "
                             f"held-out Brier {c['brier']:.4f} (base rate {c['brier_base_rate']:.4f}), "
                             f"ECE {c['ece']:.4f}, {c['held_out_pairs']} pairs of {c['held_out_individuals']} "
                             f"individuals")
    runs = "; ".join(f"{k} kp: {summary[k]['_run']['pairs']} pairs in {summary[k]['_run']['match_seconds']:.0f} s"
                     for k in kps)
    first = summary[kps[0]]["_run"]
    head = (f"Nyala, {first['individuals']} individuals, {first['photos']} photos, same-flank pairs only, "
            f"{first['answerable']} answerable queries. Matching: {runs}.")
    return head + "\n" + "\n".join(lines) + "\n"


def main(output: Path = DEFAULT_OUTPUT, keypoints: Sequence[int] = DEFAULT_KEYPOINTS,
         individuals: int = DEFAULT_INDIVIDUALS, max_per_flank: int = DEFAULT_MAX_PER_FLANK,
         image_size: int = core.DEFAULTS["image_size"], labels_csv: Path = NYALA,
         cache_dir: Optional[Path] = None, device: Optional[str] = None, progress: bool = True,
         screen: Sequence[float] = (core.DEFAULTS["screen_layer"], core.DEFAULTS["screen_score"])) -> dict:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    annots = select_subset(labels_csv, individuals, max_per_flank)
    (output / "subset.csv").write_text("path,individual,side,sighting\n" + "".join(
        f"{a.path.relative_to(labels_csv.parent)},{a.individual},{a.attributes['side']},{a.attributes['sighting']}\n"
        for a in annots))
    logger.info("subset: %d photos of %d individuals", len(annots), len({a.individual for a in annots}))
    summary = {k: run_keypoints(annots, k, output, image_size, cache_dir, device, progress, screen) for k in keypoints}
    (output / "summary.json").write_text(json.dumps({str(k): v for k, v in summary.items()}, indent=1))
    table = markdown_table(summary)
    (output / "quality_nyala.md").write_text(table)
    print(table)
    return summary


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--keypoints", type=int, nargs="+", default=list(DEFAULT_KEYPOINTS))
    parser.add_argument("--individuals", type=int, default=DEFAULT_INDIVIDUALS)
    parser.add_argument("--max-per-flank", type=int, default=DEFAULT_MAX_PER_FLANK)
    parser.add_argument("--image-size", type=int, default=core.DEFAULTS["image_size"])
    parser.add_argument("--labels", type=Path, default=NYALA, help="the nyala labels.csv")
    parser.add_argument("--cache-dir", type=Path, help="feature store (default: ~/.cache/wbia_lightglue/features)")
    parser.add_argument("--device")
    parser.add_argument("--screen", type=float, nargs=2, metavar=("LAYER", "MIN_SCORE"),
                        default=[core.DEFAULTS["screen_layer"], core.DEFAULTS["screen_score"]],
                        help="score screening (default: the config defaults; 0 0 = upstream's exact forward)")
    parser.add_argument("-q", "--quiet", action="store_true")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(args.output, args.keypoints, args.individuals, args.max_per_flank, args.image_size, args.labels,
         args.cache_dir, args.device, not args.quiet, args.screen)
