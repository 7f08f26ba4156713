"""Self-contained HTML pages of identification and evaluation runs: what a reviewer looks at.

Per query: its photo, its top candidates (each individual's best-matching photo, the raw score, and
P(same individual) when a calibration exists) and, for each candidate, two pictures from the renderer WBIA
reviewers get (``drawing.render_pair``): the correspondences (``matches``) and the confidence heat
overlay (``heatmask``). An evaluation page adds the summary (CMC, mAP, answerable and skipped counts,
config, fingerprints), the CMC plot, every query marked correct or wrong at rank 1 with the true
individual's rank (errors first), and an "only errors" filter. A batch page (``identify QUERIES --output DIR``)
draws the first queries of the batch, lists every query with its rank-1 individual, and the failed ones with
their errors.

Images are embedded as base64 ``data:`` URIs rather than written to a sibling folder: the page is one file
that can be opened offline, attached to an e-mail or moved without losing its pictures, and its
Content-Security-Policy forbids every other load (no network, no local files). The size is bounded instead:
photos are downsized before anything is drawn (THUMB_PX, QUERY_PX, PICTURE_PX; JPEG), matches are computed only for
the candidates shown (one batched LightGlue call with ``return_matches`` per shown query; the ranking
itself comes from scores the caller already has), and an evaluation or a batch draws at most ``max_queries``
queries (the others are counted and listed, without pictures, in the table of all queries).

This module is over 400 lines because the page's markup, its stylesheet and the data it shows are kept in one
place (one self-contained page, one template); the pictures come from ``drawing``.
"""
from __future__ import annotations

import base64
import datetime
import html
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..data.dataset import Annotation, natural_key
from ..data.images import ImageReadError, read_image
from ..data.store import FeatureStore, annotation_features
from ..engine.calibration import Calibration
from ..engine.config import Config
from ..engine.scoring import match_pairs, name_scores
from ..files import atomic_write_text, printable
from .datasets import DatasetScores
from .drawing import render_pair
from .protocol import EvaluationReport

logger = logging.getLogger("wbia_lightglue")

THUMB_PX = 160  # long edge of a candidate's photo
QUERY_PX = 240  # long edge of the query's photo
PICTURE_PX = 200  # height of each photo in a match picture (side by side)
PREVIEW_PX = 2 * PICTURE_PX  # photos are downsized to this long edge once, before any drawing
JPEG_QUALITY = 75
PHOTO_CACHE = 64  # decoded, downsized photos kept while a page is built (a candidate recurs across queries)
DEFAULT_TOP = 3  # candidates per query on an evaluation page
DEFAULT_MAX_QUERIES = 50  # query sections drawn on an evaluation page (~0.2 MB each with 3 real-photo candidates)


@dataclass
class ShownCandidate:
    """One candidate row of a query section."""

    rank: int
    individual: str
    annotation: Annotation  # the individual's best-matching annotation (its photo is shown)
    score: float  # the individual's score (config ``name_score``)
    probability: Optional[float] = None  # P(same individual) of that annotation's raw score
    features: Optional[Mapping[str, Any]] = None  # that annotation's features; None: no match pictures
    truth: bool = False  # evaluation: this is the query's own individual


@dataclass
class ShownQuery:
    """One query section: the photo and its candidates, best first."""

    annotation: Annotation
    candidates: List[ShownCandidate]
    features: Optional[Mapping[str, Any]] = None  # the query's features; None: no match pictures
    truth: Optional[str] = None  # evaluation: the query's individual
    true_rank: Optional[int] = None  # evaluation: rank of the query's individual (protocol, ties pessimistic)
    skipped: Optional[str] = None  # evaluation: why the query is not counted (e.g. no other sighting)
    top_individual: Optional[str] = None  # evaluation: rank 1, also when no candidate is drawn
    top_score: Optional[float] = None
    label: Optional[str] = None  # how the query is named (default: the annotation's short name)

    @property
    def title(self) -> str:
        return self.label or self.annotation.name

    @property
    def status(self) -> str:
        """``error`` | ``correct`` | ``skipped`` (evaluation), ``identify`` (no truth known)."""
        if self.skipped is not None:
            return "skipped"
        if self.true_rank is None:
            return "identify"
        return "correct" if self.true_rank == 1 else "error"


