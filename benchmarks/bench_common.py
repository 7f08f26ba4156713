"""What the benchmarks share: data locations, the fixed nyala subset, the machine line, timing, chips.

Benchmarks import the product (``wbia_lightglue``) and this module only: never ``tests/``.
"""
from __future__ import annotations

import csv
import os
import platform
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from wbia_lightglue import core
from wbia_lightglue.data.dataset import Annotation, natural_key
from wbia_lightglue.data.store import FeatureStore, StoredFeatures, annotation_features
from wbia_lightglue.evaluation.protocol import EvaluationReport

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
NYALA_DIR = SHARED / "data" / "nyala"
NYALA = NYALA_DIR / "labels.csv"
PHOTOS = ROOT / "tests" / "data" / "photos"  # LightGlue's four sample photos (NOTICE there)
RESULTS = ROOT / "benchmarks" / "results"

DEFAULT_INDIVIDUALS = 40
DEFAULT_MAX_PER_FLANK = 3
RANKS = (1, 5, 10)


# ============================================================================ the nyala subset
def select_subset(labels_csv: Path = NYALA, individuals: int = DEFAULT_INDIVIDUALS,
                  max_per_flank: int = DEFAULT_MAX_PER_FLANK, skip: int = 0) -> List[Annotation]:
    """The fixed same-flank subset (see quality_nyala.py's docstring; attributes: side, sighting).

    ``skip`` passes over the first eligible individuals: ``skip=40`` gives the next, disjoint 40
    (a held-out set for settings chosen on the default subset).
    """
    by_flank: Dict[Tuple[str, str], List[dict]] = defaultdict(list)
    with open(labels_csv, newline="") as handle:
        for row in csv.DictReader(handle):
            by_flank[(row["individual"], row["side"])].append(row)
    chosen: List[Annotation] = []
    names = sorted({ind for ind, _ in by_flank}, key=natural_key)
    kept = 0
    for name in names:
        flanks = ["left", "right"] if kept % 2 == 0 else ["right", "left"]  # alternate: balanced groups
        eligible = [by_flank[(name, side)] for side in flanks if len(by_flank.get((name, side), [])) >= 2]
        if not eligible:
            continue
        if skip > 0:
            skip -= 1
            continue
        rows = sorted(eligible[0], key=lambda r: natural_key(r["sighting"]))[:max_per_flank]
        chosen += [Annotation(labels_csv.parent / r["path"], name, None, {"side": r["side"], "sighting": r["sighting"]})
                   for r in rows]
        kept += 1
        if kept == individuals:
            break
    return chosen


def subset_features(annots: Sequence[Annotation], config: core.Config, cache_dir: Optional[Path] = None,
                    progress: bool = True) -> StoredFeatures:
    """Features of every photo of a subset from the store; a benchmark's subset must be complete."""
    stored = annotation_features(annots, FeatureStore(cache_dir), config, progress=progress)
    if len(stored.annotations) != len(annots):
        raise RuntimeError(f"{len(annots) - len(stored.annotations)} photos could not be read: {stored.report.failed}")
    return stored


def score_matrix(n: int, pairs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Symmetric n x n matrix from per-pair values (NaN = not compared)."""
    matrix = np.full((n, n), np.nan)
    matrix[pairs[:, 0], pairs[:, 1]] = values
    matrix[pairs[:, 1], pairs[:, 0]] = values
    return matrix


def summary_row(report: EvaluationReport) -> Dict[str, Any]:
    return {"rank1": report.cmc[1], "rank5": report.cmc[5], "mAP": report.mean_average_precision,
            "answerable": report.num_answerable}


# ============================================================================ machine and timing
def machine(device: Any = None) -> str:
    """One line naming the hardware and torch setup a figure was measured on."""
    import torch

    if device is not None and getattr(device, "type", device) == "cuda":
        return f"{torch.cuda.get_device_name(device)} (torch {torch.__version__})"
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


def measure(fn: Callable[[], object], device: Any = None, repeat: int = 1) -> float:
    """Seconds per call after one warm-up call (CUDA synchronised)."""
    import torch

    cuda = device is not None and getattr(device, "type", device) == "cuda"
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    if cuda:
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / repeat


def load_chips(count: int) -> List[np.ndarray]:
    """``count`` chips: nyala photos of one flank (query = first), else the sample photos, else the
    product's synthetic animals."""
    import cv2

    if NYALA.is_file():
        with open(NYALA) as f:
            rows = [r for r in csv.DictReader(f) if r["side"] == "left"]
        return [cv2.imread(str(NYALA_DIR / r["path"])) for r in rows[:count]]
    if PHOTOS.is_dir():
        photos = [cv2.imread(str(p)) for p in sorted(PHOTOS.iterdir()) if p.suffix.lower() in (".jpg", ".png")]
        return [photos[i % len(photos)] for i in range(count)]
    from wbia_lightglue.data import synthetic

    return [synthetic.photograph(synthetic.make_individual(i), 0) for i in range(count)]
