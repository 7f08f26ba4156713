"""One evaluation protocol for every caller (ibs.lightglue_evaluate, the CLI, the benchmarks).

1-vs-all identification over a labelled set:

* every unordered pair inside a comparison group is scored once (``pipeline.SymmetricPairs``, through the
  pipeline: ``evaluation.datasets``) and the score is used in both directions; pairs from different groups
  (e.g. left vs right flank) are never compared;
* a query is *answerable* when it has a label and at least one other annotation of its group carries the
  same label; other queries are skipped and counted as skipped;
* unlabelled annotations (label None, or a WBIA nid <= 0) are each their own unknown individual: they can
  appear in rankings but are never a correct match;
* ranking is by individual (name score = the config's ``name_score`` over that individual's annotations);
  ties count against the query (a wrong individual with the same score ranks ahead), so constant scores
  earn nothing;
* CMC at the requested ranks and mAP (annotation-level average precision, ties again pessimistic) are
  averaged over answerable queries; the per-query rows are kept so two runs can be compared.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ..engine.scoring import name_scores
from ..files import atomic_write_text

logger = logging.getLogger("wbia_lightglue")

DEFAULT_RANKS = (1, 5, 10, 20)


def is_unlabelled(label: Any) -> bool:
    return label is None or (isinstance(label, (int, np.integer)) and label <= 0) or label == ""


@dataclass
class QueryResult:
    query: Any
    label: Any
    rank: Optional[int]  # rank of the first correct individual (1 = top); None when skipped
    average_precision: Optional[float]
    top_label: Any
    top_score: float
    correct_score: Optional[float]
    skipped: Optional[str] = None  # why the query was not counted


@dataclass
class EvaluationReport:
    cmc: Dict[int, float]
    mean_average_precision: float
    num_queries: int
    num_answerable: int
    num_skipped: int
    queries: List[QueryResult] = field(default_factory=list)
    meta: Dict[str, Any] = field(default_factory=dict)

    @property
    def rank1(self) -> float:
        return self.cmc.get(1, float("nan"))

    def to_dict(self) -> Dict[str, Any]:
        out = asdict(self)
        out["cmc"] = {str(k): v for k, v in self.cmc.items()}
        return out

    def save(self, path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, default=_json_default))  # never half a file

    def table(self) -> str:
        lines = [f"{'rank':>6} {'accuracy':>9}"]
        lines += [f"{k:>6} {100 * v:>8.1f}%" for k, v in self.cmc.items()]
        lines.append(f"{'mAP':>6} {self.mean_average_precision:>9.3f}")
        lines.append(f"answerable queries {self.num_answerable} of {self.num_queries} ({self.num_skipped} skipped)")
        return "\n".join(lines)


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return str(value)


def same_group(groups: Optional[Sequence[Any]], i: int, j: int) -> bool:
    """Whether items i and j may be compared (always, without groups)."""
    return groups is None or groups[i] == groups[j]


def later_partners(i: int, n: int, groups: Optional[Sequence[Any]] = None) -> List[int]:
    """The items j > i that item i is compared with: each unordered comparable pair appears once."""
    return [j for j in range(i + 1, n) if same_group(groups, i, j)]


def evaluate_scores(
    scores: np.ndarray,
    labels: Sequence[Any],
    ids: Optional[Sequence[Any]] = None,
    groups: Optional[Sequence[Any]] = None,
    ranks: Sequence[int] = DEFAULT_RANKS,
    name_score: str = "max",
) -> EvaluationReport:
    """CMC and mAP from a symmetric score matrix (NaN or the diagonal = not compared)."""
    n = len(labels)
    scores = np.asarray(scores, dtype=float)
    if scores.shape != (n, n):
        raise ValueError(f"score matrix is {scores.shape}, expected {(n, n)} for {n} labels")
    ids = list(ids) if ids is not None else list(range(n))
    # each unlabelled annotation is an individual of its own that nobody else shares
    identity = [("unlabelled", i) if is_unlabelled(lab) else ("label", lab) for i, lab in enumerate(labels)]
    results: List[QueryResult] = []
    for q in range(n):
        others = [j for j in range(n) if j != q and not np.isnan(scores[q, j]) and same_group(groups, q, j)]
        results.append(_rank_query(q, others, scores[q], identity, labels, ids, name_score))
    answerable = [r for r in results if r.skipped is None]
    cmc = {k: float(np.mean([r.rank <= k for r in answerable])) if answerable else float("nan") for k in ranks}
    mean_ap = float(np.mean([r.average_precision for r in answerable])) if answerable else float("nan")
    report = EvaluationReport(cmc, mean_ap, n, len(answerable), n - len(answerable), results,
                              meta={"name_score": name_score, "ties": "pessimistic"})
    logger.info("evaluation:\n%s", report.table())
    return report


def _rank_query(q, others, row, identity, labels, ids, name_score) -> QueryResult:
    if is_unlabelled(labels[q]):
        return QueryResult(ids[q], labels[q], None, None, None, float("nan"), None, skipped="unlabelled")
    relevant = [identity[j] == identity[q] for j in others]
    if not any(relevant):
        return QueryResult(ids[q], labels[q], None, None, None, float("nan"), None, skipped="no other sighting")
    per_name = name_scores([row[j] for j in others], [identity[j] for j in others], name_score)
    correct = per_name[identity[q]]
    wrong = [s for name, s in per_name.items() if name != identity[q]]
    rank = 1 + sum(s >= correct for s in wrong)
    top = max(per_name.items(), key=lambda item: (item[1], item[0] != identity[q]))  # ties: wrong first
    top_label = top[0][1] if top[0][0] == "label" else None
    return QueryResult(ids[q], labels[q], rank, _average_precision([row[j] for j in others], relevant),
                       top_label, float(top[1]), float(correct))


def _average_precision(scores: Sequence[float], relevant: Sequence[bool]) -> float:
    """AP with pessimistic ties: among equal scores, irrelevant items are ranked first."""
    order = sorted(range(len(scores)), key=lambda k: (-scores[k], relevant[k]))
    hits, total = 0, 0.0
    for position, k in enumerate(order, start=1):
        if relevant[k]:
            hits += 1
            total += hits / position
    return total / max(1, sum(relevant))