@dataclass
class ReportSummary:
    """What building a page did (the CLI prints it)."""

    path: Path
    num_queries: int
    shown: int
    left_out: int
    pictures: int  # match pictures drawn (two per candidate with features)
    size_bytes: int
    seconds: float
    problems: List[str] = field(default_factory=list)  # photos that could not be read, pictures not drawn


# ============================================================================ pages
def identification_report(
    path: Union[str, Path],
    query: ShownQuery,
    config: Config,
    *,
    database: str,
    compared: int,
    skipped: Sequence[str] = (),
    calibration: Optional[Calibration] = None,
    plan: Optional[str] = None,
) -> ReportSummary:
    """Write the page of one identification (``identify --report``); returns what was written.

    ``plan``: a line on how the query was scored when it differs from the config's (the pipeline's
    no-stage-1-evidence fallback), shown among the facts.
    """
    start = time.perf_counter()
    drawer = _Drawer(config)
    section = _query_section(query, drawer, 1, evaluation=False)
    facts = [("query", str(query.annotation.path)), ("database", database),
             ("annotations compared", str(compared)),
             ("calibration", "yes: P(same individual) beside each score" if calibration else "none (raw scores only)")]
    if plan is not None:
        facts.insert(3, ("fallback", plan))
    body = [_facts_table(facts), _skipped_block(skipped), _config_block(config),
            '<main id="queries">', section, "</main>"]
    return _write(path, f"identify {query.annotation.name}", body, drawer, 1, 1, start)


