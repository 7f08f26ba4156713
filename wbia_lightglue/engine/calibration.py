"""The calibration model: a monotone map from a pair's ranking score to P(same individual).

The ranking score of a pair is the raw LightGlue score (exhaustive mode) or the fused score of stage 1 and
LightGlue (two-stage mode, ``engine.fusion``). Both are unbounded and their scale depends on the config, so a
calibration is tied to the config's ``pair_score_fingerprint`` (in exhaustive mode: its match fingerprint;
the file field keeps its historical name ``match_fingerprint``) and is ignored, with a logged warning, under
any other config.

A calibration is a list of knots ``(x, p)``: raw score -> probability, non-decreasing, applied by linear
interpolation and clipped at both ends (``np.interp``); a logistic fit also keeps its two coefficients
(``logistic = [a, b]``: p = sigmoid(a + b log1p(score))), applied instead of the knots, so the map stays
strictly increasing past the fitted range (no ties among strong matches). It is fitted on labelled annotation pairs
(every comparable pair of a labelled set, scored once) by isotonic regression (default) or by a
logistic regression on ``log1p(score)`` sampled into knots, and stored as a small JSON file::

    {"version": 1, "method": "isotonic", "match_fingerprint": "...", "score": "confidence_sum",
     "x": [...], "p": [...], "num_pairs": N, "num_positive": M, "meta": {...}}

The probability is the *pair* probability under the fitting set's share of same-individual pairs:
a database with a very different mix of individuals shifts it (the ranking never changes).

Location: next to the config file, ``<config>.calibration.json`` (``config.json`` ->
``config.calibration.json``; a two-stage config's: ``config.two_stage.calibration.json``); for the built-in
defaults, ``<config dir>/config[.two_stage].calibration.json`` (``/v_config/lightglue`` unless
``WBIA_LIGHTGLUE_CONFIG_DIR`` says otherwise). When that file is absent or belongs to other settings, a
calibration shipped inside the package (``wbia_lightglue/calibrations/``, fitted by
``benchmarks/default_calibration.py`` on the shared nyala fit part) is used if it was fitted under this
config's pair-score fingerprint: the built-in defaults are calibrated out of the box.

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
BUILTIN_DIR = Path(__file__).resolve().parents[1] / "calibrations"  # shipped with the package


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
    logistic: Optional[List[float]] = None  # [a, b] of p = sigmoid(a + b log1p(score)), b > 0; else the knots

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
        if self.logistic is not None:
            coef = self.logistic
            if not (isinstance(coef, (list, tuple)) and len(coef) == 2 and all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v) for v in coef)
                    and coef[1] > 0):
                raise CalibrationError("calibration logistic must be [a, b]: two finite numbers, b > 0")

    def probability(self, scores: Union[float, Sequence[float], np.ndarray]) -> np.ndarray:
        """P(same individual) of each score (array of the input's shape)."""
        values = np.asarray(scores, float)
        if self.logistic is not None:
            a, b = self.logistic
            z = a + b * np.log1p(np.maximum(np.nan_to_num(values, nan=0.0), 0.0))
            return 1.0 / (1.0 + np.exp(-np.clip(z, -500, 500)))
        return np.interp(values, self.x, self.p)

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
    """Where the calibration of ``config`` lives, beside its file: ``<config file stem>.calibration.json``
    for the raw LightGlue score (exhaustive), ``<stem>.two_stage.calibration.json`` for the fused one."""
    source = Path(config.source) if config.source else config_module.DEFAULT_CONFIG_DIR / "config.json"
    mode = "" if config.mode == "exhaustive" else ".two_stage"
    return source.with_name(source.stem + mode + CALIBRATION_SUFFIX)


def save_calibration(calibration: Calibration, config: Config,
                     path: Union[str, Path, None] = None) -> Path:
    """Store ``calibration`` for ``config`` (at ``path``, default ``calibration_path(config)``)."""
    if calibration.match_fingerprint != config.pair_score_fingerprint:
        raise CalibrationError(f"calibration was fitted under fingerprint {calibration.match_fingerprint}, "
                               f"not this config's {config.pair_score_fingerprint}")
    written = calibration.save(path if path is not None else calibration_path(config))
    logger.info("calibration saved to %s", written)
    return written


def load_calibration(config: Config, path: Union[str, Path, None] = None) -> Optional[Calibration]:
    """The calibration for ``config``, or None when there is none for these settings.

    The file at ``path`` (default ``calibration_path(config)``) when it was fitted under this config's
    pair-score fingerprint; else (no ``path`` given) a shipped one that was (``builtin_calibration``). A file
    fitted under other settings (keypoints, thresholds, score, stage 1, fusion) or an unreadable one is
    ignored with a warning: scores are still returned, just without probabilities.
    """
    explicit = path is not None
    path = Path(path) if path is not None else calibration_path(config)
    if path.exists():
        try:
            calibration = Calibration.read(path)
        except (OSError, CalibrationError) as exc:  # a FIFO, a folder, binary, ragged, NaN...: never fatal
            logger.warning("calibration %s is unusable (%s); scores are not calibrated by it", path, exc)
        else:
            if calibration.match_fingerprint == config.pair_score_fingerprint:
                return calibration
            logger.warning("calibration %s was fitted under fingerprint %s, but the config's is %s; ignored "
                           "(re-run calibrate)", path, calibration.match_fingerprint, config.pair_score_fingerprint)
    return None if explicit else builtin_calibration(config)


def builtin_calibration(config: Config) -> Optional[Calibration]:
    """The calibration shipped in the package for ``config``'s pair-score fingerprint, if any."""
    fingerprint = config.pair_score_fingerprint
    if fingerprint not in _BUILTIN:
        found = None
        for path in sorted(BUILTIN_DIR.glob("*" + CALIBRATION_SUFFIX)):
            try:
                calibration = Calibration.read(path)
            except (OSError, CalibrationError) as exc:  # a damaged install: say so, never fail a query
                logger.warning("shipped calibration %s is unusable: %s", path, exc)
                continue
            if calibration.match_fingerprint == fingerprint:
                found = calibration
                break
        _BUILTIN[fingerprint] = found
    return _BUILTIN[fingerprint]


_BUILTIN: Dict[str, Optional[Calibration]] = {}  # pair-score fingerprint -> shipped calibration (read once)


def probabilities(calibration: Optional[Calibration], scores: Sequence[float]) -> Optional[List[float]]:
    """Calibrated probabilities of ``scores``, or None without a calibration (callers put it beside the score)."""
    if calibration is None:
        return None
    return [float(v) for v in calibration.probability(scores)]
