"""``wbia-lightglue``: the parser, logging, and the one place errors become exit codes.

    wbia-lightglue identify QUERY_IMAGE DATABASE [--top K] [--json PATH] [--csv PATH]
    wbia-lightglue identify QUERIES DATABASE --output DIR [--top K] [--report-queries N]
    wbia-lightglue evaluate DATASET [--output DIR] [--limit-individuals N] [--group-by COLUMN]
    wbia-lightglue match IMAGE_A IMAGE_B [--output PNG]
    wbia-lightglue extract DATASET
    wbia-lightglue calibrate DATASET [--output JSON] [--group-by COLUMN]
    wbia-lightglue demo [--output DIR]
    wbia-lightglue setup-hesaff [--force]

Each command is a module of this package with ``add_parser`` (its arguments, ``set_defaults(func=run)``),
``run(args)`` and a ``main(...)`` callable from Python. Exit codes: 0 success, 2 usage or config error
(bad arguments, missing input, malformed CSV, invalid config), 1 runtime error (e.g. an unreadable query
image). Every error is one line on stderr.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Any, Callable, List, Optional

from ..data.dataset import DatasetError
from ..data.images import ImageReadError
from ..engine.calibration import CalibrationError
from ..engine.config import ConfigError
from ..engine.scoring import FeatureMismatchError
from . import calibrate, demo, evaluate, extract, identify, match, setup_hesaff
from .common import PROG, Parser, UsageError, common_options

logger = logging.getLogger("wbia_lightglue")

COMMANDS = (identify, evaluate, match, extract, calibrate, demo, setup_hesaff)  # in the order --help lists them


def build_parser() -> argparse.ArgumentParser:
    common = common_options()
    parser = Parser(prog=PROG, description="ALIKED+LightGlue animal re-identification.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        command.add_parser(commands, common)
    return parser


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


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the console script and ``python -m wbia_lightglue``; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except UsageError as exc:
        return _fail(exc, 2)
    restore_logging = _setup_logging(args.verbose)
    try:
        args.func(args)
    except (UsageError, ConfigError, DatasetError, CalibrationError) as exc:
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