def batch_report(
    path: Union[str, Path],
    queries: Sequence[ShownQuery],
    config: Config,
    *,
    database: str,
    failed: Sequence[Tuple[str, str]] = (),
    max_queries: int = DEFAULT_MAX_QUERIES,
    skipped: Sequence[str] = (),
    calibration: Optional[Calibration] = None,
    store: Optional[FeatureStore] = None,
    title: str = "",
    progress: bool = True,
) -> ReportSummary:
    """Write the page of a batch identification; returns what was written.

    ``queries``: the ranked queries in batch order, each with the candidates to draw; the first
    ``max_queries`` are drawn, all are listed. ``failed``: (query, error) of the queries that could not be
    identified. Features are read back from ``store`` for the drawn queries and candidates only.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    shown = list(queries[:max(0, max_queries)])
    _attach_features(shown, store or FeatureStore(), config)
    drawer = _Drawer(config)
    bar = tqdm(shown, desc="report", unit="query", disable=not progress or not shown)
    sections = [_query_section(query, drawer, k, evaluation=False) for k, query in enumerate(bar, start=1)]
    facts = [("queries", f"{len(queries) + len(failed)}: {len(queries)} ranked, {len(failed)} failed"),
             ("database", database),
             ("calibration", "yes: P(same individual) beside each score" if calibration else "none (raw scores only)")]
    controls = f'<div class="controls"><span>{len(shown)} of {len(queries)} ranked queries drawn (in batch order)'
    if len(shown) < len(queries):
        controls += (f'; <strong id="left-out">{len(queries) - len(shown)} left out</strong>: all are listed in the '
                     "last table (identify --report-queries raises the cap)")
    controls += "</span></div>"
    body = [_facts_table(facts, "summary"), _failed_block(failed), _skipped_block(skipped), _config_block(config),
            controls, '<main id="queries">', *sections, "</main>", _batch_queries_table(queries, len(shown))]
    return _write(path, f"identify {title}", body, drawer, len(queries), len(shown), start)


def evaluation_queries(
    scored: DatasetScores,
    report: EvaluationReport,
    *,
    top: int = DEFAULT_TOP,
    calibration: Optional[Calibration] = None,
) -> List[ShownQuery]:
    """Every query of an evaluation with its ``top`` candidates, errors first, then correct, then skipped.

    Candidates come from the score matrix the evaluation already has (no matching here); their order is
    the protocol's (name score, ties against the query), so the true individual's place agrees with its rank.
    """
    annots = scored.dataset.annotations
    method = report.meta.get("name_score", "max")
    queries = []
    for q, (annot, result) in enumerate(zip(annots, report.queries)):
        row = scored.scores[q]
        others = [j for j in range(len(annots)) if j != q and np.isfinite(row[j])]
        ranked = _rank_row(row, annots, others, method, annot.individual)
        candidates = [ShownCandidate(rank, name, annots[best], score, truth=name == annot.individual,
                                     probability=None if calibration is None
                                     else float(calibration.probability(row[best])))
                      for rank, (name, score, best) in enumerate(ranked[:top], start=1)]
        queries.append(ShownQuery(annot, candidates, truth=annot.individual, true_rank=result.rank,
                                  skipped=result.skipped, top_individual=ranked[0][0] if ranked else None,
                                  top_score=ranked[0][1] if ranked else None))
    order = {"error": 0, "correct": 1, "skipped": 2}
    return sorted(queries, key=lambda item: order[item.status])  # stable: dataset order within each kind


def evaluation_report(
    path: Union[str, Path],
    scored: DatasetScores,
    report: EvaluationReport,
    config: Config,
    *,
    cmc_png: Union[str, Path, None] = None,
    top: int = DEFAULT_TOP,
    max_queries: int = DEFAULT_MAX_QUERIES,
    calibration: Optional[Calibration] = None,
    store: Optional[FeatureStore] = None,
    title: str = "",
    progress: bool = True,
) -> ReportSummary:
    """Write the page of an evaluation (``evaluate`` writes ``DIR/report.html``); returns what was written.

    Features of the shown queries and candidates are read back from ``store`` (they were stored when the
    dataset was scored), so only those annotations are held in memory.
    """
    from tqdm.auto import tqdm

    start = time.perf_counter()
    queries = evaluation_queries(scored, report, top=top, calibration=calibration)
    shown = queries[:max(0, max_queries)]
    _attach_features(shown, store or FeatureStore(), config)
    drawer = _Drawer(config)
    sections = [_query_section(query, drawer, k, evaluation=True)
                for k, query in enumerate(tqdm(shown, desc="report", unit="query", disable=not progress), start=1)]
    left_out = len(queries) - len(shown)
    errors_left_out = sum(q.status == "error" for q in queries[len(shown):])
    controls = (f'<div class="controls"><label><input type="checkbox" id="only-errors"> only errors</label>'
                f'<span>{len(shown)} of {len(queries)} queries drawn (errors first)')
    if left_out:
        controls += (f'; <strong id="left-out">{left_out} left out</strong>'
                     f'{f" ({errors_left_out} of them errors)" if errors_left_out else ""}: '
                     "all are listed in the last table (evaluate --report-queries raises the cap)")
    controls += "</span></div>"
    overview = (f'<div class="overview">{_evaluation_summary(scored, report, config, calibration)}'
                f'{_cmc_block(cmc_png)}</div>')
    body = [overview,
            _skipped_block(report.meta.get("features", {}).get("skipped", [])), _config_block(config), controls,
            '<main id="queries">', *sections, "</main>", _all_queries_table(queries, len(shown))]
    heading = f"evaluate {title or scored.dataset.source.name}"
    return _write(path, heading, body, drawer, len(queries), len(shown), start)


# ============================================================================ building blocks
def _rank_row(row: np.ndarray, annots: Sequence[Annotation], others: Sequence[int], method: str,
              truth: str) -> List[Tuple[str, float, int]]:
    """(individual, name score, index of its best annotation), best first; ties rank the true individual last."""
    if not others:
        return []
    names = [annots[j].individual for j in others]
    per_name = name_scores([row[j] for j in others], names, method)
    best: Dict[str, int] = {}
    for j in others:
        name = annots[j].individual
        if name not in best or row[j] > row[best[name]]:
            best[name] = j
    order = sorted(per_name, key=lambda name: (-per_name[name], name == truth, natural_key(name)))
    return [(name, float(per_name[name]), best[name]) for name in order]


def _attach_features(queries: Sequence[ShownQuery], store: FeatureStore, config: Config) -> None:
    """Read the features of the shown queries and candidates back from the store (missing ones: no picture)."""
    wanted = list(dict.fromkeys([q.annotation for q in queries] + [c.annotation for q in queries
                                                                     for c in q.candidates]))
    if not wanted:
        return
    stored = annotation_features(wanted, store, config, progress=False)
    found = dict(zip(stored.annotations, stored.features))
    for query in queries:
        query.features = found.get(query.annotation)
        for candidate in query.candidates:
            candidate.features = found.get(candidate.annotation)


@dataclass
class _Photo:
    image: np.ndarray  # BGR, long edge <= PREVIEW_PX
    scale: float  # preview pixels per original chip pixel (keypoints are in chip pixels)

    def keypoints(self, points: np.ndarray) -> np.ndarray:
        return (np.asarray(points, np.float32).reshape(-1, 2) + 0.5) * self.scale - 0.5


class _Drawer:
    """Photos read once (downsized, a small LRU), thumbnails and match pictures as data URIs."""

    def __init__(self, config: Config):
        self.config = config
        self.pictures = 0
        self.problems: List[str] = []
        self._photos: "OrderedDict[Tuple[Path, Any], Union[_Photo, str]]" = OrderedDict()

    def photo(self, annot: Annotation) -> Union[_Photo, str]:
        """The downsized photo, or the reason it cannot be shown (the message names the file)."""
        key = (annot.path, annot.bbox)
        if key in self._photos:
            self._photos.move_to_end(key)
            return self._photos[key]
        import cv2

        try:
            image = read_image(annot.path, annot.bbox)
            scale = min(1.0, PREVIEW_PX / max(image.shape[:2]))
            if scale < 1:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            entry: Union[_Photo, str] = _Photo(image, scale)
        except ImageReadError as exc:
            logger.warning("report: %s; shown without its photo", exc)
            self.problems.append(str(exc))
            entry = str(exc)
        self._photos[key] = entry
        while len(self._photos) > PHOTO_CACHE:
            self._photos.popitem(last=False)
        return entry

    def thumbnail(self, annot: Annotation, css: str = "thumb", size: int = THUMB_PX) -> str:
        photo = self.photo(annot)
        if isinstance(photo, str):
            return f'<div class="missing {css}">photo not shown: {_esc(photo)}</div>'
        import cv2

        image = photo.image
        scale = min(1.0, size / max(image.shape[:2]))
        if scale < 1:
            image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        return _img(image, f"photo {annot.name}", css)

    def match_pictures(self, query: ShownQuery) -> Dict[int, Union[Tuple[str, str, int], str]]:
        """Per candidate position: (correspondences img, heat img, number of matches), or why there is none.

        One LightGlue call (``return_matches=True``) for all the query's candidates that can be drawn.
        """
        out: Dict[int, Union[Tuple[str, str, int], str]] = {}
        query_photo = self.photo(query.annotation)
        drawable = []
        for k, candidate in enumerate(query.candidates):
            photo = self.photo(candidate.annotation)
            if query.features is None or candidate.features is None:
                out[k] = "no features for this pair"
            elif isinstance(query_photo, str):
                out[k] = "the query photo cannot be read"
            elif isinstance(photo, str):
                out[k] = "this photo cannot be read"
            else:
                drawable.append(k)
        if not drawable:
            return out
        assert query.features is not None and isinstance(query_photo, _Photo)
        try:
            database = [query.candidates[k].features for k in drawable]
            results = match_pairs(query.features, [f for f in database if f is not None], self.config,
                                  return_matches=True)
        except (RuntimeError, ValueError) as exc:  # a report must not lose the run it reports on
            logger.warning("report: matching %s with its candidates failed (%s); no pictures", query.annotation.name,
                           exc)
            self.problems.append(f"{query.annotation.name}: {exc}")
            return {**out, **{k: f"matching failed: {exc}" for k in drawable}}
        kpts0 = query_photo.keypoints(query.features["keypoints"])
        for k, result in zip(drawable, results):
            candidate = query.candidates[k]
            photo = self.photo(candidate.annotation)
            assert isinstance(photo, _Photo) and candidate.features is not None
            assert result.matches is not None and result.confidences is not None  # asked for: return_matches
            kpts1 = photo.keypoints(candidate.features["keypoints"])
            pictures = [render_pair(query_photo.image, photo.image, kpts0, kpts1, result.matches, result.confidences,
                                    version, max_size=PICTURE_PX) for version in ("matches", "heatmask")]
            self.pictures += 2
            label = f"{query.annotation.name} with {candidate.annotation.name}"
            out[k] = (_img(pictures[0], f"correspondences: {label}", "picture"),
                      _img(pictures[1], f"confidence heat: {label}", "picture"), result.num_matches)
        return out


def _query_section(query: ShownQuery, drawer: _Drawer, number: int, evaluation: bool) -> str:
    status = query.status
    badge = {
        "error": f"wrong at rank 1: true individual {_esc(query.truth)} at rank {query.true_rank}",
        "correct": "correct at rank 1",
        "skipped": f"not counted: {_esc(query.skipped)}",
        "identify": "",
    }[status]
    pictures = drawer.match_pictures(query)
    calibrated = any(c.probability is not None for c in query.candidates)
    head = ["rank", "individual", "best photo", "score"] + (["P(same)"] if calibrated else []) + \
        ["correspondences", "confidence heat"]
    rows = []
    for k, c in enumerate(query.candidates):
        picture = pictures.get(k, "not drawn")
        if isinstance(picture, str):
            drawn = [f'<td colspan="2" class="missing">{_esc(picture)}</td>']
        else:
            drawn = [f"<td>{picture[0]}<div class=caption>{picture[2]} matches</div></td>", f"<td>{picture[1]}</td>"]
        truth = ' <span class="truth-mark">true individual</span>' if c.truth else ""
        cells = [f'<td class="num">{c.rank}</td>', f'<td class="name">{_esc(c.individual)}{truth}</td>',
                 f"<td>{drawer.thumbnail(c.annotation)}<div class=caption>{_esc(c.annotation.name)}</div></td>",
                 f'<td class="num">{c.score:.3f}</td>']
        if calibrated:
            cells.append(f'<td class="num">{"" if c.probability is None else f"{c.probability:.3f}"}</td>')
        rows.append(f'<tr class="{"truth" if c.truth else ""}">{"".join(cells + drawn)}</tr>')
    if rows:
        table = (f'<table class="candidates"><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>'
                 f'<tbody>{"".join(rows)}</tbody></table>')
    else:
        table = ('<p class="missing no-candidates">no candidates: nothing in the database is comparable '
                 "with this photo</p>")
    truth = f" &middot; individual <b>{_esc(query.truth)}</b>" if evaluation else ""
    return (f'<section class="query status-{status}" id="q{number}" data-status="{status}">'
            f'<h2><span class="qname">{_esc(query.title)}</span>{truth}'
            f'{f" <span class=badge>{badge}</span>" if badge else ""}</h2>'
            f'<div class="query-body"><figure class="query-photo">'
            f'{drawer.thumbnail(query.annotation, "query-thumb", QUERY_PX)}'
            f"<figcaption>{_esc(str(query.annotation.path))}</figcaption></figure>{table}</div></section>")


def _evaluation_summary(scored: DatasetScores, report: EvaluationReport, config: Config,
                        calibration: Optional[Calibration]) -> str:
    meta = report.meta
    feats = meta.get("features", {})
    facts = [(f"Rank-{k}", f"{100 * v:.1f}%") for k, v in report.cmc.items()]
    facts += [("mAP", f"{report.mean_average_precision:.3f}"),
              ("queries", f"{report.num_answerable} answerable of {report.num_queries} "
                          f"({report.num_skipped} skipped: no other sighting of the individual)"),
              ("dataset", str(scored.dataset.source)),
              ("individuals", str(len(scored.dataset.individuals))),
              ("compared", _compared(scored, config, meta.get("group_by"))),
              ("ranking", f"by individual, name score {meta.get('name_score', config['name_score'])}, "
                          "ties counted against the query"),
              ("features", f"{feats.get('extracted', 0)} extracted, {feats.get('loaded', 0)} loaded, "
                           f"{len(feats.get('skipped', []))} photos skipped"),
              ("calibration", "yes: P(same individual) beside each score" if calibration else "none")]
    return _facts_table(facts, "summary")


def _compared(scored: DatasetScores, config: Config, group_by: Optional[str]) -> str:
    """What the evaluation compared: every pair (of a group), or in two-stage mode stage 1 on every pair and
    LightGlue on each query's shortlist."""
    within = f" with the same {group_by}" if group_by else ""
    if scored.lightglue is None:
        return f"only annotations with the same {group_by}" if group_by else "every pair"
    matched = int(np.isfinite(scored.lightglue).sum())
    considered = int(np.isfinite(scored.scores).sum())
    return (f"two-stage: stage 1 on every pair{within}, LightGlue on each query's top {config['shortlist_k']} "
            f"({matched} of {considered} query-candidate pairs)")


