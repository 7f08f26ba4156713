"""What every command shares: the usage error, the common options, and the config they describe."""
from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path
from typing import Any, Dict, NoReturn, Optional, Sequence

from ..engine.config import Config, load_config
from ..engine.memory import check_memory
from ..files import check_writable_dir
from ..pipeline.files import check_stage1_source

PROG = "wbia-lightglue"


class UsageError(Exception):
    """Bad command-line arguments (exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse, but errors are raised (one line, printed by ``main``) instead of usage + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


def common_options() -> argparse.ArgumentParser:
    """The options every command takes (a parent parser)."""
    common = Parser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument("--config", type=Path, help="JSON config file (default: built-in defaults, or "
                       "/v_config/lightglue/config.json when it exists)")
    group.add_argument("--device", help="auto, cpu, cuda or cuda:N (default: the config's)")
    group.add_argument("--keypoints", type=int, metavar="N", help="override max_num_keypoints")
    group.add_argument("--image-size", type=int, metavar="PX", help="override image_size (long edge)")
    group.add_argument("--shortlist", type=int, metavar="K",
                       help="override shortlist_k: two-stage mode, LightGlue on the top K of stage 1 (0: exhaustive)")
    group.add_argument("--cache-dir", type=Path, metavar="DIR",
                       help="feature store (default: ~/.cache/wbia_lightglue/features)")
    group.add_argument("-v", "--verbose", action="count", default=0, help="-v: progress messages, -vv: debug")
    group.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return common


def config_from_args(args: argparse.Namespace, base: Optional[Dict[str, Any]] = None) -> Config:
    """The config file (or defaults) with ``base`` and the command-line overrides applied; device checked."""
    overrides = dict(base or {})
    for key, value in (("max_num_keypoints", args.keypoints), ("image_size", args.image_size),
                       ("device", args.device), ("shortlist_k", getattr(args, "shortlist", None))):
        if value is not None:
            overrides[key] = value
    config = load_config(args.config, **overrides)
    check_stage1_source(config)  # a WBIA-only setting (shortlist_source 'hotspotter'): refused here, before any work
    check_memory(config)  # an unusable device, or settings that cannot fit, is a config error: before any work
    return config


def require_writable(*folders: Optional[Path]) -> None:
    """UsageError (exit 2) unless files can be created in each folder, checked before any expensive work."""
    for folder in folders:
        if folder is None:
            continue
        reason = check_writable_dir(folder)
        if reason is not None:
            raise UsageError(f"cannot write to {folder} ({reason}); choose another output location")


def check_top(args: argparse.Namespace) -> None:
    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top} (see {PROG} {args.command} --help)")


def features_line(loaded: int, extracted: int, skipped: Sequence[str]) -> str:
    """One line saying where a run's features came from."""
    line = f"features: {extracted} extracted, {loaded} loaded from the store"
    return line + (f", {len(skipped)} skipped (see warnings)" if skipped else "")


def add_ray_option(cmd: argparse.ArgumentParser, what: str) -> None:
    """``--ray ADDRESS``: ``what`` runs on the Ray cluster whose head is there (``distributed.ray_runner``)."""
    cmd.add_argument("--ray", metavar="ADDRESS",
                     help=f"{what} on the Ray cluster whose head is at ADDRESS (host:port; `ray start --head`, or "
                          "127.0.0.1:PORT for one on this machine's loopback); the outputs are written here as "
                          "without it (needs the ray extra)")


def check_ray(args: argparse.Namespace) -> None:
    """UsageError when --ray is given and Ray is not installed (found without importing it)."""
    if getattr(args, "ray", None) is not None and importlib.util.find_spec("ray") is None:
        raise UsageError("--ray needs Ray in this environment: pip install 'wbia-lightglue[ray]'")
