"""The shipped calibration of the default (two-stage) score, and the default settings' accuracy on held-out photos.

Two parts of the shared nyala data, disjoint by individual:

* **fit part** (``--part fit``): ``../shared/data/nyala`` (640 px) individuals that are NOT among the 40 of
  ``nyala-fullres`` (those hold the report part), the first ``--individuals`` (natural order) with >= 2 photos
  of a flank, the first 2 photos (by sighting) of each such flank. Every photo is a query against the others of
  its flank through the product's pipeline at the default settings (``evaluation.datasets.score_dataset``:
  stage 1, LightGlue on the top ``shortlist_k``, ``sum_log1p`` fusion). The calibration is fitted on every
  directed (query, candidate) pair's fused score (``evaluation.calibration.fit``, logistic) and, with
  ``--write-package``, written to ``wbia_lightglue/calibrations/`` with the fit's data, settings and date. The
  fit part is also where settings are checked: ``fusion_grid`` re-ranks its scored matrices with k <= 20 and
  other stage-1 weights (no new LightGlue pair needed).
* **report part** (``--part report``): part B of ``benchmarks/two_stage.py`` (full resolution, the 20 held-out
  individuals, 58 photos), evaluated at the default settings with the calibration of the fit part: Rank-1/5,
  mAP, Brier score and reliability of the calibrated pair probabilities, and (``--hotspotter``, needs wbia)
  WBIA's HotSpotter on the same queries with a paired bootstrap interval of the Rank-1 and mAP difference.

Score matrices are cached as ``<output>/<part>.npz`` under the config's ranking fingerprint (a changed setting
recomputes them; a shorter ``shortlist_k`` than the cached run's is taken from it: its pairs are a subset);
features in ``<output>/features``.

    python benchmarks/default_calibration.py --part fit --write-package
    python benchmarks/default_calibration.py --part report --hotspotter
"""
from __future__ import annotations

import argparse
import datetime
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
from bench_common import machine
from two_stage import FULLRES, NYALA, hotspotter_matrix, paired_bootstrap, read_rows, select

from wbia_lightglue.data.dataset import Annotation, Dataset, natural_key
from wbia_lightglue.engine.calibration import BUILTIN_DIR, Calibration
from wbia_lightglue.engine.config import Config, resolve_config
from wbia_lightglue.engine.fusion import fuse, fused_config, shortlist_positions
from wbia_lightglue.evaluation.calibration import fit, labelled_pairs, quality
from wbia_lightglue.evaluation.datasets import score_dataset
from wbia_lightglue.evaluation.protocol import EvaluationReport, evaluate_scores

logger = logging.getLogger("wbia_lightglue")

ROOT = Path(__file__).resolve().parents[1]
OUTPUT = ROOT / "benchmarks" / "results" / "default_calibration"
RANKS = (1, 5, 10)


def fit_part(individuals: int, per_flank: int = 2) -> List[Annotation]:
    """The fit part (see the module docstring)."""
    report_individuals = {row["individual"] for row in read_rows(FULLRES)}
    by: Dict[tuple, List[dict]] = defaultdict(list)
    for row in read_rows(NYALA):
        if row["individual"] not in report_individuals:
            by[(row["individual"], row["side"])].append(row)
    chosen: List[Annotation] = []
    names = sorted({ind for ind, _ in by}, key=natural_key)
    used = 0
    for name in names:
        if used >= individuals:
            break
        flanks = [sorted(by[(name, side)], key=lambda r: natural_key(r["sighting"]))[:per_flank]
                  for side in ("left", "right") if len(by.get((name, side), [])) >= 2]
        if not flanks:
            continue
        used += 1
        chosen += [Annotation(NYALA.parent / r["path"], name, None, {"side": r["side"]})
                   for rows in flanks for r in rows]
    return chosen


def scored_part(name: str, annots: List[Annotation], config: Config, output: Path) -> Dict[str, np.ndarray]:
    """Fused, stage-1 and LightGlue matrices of ``annots`` (cached under the config's ranking fingerprint)."""
    path = output / f"{name}.npz"
    paths = np.array([str(a.path) for a in annots])
    if path.is_file():
        with np.load(path) as data:
            cached = {k: data[k] for k in data.files}
        if np.array_equal(cached["paths"], paths):
            if str(cached["fingerprint"]) == config.ranking_fingerprint:
                return cached
            # scored with a longer shortlist and otherwise the same settings: its top k are inside it
            longer = next((k for k in range(int(config["shortlist_k"]) + 1, 101) if
                           str(cached["fingerprint"]) == config.replace(shortlist_k=k).ranking_fingerprint), None)
            if longer is not None:
                logger.info("%s: shortlist %d taken from the cached shortlist-%d run", name, config["shortlist_k"],
                            longer)
                return shorter_shortlist(cached, config)
    scored = score_dataset(Dataset(output / f"{name}.csv", annots), config, group_by="side",
                           cache_dir=output / "features", progress=True)
    if len(scored.dataset) != len(annots):
        raise SystemExit(f"{len(annots) - len(scored.dataset)} photos of the {name} part could not be read")
    out = {"scores": scored.scores, "stage1": scored.stage1, "lightglue": scored.lightglue, "paths": paths,
           "fingerprint": np.array(config.ranking_fingerprint)}
    output.mkdir(parents=True, exist_ok=True)
    np.savez(path, **out)
    return out