def _cmc_block(cmc_png: Union[str, Path, None]) -> str:
    if cmc_png is None or not Path(cmc_png).is_file():
        return ""
    data = base64.b64encode(Path(cmc_png).read_bytes()).decode("ascii")
    return f'<figure class="cmc"><img src="data:image/png;base64,{data}" alt="CMC curve"></figure>'


def _skipped_block(skipped: Sequence[str]) -> str:
    if not skipped:
        return ""
    items = "".join(f"<li>{_esc(message)}</li>" for message in skipped)
    return (f'<details class="skipped-photos" open><summary>{len(skipped)} photo(s) skipped (unreadable or unusable)'
            f"</summary><ul>{items}</ul></details>")


def _failed_block(failed: Sequence[Tuple[str, str]]) -> str:
    if not failed:
        return ""
    items = "".join(f"<li><b>{_esc(query)}</b>: {_esc(error)}</li>" for query, error in failed)
    return (f'<details class="failed-queries" open><summary>{len(failed)} query photo(s) could not be identified'
            f"</summary><ul>{items}</ul></details>")


def _batch_queries_table(queries: Sequence[ShownQuery], shown: int) -> str:
    rows = []
    for k, query in enumerate(queries, start=1):
        name = _esc(query.title)
        link = f'<a href="#q{k}">{name}</a>' if k <= shown else name
        best = query.candidates[0] if query.candidates else None
        cells = [link, "" if best is None else _esc(best.individual), "" if best is None else f"{best.score:.3f}",
                 "" if best is None else _esc(best.annotation.name)]
        rows.append("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>")
    return ('<section id="all-queries"><h2>All ranked queries</h2><table class="all"><thead><tr><th>query</th>'
            "<th>rank-1 individual</th><th>score</th><th>its best photo</th></tr></thead>"
            f'<tbody>{"".join(rows)}</tbody></table></section>')


