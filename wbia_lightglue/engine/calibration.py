"""The calibration model: a monotone map from a raw pair score to P(same individual).

Raw LightGlue scores (config ``score``) are unbounded and their scale depends on the config (keypoints,
thresholds, score variant), so a calibration is tied to the config's ``match_fingerprint`` and is
ignored, with a logged warning, under any other config.

A calibration is a list of knots ``(x, p)``: raw score -> probability, non-decreasing, applied by linear
interpolation and clipped at both ends (``np.interp``). It is fitted on labelled annotation pairs
(every comparable pair of a labelled set, scored once) by isotonic regression (default) or by a
logistic regression on ``log1p(score)`` sampled into knots, and stored as a small JSON file::

    {"version": 1, "method": "isotonic", "match_fingerprint": "...", "score": "confidence_sum",
     "x": [...], "p": [...], "num_pairs": N, "num_positive": M, "meta": {...}}

The probability is the *pair* probability under the fitting set's share of same-individual pairs:
a database with a very different mix of individuals shifts it (the ranking never changes).

Location: next to the config file, ``<config>.calibration.json`` (``config.json`` ->
``config.calibration.json``); for the built-in defaults, ``<config dir>/config.calibration.json``
(``/v_config/lightglue`` unless ``WBIA_LIGHTGLUE_CONFIG_DIR`` says otherwise).

Fitting lives in :mod:`wbia_lightglue.evaluation.calibration`; this module only applies, reads and writes.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from ..files import atomic_write_text, read_regular_file
from . import config as config_module
from .config import Config

logger = logging.getLogger("wbia_lightglue")

FORMAT_VERSION = 1
CALIBRATION_SUFFIX = ".calibration.json"
MAX_CALIBRATION_BYTES = 16 << 20  # isotonic knots of millions of pairs fit in a few MB


class CalibrationError(ValueError):
    """A calibration cannot be fitted (no positive or no negative pairs) or a file is malformed."""


@dataclass
class Calibration:
    """Knots of a monotone raw score -> P(same individual) map (see the module docstring)."""

    x: List[float]
    p: List[float]
    match_fingerprint: str
    score: str
    method: str = "isotonic"
    num_pairs: int = 0
    num_positive: int = 0
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("x", "p"):  # lists of plain numbers: no strings ("1.5"), booleans, nested lists
            values = getattr(self, name)
            if not isinstance(values, (list, tuple, np.ndarray)) or not all(
                    isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                    for v in values):
                raise CalibrationError(f"calibration knots {name} must be a list of numbers")
        if not isinstance(self.match_fingerprint, str) or not isinstance(self.score, str):
            raise CalibrationError("calibration match_fingerprint and score must be strings")
        x, p = np.asarray(self.x, float), np.asarray(self.p, float)
        if x.ndim != 1 or len(x) == 0 or x.shape != p.shape:
            raise CalibrationError(f"calibration needs as many knots x as p (>= 1), got {x.shape} and {p.shape}")
        if not (np.all(np.isfinite(x)) and np.all(np.isfinite(p))):  # NaN passes every comparison below
            raise CalibrationError("calibration knots and probabilities must be finite numbers")
        if np.any(np.diff(x) < 0) or np.any(np.diff(p) < 0):
            raise CalibrationError("calibration knots must be non-decreasing in x and in p")
        if np.any(p < 0) or np.any(p > 1):
            raise CalibrationError("calibration probabilities must lie in [0, 1]")

    def probability(self, scores: Union[float, Sequence[float], np.ndarray]) -> np.ndarray:
        """P(same individual) of each raw score (array of the input's shape; clipped outside the knots)."""
        return np.interp(np.asarray(scores, float), self.x, self.p)

    def to_dict(self) -> Dict[str, Any]:
        return {"version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "Calibration":
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise CalibrationError(f"not a version-{FORMAT_VERSION} calibration")
        try:
            return cls(**{k: v for k, v in data.items() if k != "version"})
        except (TypeError, ValueError) as exc:  # unknown fields, or values numpy cannot read
            raise CalibrationError(f"malformed calibration: {str(exc)[:120]}") from None

    def save(self, path: Union[str, Path]) -> Path:
        """Write the JSON file atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=1))

    @classmethod
    def read(cls, path: Union[str, Path]) -> "Calibration":
        """Read a calibration file; CalibrationError (one line) for anything but a valid one, OSError if unreadable."""
        data = read_regular_file(path, MAX_CALIBRATION_BYTES)
        try:
            return cls.from_dict(json.loads(data.decode("utf-8")))
        except UnicodeDecodeError:
            raise CalibrationError(f"calibration {path} is not UTF-8 text (a binary file?)") from None
        except json.JSONDecodeError as exc:
            raise CalibrationError(f"calibration {path} is not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise CalibrationError(f"calibration {path} is nested too deeply") from None
        except CalibrationError:
            raise
        except (ValueError, TypeError) as exc:  # e.g. an integer of more than 4300 digits
            raise CalibrationError(f"calibration {path} is malformed: {str(exc)[:120]}") from None


def calibration_path(config: Config) -> Path:
    """Where the calibration of ``config`` lives: ``<config file stem>.calibration.json`` beside the file."""
    source = Path(config.source) if config.source else config_module.DEFAULT_CONFIG_DIR / "config.json"
    return source.with_name(source.stem + CALIBRATION_SUFFIX)


def save_calibration(calibration: Calibration, config: Config,
                     path: Union[str, Path, None] = None) -> Path:
    """Store ``calibration`` for ``config`` (at ``path``, default ``calibration_path(config)``)."""
    if calibration.match_fingerprint != config.match_fingerprint:
        raise CalibrationError(f"calibration was fitted under match fingerprint {calibration.match_fingerprint}, "
                               f"not this config's {config.match_fingerprint}")
    written = calibration.save(path if path is not None else calibration_path(config))
    logger.info("calibration saved to %s", written)
    return written


def load_calibration(config: Config, path: Union[str, Path, None] = None) -> Optional[Calibration]:
    """The calibration for ``config``, or None when there is none or it does not belong to this config.

    A file fitted under another match fingerprint (other keypoints, thresholds or score) is ignored
    with a warning, as is an unreadable one: raw scores are still returned, just without probabilities.
    """
    path = Path(path) if path is not None else calibration_path(config)
    if not path.exists():
        return None
    try:
        calibration = Calibration.read(path)
    except (OSError, CalibrationError) as exc:  # a FIFO, a folder, binary, ragged, NaN...: never fatal
        logger.warning("calibration %s is unusable (%s); scores are not calibrated", path, exc)
        return None
    if calibration.match_fingerprint != config.match_fingerprint:
        logger.warning("calibration %s was fitted under match fingerprint %s, but the config's is %s; "
                       "ignored (re-run calibrate)", path, calibration.match_fingerprint, config.match_fingerprint)
        return None
    return calibration


def probabilities(calibration: Optional[Calibration], scores: Sequence[float]) -> Optional[List[float]]:
    """Calibrated probabilities of ``scores``, or None without a calibration (callers put it beside the score)."""
    if calibration is None:
        return None
    return [float(v) for v in calibration.probability(scores)]
