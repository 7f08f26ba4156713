"""WBIA's built-in HotSpotter on quality_nyala's subset and protocol, and a 1-vs-N per-query timing mode.

Protocol mode (default): a WBIA database is built in a temporary folder with the subset's photos
(``select_subset``: full-image annotations, name = individual). For each flank group,
``ibs.query_chips(qaids, daids)`` runs with the default pipeline (vsmany LNBNN), daids = every photo of
that flank (WBIA leaves the query itself out), so flanks are never compared, as in quality_nyala. Its
answers become the same protocol's EvaluationReport (``evaluation.evaluate_scores``, pessimistic ties):

* ``hotspotter annot`` - the annotation scores (``cm.get_annot_scores``; a database photo absent from
  the ChipMatch, or cut by HotSpotter's name shortlist (score -inf), scores 0) as the rows of a query x
  database matrix, with our name scores max/sum/mean_top3;
* ``hotspotter native`` - HotSpotter's own name scores (``cm.get_name_scores``, nsum by default): each
  annotation gets its name's score and name score ``max`` ranks names exactly by them (Rank-k only; its
  mAP is meaningless and left out of the table).

Timed (wall seconds): the queries, chip computation and hesaff feature extraction included (they run
lazily inside ``query_chips``); database creation reported apart.

1-vs-N mode (``--one-vs 100``): one query photo against N database photos of its flank, features of
both methods computed beforehand (cached); HotSpotter's first query builds its FLANN index (reported as
cold), a second query against the same database is the warm per-query time; ours is ``core.match_pairs``
after a warm-up call, at each ``--keypoints``.

    python benchmarks/hotspotter_nyala.py                               # the protocol, 40 individuals
    python benchmarks/hotspotter_nyala.py --individuals 6 --max-per-flank 2      # a smoke run
    python benchmarks/hotspotter_nyala.py --one-vs 100 --keypoints 512 1024      # per-query timing
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

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
from quality_nyala import DEFAULT_KEYPOINTS

from wbia_lightglue import core
from wbia_lightglue.data.dataset import Annotation
from wbia_lightglue.evaluation.protocol import evaluate_scores
from wbia_lightglue.wbia_plugin import compat as _wbia_compat

logger = logging.getLogger("wbia_lightglue")

DEFAULT_OUTPUT = RESULTS / "hotspotter_nyala"
SPECIES = "nyala"


def open_wbia(dbdir: Path):
    _wbia_compat.apply()
    with _wbia_compat.hidden_argv():
        import wbia

        return wbia.opendb(dbdir=str(dbdir), allow_newdir=True)


def build_database(ibs, annots: Sequence[Annotation]) -> List[int]:
    """Full-image annotations named by individual; returns the aids in ``annots`` order."""
    gids = ibs.add_images([str(a.path) for a in annots])
    if None in gids:
        raise RuntimeError("WBIA could not add some images")
    sizes = ibs.get_image_sizes(gids)
    aids = ibs.add_annots(gids, bbox_list=[(0, 0, w, h) for w, h in sizes], species_list=[SPECIES] * len(gids))
    ibs.set_annot_names(aids, [f"nyala_{a.individual}" for a in annots])
    return list(aids)


def query_groups(ibs, aids: Sequence[int], groups: Sequence[str], cfgdict: Optional[dict] = None):
    """query_chips per flank group; returns {qaid: ChipMatch} and the wall seconds spent."""
    cms, seconds = {}, 0.0
    for group in sorted(set(groups)):
        members = [aid for aid, g in zip(aids, groups) if g == group]
        start = time.perf_counter()
        for cm in ibs.query_chips(members, members, cfgdict=dict(cfgdict or {}), use_cache=False):
            cms[int(cm.qaid)] = cm
        seconds += time.perf_counter() - start
    return cms, seconds


def _evidence(score) -> float:
    """A HotSpotter score as evidence: absent (None) or cut by its shortlist (-inf) counts as 0.

    csum scores are >= 0, so this keeps every ranking under ``max`` and keeps sum/mean_top3 finite.
    """
    return float(score) if score is not None and np.isfinite(score) else 0.0


def score_matrices(ibs, cms, aids: Sequence[int], groups: Sequence[str]):
    """(annotation score matrix, native name score matrix): rows = queries, NaN = not compared."""
    n = len(aids)
    annot, native = np.full((n, n), np.nan), np.full((n, n), np.nan)
    nids = ibs.get_annot_nids(list(aids))
    for q, qaid in enumerate(aids):
        cm = cms[qaid]
        others = [j for j in range(n) if j != q and groups[j] == groups[q]]
        if not others:
            continue
        scores = cm.get_annot_scores([aids[j] for j in others])
        names = cm.get_name_scores([nids[j] for j in others])
        annot[q, others] = [_evidence(s) for s in scores]
        native[q, others] = [_evidence(s) for s in names]
    return annot, native


def protocol(annots: Sequence[Annotation], output: Path, workdir: Path) -> Dict[str, dict]:
    labels = [a.individual for a in annots]
    groups = [a.attributes["side"] for a in annots]
    ids = [a.name for a in annots]
    start = time.perf_counter()
    ibs = open_wbia(workdir / "hotspotter_db")
    aids = build_database(ibs, annots)
    setup = time.perf_counter() - start
    cms, seconds = query_groups(ibs, aids, groups)
    annot, native = score_matrices(ibs, cms, aids, groups)
    np.savez(output / "scores.npz", annot=annot, native=native, ids=np.array(ids), labels=np.array(labels))
    timing = {"database_seconds": setup, "query_seconds": seconds, "queries": len(aids),
              "seconds_per_query": seconds / max(1, len(aids)), "photos": len(aids)}
    logger.info("HotSpotter: %d queries in %.1f s (%.2f s/query), database built in %.1f s",
                len(aids), seconds, timing["seconds_per_query"], setup)
    folder = output / "reports"
    folder.mkdir(parents=True, exist_ok=True)
    rows: Dict[str, dict] = {"_timing": timing}
    for name, matrix, name_scores in (("hotspotter_annot", annot, core.NAME_SCORES),
                                      ("hotspotter_native", native, ("max",))):
        for name_score in name_scores:
            rep = evaluate_scores(matrix, labels, ids=ids, groups=groups, ranks=RANKS,
                                  name_score=name_score)
            rep.meta.update(variant=name, timing=timing, pipeline="default (vsmany)")
            rep.save(folder / f"{name}__{name_score}.json")
            rows[f"{name}|{name_score}"] = summary_row(rep)
    return rows


def markdown(rows: Dict[str, dict]) -> str:
    t = rows["_timing"]
    lines = [f"HotSpotter (WBIA default pipeline), {t['photos']} photos: {t['queries']} queries in "
             f"{t['query_seconds']:.1f} s ({t['seconds_per_query']:.2f} s/query, chips and features included); "
             f"database built in {t['database_seconds']:.1f} s.\n",
             "| variant | name score | R-1 | R-5 | mAP |", "|---|---|---:|---:|---:|"]
    for key, row in rows.items():
        if key.startswith("_"):
            continue
        variant, name_score = key.split("|")
        native = variant == "hotspotter_native"
        lines.append(f"| {variant} | {'nsum (WBIA)' if native else name_score} | {100 * row['rank1']:.1f} | "
                     f"{100 * row['rank5']:.1f} | {'-' if native else format(row['mAP'], '.3f')} |")
    return "\n".join(lines) + "\n"


# ============================================================================ 1-vs-N timing
def one_vs_many_photos(labels_csv: Path, count: int) -> List[Annotation]:
    """The first count + 2 left-flank photos in csv order (two queries: cold and warm) - timing only."""
    with open(labels_csv, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["side"] == "left"][:count + 2]
    return [Annotation(labels_csv.parent / r["path"], r["individual"], None, {"side": "left"}) for r in rows]


def one_vs_many(labels_csv: Path, count: int, keypoints: Sequence[int], workdir: Path,
                cache_dir: Optional[Path], repeats: int = 3, screen: Sequence[float] = (0, 0)) -> dict:
    photos = one_vs_many_photos(labels_csv, count)
    database = photos[2:]  # photos[:2] are the queries
    out = {"database_photos": len(database)}
    ibs = open_wbia(workdir / "timing_db")
    aids = build_database(ibs, photos)
    ibs.get_annot_vecs(aids)  # chips + hesaff features beforehand (not timed)
    daids = aids[2:]
    start = time.perf_counter()
    ibs.query_chips([aids[0]], daids, cfgdict={}, use_cache=False)
    out["hotspotter_cold_seconds"] = time.perf_counter() - start  # includes the FLANN index build
    warm = []
    for _ in range(repeats):
        start = time.perf_counter()
        ibs.query_chips([aids[1]], daids, cfgdict={}, use_cache=False)
        warm.append(time.perf_counter() - start)
    out["hotspotter_warm_seconds"] = float(np.median(warm))
    for k in keypoints:
        config = core.Config({"max_num_keypoints": k, "screen_layer": int(screen[0]),
                              "screen_score": float(screen[1])})
        feats = subset_features(photos, config, cache_dir, progress=False).features
        core.match_pairs(feats[0], feats[2:4], config)  # warm-up (weights, allocator)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            core.match_pairs(feats[1], feats[2:], config)
            times.append(time.perf_counter() - start)
        out[f"lightglue_{k}_seconds"] = float(np.median(times))
    return out


# ============================================================================ main
def main(output: Path = DEFAULT_OUTPUT, individuals: int = DEFAULT_INDIVIDUALS,
         max_per_flank: int = DEFAULT_MAX_PER_FLANK, labels_csv: Path = NYALA,
         one_vs: Optional[int] = None, keypoints: Sequence[int] = DEFAULT_KEYPOINTS,
         cache_dir: Optional[Path] = None, workdir: Optional[Path] = None,
         screen: Sequence[float] = (0, 0)) -> dict:
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hotspotter_nyala_", dir=workdir) as tmp:
        if one_vs:
            result = one_vs_many(labels_csv, one_vs, keypoints, Path(tmp), cache_dir, screen=screen)
            result["screen"] = list(screen)
            (output / f"one_vs_{one_vs}.json").write_text(json.dumps(result, indent=1))
            print(json.dumps(result, indent=1))
            return result
        annots = select_subset(labels_csv, individuals, max_per_flank)
        rows = protocol(annots, output, Path(tmp))
    (output / "summary.json").write_text(json.dumps(rows, indent=1))
    table = markdown(rows)
    (output / "hotspotter_nyala.md").write_text(table)
    print(table)
    return rows


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--individuals", type=int, default=DEFAULT_INDIVIDUALS)
    parser.add_argument("--max-per-flank", type=int, default=DEFAULT_MAX_PER_FLANK)
    parser.add_argument("--labels", type=Path, default=NYALA)
    parser.add_argument("--one-vs", type=int, metavar="N", help="timing mode: one query against N photos")
    parser.add_argument("--keypoints", type=int, nargs="+", default=list(DEFAULT_KEYPOINTS))
    parser.add_argument("--cache-dir", type=Path, help="LightGlue feature store (timing mode)")
    parser.add_argument("--workdir", type=Path, help="where the temporary WBIA database goes (default: /tmp)")
    parser.add_argument("--screen", type=float, nargs=2, default=[0, 0], metavar=("LAYER", "MIN_SCORE"),
                        help="timing mode: our score screening (default 0 0: off, upstream's exact forward)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main(args.output, args.individuals, args.max_per_flank, args.labels, args.one_vs, args.keypoints,
         args.cache_dir, args.workdir, args.screen)
