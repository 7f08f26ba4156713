"""``wbia-lightglue demo``: the whole job end to end on synthetic animals that the package draws itself.

1. writes a folder dataset of 6 patterned individuals x 3 photos (``data.synthetic``; seeded, no downloads);
2. scores every pair once and evaluates 1-vs-all identification (the evaluation protocol: Rank-1/5,
   mAP, report.json, cmc.png);
3. prints identify's ranking of a few query photos against the rest (from the same scores: no rematching);
4. draws each query's correspondences with its top-ranked annotation;
5. writes ``report.html``: the evaluation as a self-contained page (the first photos with their top candidates
   and match pictures, every photo listed; evaluation.html_report) and prints its path.

Runs on CPU in well under two minutes with the demo's settings (512 keypoints, 384 px images).
"""
from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, List, Optional, Union

from ..data import synthetic
from ..data.dataset import load_dataset
from ..data.store import FeatureStore
from ..engine.config import ConfigLike, resolve_config
from ..evaluation import html_report
from ..evaluation.datasets import evaluate, save, score_dataset
from ..pipeline import rank_individuals
from . import identify
from . import match as match_pair
from .common import config_from_args

logger = logging.getLogger("wbia_lightglue")

DEFAULT_OUTPUT = Path("demo-output")  # the Makefile's folder, git-ignored
DEMO_CONFIG = {"max_num_keypoints": 512, "image_size": 384}
NUM_INDIVIDUALS = 6
PHOTOS_PER_INDIVIDUAL = 3
NUM_QUERIES = 3
REPORT_TOP = 3  # candidates drawn per photo in report.html
REPORT_QUERIES = 6  # photos drawn there (all 18 are listed): each costs 3 LightGlue pairs, ~0.6 s on 2 CPU cores


@dataclass
class DemoSummary:
    rank1: float  # over every answerable photo of the synthetic set
    mean_average_precision: float
    queries_correct: int  # of the identified queries, how many ranked their own individual first
    num_queries: int
    match_images: List[Path] = field(default_factory=list)
    report: Optional[html_report.ReportSummary] = None


def add_parser(commands: Any, common: argparse.ArgumentParser) -> None:
    cmd = commands.add_parser("demo", parents=[common], help="run end to end on built-in synthetic animals",
                              description="The demo uses 512 keypoints and 384 px images unless --keypoints or "
                                          "--image-size say otherwise (these win over --config too).")
    cmd.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, metavar="DIR")
    cmd.set_defaults(func=run)


def run(args: argparse.Namespace) -> None:
    main(args.output, config_from_args(args, DEMO_CONFIG), cache_dir=args.cache_dir, progress=not args.quiet)


def main(
    output: Union[str, Path] = DEFAULT_OUTPUT,
    config: ConfigLike = None,
    *,
    cache_dir: Union[str, Path, None] = None,
    seed: int = 0,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> DemoSummary:
    """Run the demo, writing everything under ``output``; ``echo`` receives the human-readable story.

    ``config`` defaults to DEMO_CONFIG; features are stored under ``output/features`` unless ``cache_dir``.
    """
    config = resolve_config(DEMO_CONFIG if config is None else config)
    output = Path(output)
    cache_dir = output / "features" if cache_dir is None else cache_dir
    root = synthetic.write_dataset(output / "dataset", NUM_INDIVIDUALS, PHOTOS_PER_INDIVIDUAL, seed)
    dataset = load_dataset(root)
    echo(f"demo: {len(dataset.individuals)} synthetic individuals x {PHOTOS_PER_INDIVIDUAL} photos in {root} "
         f"({config['max_num_keypoints']} keypoints, image size {config['image_size']})")

    scored = score_dataset(dataset, config, cache_dir=cache_dir, progress=progress)
    report = evaluate(scored, config, ranks=(1, 5), demo_seed=seed)
    save(report, output / "evaluation", label="synthetic demo")
    echo("\n1-vs-all identification over every photo:\n" + report.table())

    summary = DemoSummary(report.rank1, report.mean_average_precision, 0, 0)
    annots = scored.dataset.annotations
    for individual in dataset.individuals[::2][:NUM_QUERIES]:  # every other one: one per pattern kind
        # identify's ranking of this photo against all the others, from the pairs scored above
        q = next(i for i, a in enumerate(annots) if a.individual == individual)
        others = [j for j in range(len(annots)) if j != q]
        ranking = identify.candidate_rows([annots[j] for j in others], rank_individuals(
            scored.scores[q, others].tolist(), [annots[j].individual for j in others], config["name_score"]))
        best = ranking[0]
        correct = best.individual == individual
        summary.num_queries += 1
        summary.queries_correct += correct
        table = identify.Identification(str(annots[q].path), ranking).table(3)
        echo(f"\nquery {annots[q].name} (truly {individual}): {'correct' if correct else 'WRONG'}\n{table}")
        picture = output / "matches" / f"{annots[q].path.parent.name}-{annots[q].path.stem}_vs_{best.individual}.png"
        pair = match_pair.main(annots[q].path, best.path, config, output=picture, cache_dir=cache_dir)
        summary.match_images.append(pair.output)
        echo(f"  {pair.num_matches} matches with {best.annotation}; drawn in {pair.output}")

    summary.report = html_report.evaluation_report(
        output / "report.html", scored, report, config, cmc_png=output / "evaluation" / "cmc.png", top=REPORT_TOP,
        max_queries=REPORT_QUERIES, store=FeatureStore(cache_dir), title="synthetic demo", progress=progress)
    echo(f"\nreport: {summary.report.path} ({summary.report.shown} of {summary.report.num_queries} photos drawn with "
         f"their top {REPORT_TOP} candidates, {summary.report.size_bytes / 2**20:.1f} MB; open it in a browser)")
    echo(f"\ndemo finished: Rank-1 {100 * summary.rank1:.1f}% (mAP {summary.mean_average_precision:.3f}) over "
         f"{report.num_answerable} photos of {len(dataset.individuals)} individuals; "
         f"{summary.queries_correct}/{summary.num_queries} example queries correct; results in {output}")
    return summary
