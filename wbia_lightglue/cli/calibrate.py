"""``wbia-lightglue calibrate``: fit ranking score -> P(same individual) on a labelled dataset's pairs, save it.

The fitting and the file format are :mod:`wbia_lightglue.evaluation.calibration`; this step scores the
dataset through the pipeline under the config's mode (two-stage: the fused score of every directed (query,
candidate) pair; exhaustive: the raw LightGlue score of every pair), fits, saves beside the config, and checks
the fit on held-out individuals. It replaces the calibration shipped for the built-in defaults.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Union

from ..data.dataset import Dataset, load_dataset
from ..engine.calibration import Calibration, calibration_path, save_calibration
from ..engine.config import ConfigLike, resolve_config
from ..evaluation.calibration import METHODS, default_method, directed_pairs, fit, held_out_check, labelled_pairs
from ..evaluation.datasets import score_dataset
from .common import config_from_args, require_writable


@dataclass
class CalibrationRun:
    """What ``main`` did: the saved calibration and its held-out check."""

    calibration: Calibration
    path: Path
    held_out: Dict[str, Any]  # brier, ece, pairs, individuals of the by-individual split (fit on the rest)
    reliability_png: Optional[Path] = None


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("calibrate", parents=[common],
                              help="fit score -> P(same individual) on a labelled dataset's pairs")
    cmd.add_argument("dataset", type=Path, metavar="DATASET")
    cmd.add_argument("--output", type=Path, metavar="JSON",
                     help="where to save it (default: beside the config file, <config>.calibration.json)")
    cmd.add_argument("--group-by", metavar="COLUMN", help="compare only annotations with equal COLUMN (e.g. side)")
    cmd.add_argument("--method", choices=METHODS,
                     help="default: logistic for the two-stage (fused) score, isotonic for exhaustive LightGlue")
    cmd.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    fitted = main(args.dataset, config_from_args(args), args.output, group_by=args.group_by,
                  method=args.method, cache_dir=args.cache_dir, progress=not args.quiet)
    check = fitted.held_out
    print(f"calibration ({fitted.calibration.method}) on {fitted.calibration.num_pairs} pairs "
          f"({fitted.calibration.num_positive} same individual): wrote {fitted.path}")
    if "brier" in check:
        print(f"held-out individuals ({check['held_out_pairs']} pairs): Brier {check['brier']:.4f} "
              f"(base rate {check['brier_base_rate']:.4f}), ECE {check['ece']:.3f}"
              + (f"; reliability diagram {fitted.reliability_png}" if fitted.reliability_png else ""))


def main(dataset: Union[str, Path, Dataset], config: ConfigLike = None, output: Union[str, Path, None] = None, *,
         group_by: Optional[str] = None, method: Optional[str] = None, cache_dir: Union[str, Path, None] = None,
         progress: bool = True) -> CalibrationRun:
    """Score every comparable pair of a labelled dataset once, fit on all of them, save the calibration.

    Also fits on half the individuals and reports Brier score and a reliability diagram
    (``<output stem>.reliability.png``) on the pairs of the other half.
    """
    config = resolve_config(config)
    require_writable(Path(output).parent if output is not None else calibration_path(config).parent)
    data = dataset if isinstance(dataset, Dataset) else load_dataset(dataset)
    scored = score_dataset(data, config, group_by=group_by, cache_dir=cache_dir, progress=progress)
    labels = [a.individual for a in scored.dataset.annotations]
    directed = directed_pairs(config)
    method = method or default_method(config)
    scores, same = labelled_pairs(scored.scores, labels, directed=directed)
    calibration = fit(scores, same, config, method, dataset=str(data.source), group_by=group_by)
    path = save_calibration(calibration, config, output)
    png = path.with_name(path.name.replace(".json", "") + ".reliability.png")
    check = held_out_check(scored.scores, labels, config, method, plot=png, directed=directed)
    calibration.meta["held_out"] = check
    calibration.save(path)
    return CalibrationRun(calibration, path, check, png if png.is_file() else None)