def _config_block(config: Config) -> str:
    facts = [("config file", config.source or "built-in defaults"), ("config fingerprint", config.fingerprint),
             ("feature fingerprint", config.feature_fingerprint), ("match fingerprint", config.match_fingerprint)]
    facts += [(key, str(value)) for key, value in config.to_dict().items()]
    return f"<details class=config><summary>config and fingerprints</summary>{_facts_table(facts)}</details>"


def _all_queries_table(queries: Sequence[ShownQuery], shown: int) -> str:
    rows = []
    for k, query in enumerate(queries, start=1):
        name = _esc(query.annotation.name)
        link = f'<a href="#q{k}">{name}</a>' if k <= shown else name
        result = {"error": "wrong", "correct": "correct", "skipped": f"not counted: {_esc(query.skipped)}",
                  "identify": ""}[query.status]
        top = "" if query.top_individual is None else _esc(query.top_individual)
        score = "" if query.top_score is None else f"{query.top_score:.3f}"
        rows.append(f'<tr class="status-{query.status}"><td>{link}</td><td>{_esc(query.truth)}</td><td>{result}</td>'
                    f'<td class="num">{"" if query.true_rank is None else query.true_rank}</td>'
                    f'<td>{top}</td><td class="num">{score}</td></tr>')
    return ('<section id="all-queries"><h2>All queries</h2><table class="all"><thead><tr><th>query</th>'
            "<th>individual</th><th>rank 1</th><th>true individual's rank</th><th>top individual</th>"
            f'<th>top score</th></tr></thead><tbody>{"".join(rows)}</tbody></table></section>')


