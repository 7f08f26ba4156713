"""Where a call enters the plugin, what it names becomes one :class:`core.Config`; inside, only that travels.

* :func:`as_config`: the ``config_path`` argument of an ibs method (a Config, a path or None) as a Config.
  The one place in the plugin that reads a config file.
* :func:`resolve_config_path`: a config file named by a web request or a query's ``cfgdict``, held to the
  config directory.
* :func:`from_depc_config` / :func:`features_depc_config`: between a Config and the dtool config of the
  depc tables, whose stored rows are keyed by the config file and the fingerprint of its contents.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

from .. import core
from ..engine import config as config_module

ConfigPath = Union[core.Config, str, Path, None]  # what the ibs methods accept as ``config_path``

MAX_CONFIG_PATH = 255  # characters of a web-supplied config_path (a file name inside the config directory)


def as_config(config_path: ConfigPath) -> core.Config:
    """The config ``config_path`` names: a Config as it is, a file read now, None the default file or defaults."""
    return core.load_config(config_path)


def from_depc_config(depc_config: Optional[Mapping[str, Any]]) -> core.Config:
    """The config of a depc table's dtool config (``LightGlueFeaturesConfig`` or ``LightGlueConfig``)."""
    depc_config = depc_config or {}
    return as_config(depc_config["config_path"] if "config_path" in depc_config else None)


def features_depc_config(config: core.Config) -> Dict[str, Any]:
    """The dtool config of ``config``'s rows in the LightGlueFeatures table.

    The fingerprint makes SQLite rows follow the file's *contents*: editing a config file that changes
    the features stores new rows instead of returning stale ones.
    """
    return {"config_path": config.source, "fingerprint": config.feature_fingerprint}


def resolve_config_path(config_path: Any) -> Optional[Path]:
    """A config file named by a web request, which may only name a file inside the config directory.

    ``None`` or ``''`` is the default config. Otherwise a file name relative to
    ``config_module.DEFAULT_CONFIG_DIR`` (or an absolute path inside it); ``..`` components, paths outside
    the directory, symlinks pointing out of it, names longer than ``MAX_CONFIG_PATH`` characters and NUL
    bytes are refused with ValueError. The messages never name the server's directory.
    """
    if config_path is None or config_path == "":
        return None
    if not isinstance(config_path, str):
        raise ValueError(f"config_path must be a string, got {type(config_path).__name__}")
    if len(config_path) > MAX_CONFIG_PATH:
        raise ValueError(f"config_path is {len(config_path)} characters long; at most {MAX_CONFIG_PATH}")
    if "\0" in config_path:
        raise ValueError("config_path may not contain a NUL character")
    if ".." in Path(config_path).parts:
        raise ValueError(f"config_path {config_path!r} may not contain '..'")
    root = Path(config_module.DEFAULT_CONFIG_DIR).resolve()
    candidate = Path(config_path) if Path(config_path).is_absolute() else root / config_path
    try:
        resolved = candidate.resolve()  # follows symlinks: a link out of the directory is caught below
        inside = resolved == root or root in resolved.parents
        is_file = inside and resolved.is_file()
    except OSError as exc:  # e.g. a name component over 255 bytes (ENAMETOOLONG), a symlink loop
        raise ValueError(f"config_path {config_path!r} cannot be used: {exc.strerror or 'invalid'}") from None
    if not inside:
        raise ValueError(f"config_path {config_path!r} is outside the config directory")
    if not is_file:
        raise ValueError(f"config_path {config_path!r} is not a file in the config directory")
    return resolved
