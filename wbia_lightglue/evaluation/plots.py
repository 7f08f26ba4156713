"""Plots of an evaluation: the CMC curve and the reliability diagram of a calibration (PNG files)."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Union

import numpy as np

from .protocol import EvaluationReport


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot, imported only when a plot is drawn
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cmc(reports: Dict[str, EvaluationReport], path: Union[str, Path], max_rank: int = 20) -> None:
    """Write a CMC curve (PNG) for one or more reports."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, report in reports.items():
        curve = _cmc_curve(report, max_rank)
        ax.plot(range(1, max_rank + 1), 100 * curve, marker="o", markersize=3,
                label=f"{name} (Rank-1 {100 * curve[0]:.1f}%, mAP {report.mean_average_precision:.3f})")
    ax.set_xlabel("rank")
    ax.set_ylabel("identification accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(1, max_rank)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"CMC ({reports and next(iter(reports.values())).num_answerable} answerable queries)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _cmc_curve(report: EvaluationReport, max_rank: int) -> np.ndarray:
    ranks = np.array([r.rank for r in report.queries if r.skipped is None])
    if len(ranks) == 0:
        return np.zeros(max_rank)
    return np.array([(ranks <= k).mean() for k in range(1, max_rank + 1)])


def plot_reliability(table: Dict[str, List[float]], brier: float, path: Union[str, Path], bins: int = 10,
                     title: str = "") -> None:
    """Reliability diagram (PNG) of a table from ``calibration.reliability``: observed frequency against mean
    predicted probability per bin (``bins`` equal-width bins, empty ones absent), the pairs per bin below;
    ``brier`` is shown in the legend."""
    plt = _pyplot()
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5, 6), dpi=100, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect")
    ax.plot(table["predicted"], table["observed"], marker="o",
            label=f"Brier {brier:.4f}, ECE {table['ece'][0]:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("predicted P(same individual)")
    ax.set_ylabel("observed frequency")
    ax.legend(loc="upper left", fontsize=8)
    ax.set_title(title or f"reliability ({int(sum(table['count']))} pairs)", fontsize=9)
    hist.bar(table["bin_low"], table["count"], width=1 / bins, align="edge", log=True)
    hist.set_xlim(0, 1)
    hist.set_xlabel("predicted P(same individual)")
    hist.set_ylabel("pairs")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