def _facts_table(facts: Sequence[Tuple[str, str]], css: str = "facts") -> str:
    rows = "".join(f"<tr><th>{_esc(key)}</th><td>{_esc(value)}</td></tr>" for key, value in facts)
    return f'<table class="{css}">{rows}</table>'


def _img(image: np.ndarray, alt: str, css: str) -> str:
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"could not encode the picture {alt!r} as JPEG")
    uri = "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")
    height, width = image.shape[:2]
    return f'<img class="{css}" src="{uri}" width="{width}" height="{height}" alt="{_esc(alt)}">'


def _esc(text: Any) -> str:
    """Text for the page: unprintable characters and bytes of non-UTF-8 file names escaped, then markup."""
    return html.escape(printable(str(text)), quote=True)


def _write(path: Union[str, Path], heading: str, body: Sequence[str], drawer: _Drawer, num_queries: int,
           shown: int, start: float) -> ReportSummary:
    from .._version import __version__

    seconds = time.perf_counter() - start
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{_esc(heading)} - wbia-lightglue</title><style>{CSS}</style></head>\n"
            f'<body><header><h1>{_esc(heading)}</h1><p class="sub">wbia-lightglue {_esc(__version__)} &middot; '
            f"{stamp}</p></header>\n" + "\n".join(part for part in body if part)
            + f'\n<footer class="sub">page built in {seconds:.1f} s</footer><script>{SCRIPT}</script></body></html>\n')
    path = atomic_write_text(path, page)
    summary = ReportSummary(Path(path), num_queries, shown, num_queries - shown, drawer.pictures,
                            len(page.encode()), seconds, drawer.problems)
    logger.info("report %s: %d of %d queries, %d match pictures, %.1f MB, %.1f s", path, shown, num_queries,
                drawer.pictures, summary.size_bytes / 2**20, seconds)
    return summary


