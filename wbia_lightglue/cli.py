"""``wbia-lightglue``: the standalone tool. Argument parsing only; each command calls a step's ``main``.

    wbia-lightglue identify QUERY_IMAGE DATABASE [--top K] [--json PATH] [--csv PATH]
    wbia-lightglue evaluate DATASET [--output DIR] [--limit-individuals N] [--group-by COLUMN]
    wbia-lightglue match IMAGE_A IMAGE_B [--output PNG]
    wbia-lightglue extract DATASET
    wbia-lightglue calibrate DATASET [--output JSON] [--group-by COLUMN]
    wbia-lightglue demo [--output DIR]

Exit codes: 0 success, 2 usage or config error (bad arguments, missing input, malformed CSV, invalid
config), 1 runtime error (e.g. an unreadable query image). Every error is one line on stderr.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence

from . import calibration, demo, evaluate_dataset, extract, identify, match_pair
from .core import ConfigError, FeatureMismatchError, LightGlueConfig, load_config, resolve_device
from .dataset import DatasetError, ImageReadError

PROG = "wbia-lightglue"
logger = logging.getLogger("wbia_lightglue")


class UsageError(Exception):
    """Bad command-line arguments (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse, but errors are raised (one line, printed by ``main``) instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def _common_options() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--config", type=Path, help="JSON config file (default: built-in defaults, or "
                       "/v_config/lightglue/config.json when it exists)")
    group.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's)")
    group.add_argument("--keypoints", type=int, metavar="N", help="override max_num_keypoints")
    group.add_argument("--image-size", type=int, metavar="PX", help="override image_size (long edge)")
    group.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="feature store (default: ~/.cache/wbia_lightglue/features)")
    group.add_argument("-v", "--verbose", action="count", default=0, help="-v: progress messages, -vv: debug")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return common


def build_parser() -> argparse.ArgumentParser:
    common = _common_options()
    parser = _Parser(prog=PROG, description="ALIKED+LightGlue animal re-identification.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cmd = commands.add_parser("identify", parents=[common], help="rank a database's individuals for a photo")
    cmd.add_argument("query", type=Path, metavar="QUERY_IMAGE")
    cmd.add_argument("database", type=Path, metavar="DATABASE", help="folder <individual>/<image> or CSV")
    cmd.add_argument("--top", type=int, default=identify.DEFAULT_TOP, metavar="K", help="rows to show/write")
    cmd.add_argument("--json", type=Path, metavar="PATH", help="write the ranking as JSON")
    cmd.add_argument("--csv", type=Path, metavar="PATH", help="write the ranking as CSV")

    cmd = commands.add_parser("evaluate", parents=[common], help="1-vs-all CMC and mAP on a labelled dataset")
    cmd.add_argument("dataset", type=Path, metavar="DATASET")
    cmd.add_argument("--output", type=Path, default=evaluate_dataset.DEFAULT_OUTPUT, metavar="DIR")
    cmd.add_argument("--limit-individuals", type=int, metavar="N",
                     help="only the first N individuals (natural order; random with --seed)")
    cmd.add_argument("--seed", type=int, help="pick the --limit-individuals subset at random with this seed")
    cmd.add_argument("--group-by", metavar="COLUMN", help="compare only annotations with equal COLUMN (e.g. side)")

    cmd = commands.add_parser("match", parents=[common], help="score one pair of photos")
    cmd.add_argument("image_a", type=Path, metavar="IMAGE_A")
    cmd.add_argument("image_b", type=Path, metavar="IMAGE_B")
    cmd.add_argument("--output", type=Path, metavar="PNG", help="draw the correspondences here")

    cmd = commands.add_parser("extract", parents=[common], help="precompute a dataset's features")
    cmd.add_argument("dataset", type=Path, metavar="DATASET")
    cmd.add_argument("--limit-individuals", type=int, metavar="N")
    cmd.add_argument("--seed", type=int)

    cmd = commands.add_parser("calibrate", parents=[common],
                              help="fit score -> P(same individual) on a labelled dataset's pairs")
    cmd.add_argument("dataset", type=Path, metavar="DATASET")
    cmd.add_argument("--output", type=Path, metavar="JSON",
                     help="where to save it (default: beside the config file, <config>.calibration.json)")
    cmd.add_argument("--group-by", metavar="COLUMN", help="compare only annotations with equal COLUMN (e.g. side)")
    cmd.add_argument("--method", choices=calibration.METHODS, default="isotonic")

    cmd = commands.add_parser("demo", parents=[common], help="run end to end on built-in synthetic animals",
                              description="The demo uses 512 keypoints and 384 px images unless --keypoints or "
                                          "--image-size say otherwise (these win over --config too).")
    cmd.add_argument("--output", type=Path, default=demo.DEFAULT_OUTPUT, metavar="DIR")
    return parser


def _config(args: argparse.Namespace, base: Optional[Dict[str, Any]] = None) -> LightGlueConfig:
    overrides = dict(base or {})
    for key, value in (("max_num_keypoints", args.keypoints), ("image_size", args.image_size),
                       ("device", args.device)):
        if value is not None:
            overrides[key] = value
    config = load_config(args.config, **overrides)
    resolve_device(config)  # an unusable device is a config error: report it before any work
    return config


def _setup_logging(verbosity: int) -> Callable[[], None]:
    """Send the package's log to stderr for this run; returns the function that undoes it."""
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter())
    previous_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)

    def restore() -> None:  # main() may run in-process (tests, notebooks): leave the logger as found
        logger.removeHandler(handler)
        logger.setLevel(previous_level)

    return restore