def shorter_shortlist(m: Dict[str, np.ndarray], config: Config) -> Dict[str, np.ndarray]:
    """The matrices of a run with ``config``'s shortlist_k from those of a run with a longer one: each query's
    top k of stage 1 were matched there too (same pairs, same LightGlue scores), then fused as the pipeline does."""
    s1_all, lg_all = m["stage1"], m["lightglue"]
    scores, lightglue = np.full_like(s1_all, np.nan), np.full_like(s1_all, np.nan)
    for q in range(len(s1_all)):
        cols = np.where(~np.isnan(s1_all[q]))[0]
        top = shortlist_positions(s1_all[q, cols], int(config["shortlist_k"]))
        inside = np.zeros(len(cols), bool)
        inside[top] = True
        lg = np.where(inside, np.nan_to_num(lg_all[q, cols], nan=0.0), 0.0)
        scores[q, cols] = fuse(lg, s1_all[q, cols], inside, config)
        lightglue[q, cols[top]] = lg[top]
    return {**m, "scores": scores, "lightglue": lightglue, "fingerprint": np.array(config.ranking_fingerprint)}


def report_of(scores: np.ndarray, annots: Sequence[Annotation]) -> EvaluationReport:
    return evaluate_scores(scores, [a.individual for a in annots], ids=[a.name for a in annots],
                           groups=[a.attributes["side"] for a in annots], ranks=RANKS)


def summary(report: EvaluationReport) -> Dict[str, float]:
    return {"rank1": round(100 * report.cmc[1], 1), "rank5": round(100 * report.cmc[5], 1),
            "mAP": round(report.mean_average_precision, 3), "queries": report.num_queries}


def fusion_grid(m: Dict[str, np.ndarray], annots: Sequence[Annotation], config: Config, ks: Sequence[int],
                weights: Sequence[float] = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0)) -> List[dict]:
    """Rank-1/5/mAP of ``log1p(lightglue) + w * log1p(stage 1)`` over the top k <= the scored shortlist, from the
    matrices already scored (``shorter_shortlist``: no new LightGlue pair). The logistic fusion with bias 0 and
    weights (1, w) ranks as that sum does."""
    return [{"k": k, "w_stage1": w, **summary(report_of(
        shorter_shortlist(m, fused_config(config.replace(shortlist_k=k), (0.0, 1.0, w)))["scores"], annots))}
        for k in ks for w in weights]


def run_fit(args: argparse.Namespace, config: Config) -> dict:
    annots = fit_part(args.individuals)
    m = scored_part("fit", annots, config, args.output)
    labels = [a.individual for a in annots]
    scores, same = labelled_pairs(m["scores"], labels, directed=True)
    today = datetime.date.today().isoformat()
    calibration = fit(scores, same, config, "logistic", fitted_on=(
        f"../shared/data/nyala (640 px): {len(set(labels))} individuals not in nyala-fullres, {len(annots)} photos "
        "(first 2 by sighting of each flank with >= 2), every directed within-flank pair"),
        settings="the built-in defaults", date=today, command="python benchmarks/default_calibration.py --part fit "
        f"--individuals {args.individuals} --write-package", machine=machine())
    fitted = {k: v for k, v in quality(calibration, scores, same).items() if k != "reliability"}
    out = {"photos": len(annots), "individuals": len(set(labels)), **fitted,
           "logistic": calibration.logistic, "fit_part_accuracy": summary(report_of(m["scores"], annots)),
           "fusion_grid": fusion_grid(m, annots, config, [k for k in (5, 10, 15, 20) if k <= config["shortlist_k"]])}
    if args.write_package:
        path = BUILTIN_DIR / "two_stage.calibration.json"
        calibration.meta["fit_part"] = {k: v for k, v in out.items() if k != "fusion_grid"}
        calibration.save(path)
        out["written"] = str(path.relative_to(ROOT))
    return out


def run_report(args: argparse.Namespace, config: Config) -> dict:
    _, part_b = select(FULLRES, 2)
    m = scored_part("report", part_b, config, args.output)
    report = report_of(m["scores"], part_b)
    out: Dict[str, Any] = {"default_two_stage": summary(report)}
    from wbia_lightglue.pipeline import calibration_for

    calibration: Optional[Calibration] = calibration_for(config)
    out["calibration"] = None
    if calibration is not None:
        scores, same = labelled_pairs(m["scores"], [a.individual for a in part_b], directed=True)
        out["calibration"] = quality(calibration, scores, same)
    if args.hotspotter:
        hs = report_of(hotspotter_matrix(args.output, part_b, "B"), part_b)
        out["hotspotter"] = summary(hs)
        out["vs_hotspotter"] = paired_bootstrap(report, hs)
    return out


def main(argv: Optional[Sequence[str]] = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=("fit", "report"), required=True)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--config", help="a config file or JSON overrides (default: the built-in defaults)")
    parser.add_argument("--individuals", type=int, default=30, help="fit part: how many individuals")
    parser.add_argument("--write-package", action="store_true", help="fit part: write the shipped calibration")
    parser.add_argument("--hotspotter", action="store_true", help="report part: also WBIA's HotSpotter")
    parser.add_argument("--json", type=Path, help="write the result here too")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    config = resolve_config(json.loads(args.config) if args.config and args.config.startswith("{") else args.config)
    if config.mode != "two_stage":
        raise SystemExit("the default calibration is of the two-stage score: this config is exhaustive")
    args.output.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), "config": config.ranking_fingerprint,
              args.part: run_fit(args, config) if args.part == "fit" else run_report(args, config)}
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent))
    main()