# Nothing but this page's own inline style and script and its data: images; no network, no local files.
CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
       "base-uri 'none'; form-action 'none'")
SCRIPT = """
(function () {
  var box = document.getElementById('only-errors');
  if (box) box.addEventListener('change', function () {
    document.body.classList.toggle('only-errors', box.checked);
  });
})();
"""
CSS = """
body { font: 14px/1.4 system-ui, -apple-system, "Segoe UI", "DejaVu Sans", sans-serif; margin: 0 1.5em 2em;
       color: #1d1d1f; background: #fafafa; }
header h1 { font-size: 1.4em; margin: .8em 0 0; } .sub { color: #666; margin: .2em 0 1em; }
table { border-collapse: collapse; } th, td { padding: 3px 8px; text-align: left; vertical-align: top; }
table.summary, table.facts { margin: .5em 0; background: #fff; border: 1px solid #ddd; }
table.summary th, table.facts th { font-weight: 600; color: #444; }
figure { margin: 0; } .overview { display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }
figure.cmc img { width: 420px; max-width: 100%; height: auto; border: 1px solid #ddd; background: #fff; }
details { margin: .6em 0; } summary { cursor: pointer; color: #0a58a5; }
.controls { position: sticky; top: 0; background: #fafafa; padding: .5em 0; border-bottom: 1px solid #ddd;
            z-index: 1; } .controls label { margin-right: 1.5em; font-weight: 600; }
section.query { background: #fff; border: 1px solid #ddd; border-left: 6px solid #999; margin: 1em 0;
                padding: .4em .8em .8em; }
section.status-error { border-left-color: #c62828; } section.status-correct { border-left-color: #2e7d32; }
section.status-skipped { border-left-color: #9e9e9e; }
section.query h2 { font-size: 1.05em; margin: .3em 0 .5em; }
.badge { font-size: .85em; font-weight: 600; padding: 1px 8px; border-radius: 9px; margin-left: .6em;
         background: #eee; }
.status-error .badge { background: #fde0e0; color: #8e0000; } .status-correct .badge { background: #dff3e0;
  color: #1b5e20; }
.query-body { display: flex; gap: 1em; align-items: flex-start; } .query-photo { flex: 0 0 auto; }
.query-photo figcaption, .caption { font-size: .8em; color: #666; word-break: break-all; max-width: 240px; }
table.candidates td { border-top: 1px solid #eee; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.truth td.name { font-weight: 700; } .truth-mark { font-size: .75em; color: #1b5e20; background: #dff3e0;
  padding: 0 5px; border-radius: 6px; }
img.picture { max-width: 100%; height: auto; } img.thumb, img.query-thumb { height: auto; max-width: 100%; }
.missing { color: #8e0000; font-style: italic; font-size: .9em; }
div.missing.thumb, div.missing.query-thumb { width: 140px; padding: 6px; border: 1px dashed #c62828; }
table.all { background: #fff; border: 1px solid #ddd; } table.all td { border-top: 1px solid #eee; }
tr.status-error td:nth-child(3) { color: #c62828; font-weight: 600; }
body.only-errors .status-correct, body.only-errors .status-skipped { display: none; }
"""