class _Formatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        prefix = f"{PROG}: {record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        return prefix + record.getMessage()


def _features_line(loaded: int, extracted: int, skipped: Sequence[str]) -> str:
    line = f"features: {extracted} extracted, {loaded} loaded from the store"
    return line + (f", {len(skipped)} skipped (see warnings)" if skipped else "")


def run(args: argparse.Namespace) -> None:
    progress = not args.quiet
    if getattr(args, "top", 1) < 1:
        raise UsageError(f"--top must be at least 1, got {args.top} (see {PROG} {args.command} --help)")
    if args.command == "identify":
        result = identify.main(args.query, args.database, _config(args), top=args.top, cache_dir=args.cache_dir,
                               json_path=args.json, csv_path=args.csv, progress=progress)
        print(_features_line(result.loaded, result.extracted, result.skipped))
        print(result.table(args.top))
    elif args.command == "evaluate":
        report = evaluate_dataset.main(args.dataset, args.output, _config(args), limit=args.limit_individuals,
                                       seed=args.seed, group_by=args.group_by, cache_dir=args.cache_dir,
                                       progress=progress)
        feats = report.meta["features"]
        print(_features_line(feats["loaded"], feats["extracted"], feats["skipped"]))
        print(report.table())
        print(f"wrote {args.output / 'report.json'} and {args.output / 'cmc.png'}")
    elif args.command == "match":
        pair = match_pair.main(args.image_a, args.image_b, _config(args), output=args.output,
                               cache_dir=args.cache_dir)
        print(f"score {pair.score:.3f}  matches {pair.num_matches}")
        if pair.output is not None:
            print(f"wrote {pair.output}")
    elif args.command == "extract":
        report = extract.main(args.dataset, _config(args), limit=args.limit_individuals, seed=args.seed,
                              cache_dir=args.cache_dir, progress=progress)
        print(_features_line(report.loaded, report.extracted, report.failed))
    elif args.command == "calibrate":
        fitted = calibration.main(args.dataset, _config(args), args.output, group_by=args.group_by,
                                  method=args.method, cache_dir=args.cache_dir, progress=progress)
        check = fitted.held_out
        print(f"calibration ({fitted.calibration.method}) on {fitted.calibration.num_pairs} pairs "
              f"({fitted.calibration.num_positive} same individual): wrote {fitted.path}")
        if "brier" in check:
            print(f"held-out individuals ({check['held_out_pairs']} pairs): Brier {check['brier']:.4f} "
                  f"(base rate {check['brier_base_rate']:.4f}), ECE {check['ece']:.3f}"
                  + (f"; reliability diagram {fitted.reliability_png}" if fitted.reliability_png else ""))
    elif args.command == "demo":
        demo.main(args.output, _config(args, demo.DEMO_CONFIG), cache_dir=args.cache_dir, progress=progress)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script and ``python -m wbia_lightglue``; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _fail(exc, 2)
    restore_logging = _setup_logging(args.verbose)
    try:
        run(args)
    except (UsageError, ConfigError, DatasetError, calibration.CalibrationError) as exc:
        return _fail(exc, 2)
    except (ImageReadError, FeatureMismatchError, OSError, RuntimeError) as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    finally:
        restore_logging()
    return 0


def _fail(error: Any, code: int) -> int:
    message = " ".join(str(error).split())  # one line, whatever the exception held
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
