"""Many photo queries against one database, resumable: the batch form of ``identify``.

One :class:`~.files.StoreSource` serves every query: the database's features and its stage-1 index are
loaded by the first query and kept, the models are built once per process (``engine.models``), and each
query goes through ``stages.score_query`` exactly as a single ``identify`` does.

A finished query's ranking is appended to a :class:`Journal` (one JSON line, flushed and fsynced) before the
next query starts. An entry is found again by

* the query's content key (``data.store.content_key``: sha256 of the photo file, plus the crop),
* the config's ``ranking_fingerprint`` (match settings, stage 1, fusion, name score) and
* the database's fingerprint (``database_fingerprint``: each annotation's path, crop, individual, size, mtime),

so a rerun keeps every query whose photo, config and database are unchanged and redoes the others; a killed
run loses at most the query in flight (a line torn by the kill is cut off when the journal is opened again).
A query photo that cannot be used (unreadable, truncated, too small) gets its error instead of a ranking and
the batch goes on; failures are not journaled, so a rerun tries them again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Protocol, Sequence, Tuple, Union

from ..data.dataset import Annotation, Dataset
from ..data.images import ImageReadError, read_image_bytes
from ..data.store import FeatureStore, StoreReport, content_key
from ..engine.calibration import Calibration
from ..engine.config import Config
from .stages import EvidenceSource, QueryScores, RankedIndividual, calibration_for, rank_individuals, score_query

logger = logging.getLogger("wbia_lightglue")

JOURNAL_VERSION = 1
CHECKPOINT_SECONDS = 60.0  # how often identify_batch hands the results so far to its checkpoint


class BatchSource(EvidenceSource[Annotation], Protocol):
    """What a batch needs of its source: the evidence, plus its database, store and config, and what the
    store did for the database (``files.StoreSource`` on this machine, ``distributed.ray_runner.RaySource``
    on a Ray cluster)."""

    database: Dataset
    store: FeatureStore
    config: Config
    database_report: StoreReport

    def close(self) -> None:
        """Release what the source holds beyond this process (nothing for a local one)."""


@dataclass
class Candidate:
    """One row of a ranking: an individual and its best-matching annotation."""

    rank: int
    individual: str
    annotation: str  # the individual's best-matching annotation (short name)
    score: float  # the ranking score (name score of the individual): fused (two-stage) or LightGlue's
    path: str = ""  # that annotation's image file
    probability: Optional[float] = None  # calibrated P(same individual) of that annotation's ranking score
    lightglue: Optional[float] = None  # that annotation's raw LightGlue score (None: outside the shortlist)


def candidate_rows(annotations: Sequence[Annotation], ranking: Sequence[RankedIndividual],
                   scored: Optional[QueryScores[Any]] = None,
                   calibration: Optional[Calibration] = None) -> List[Candidate]:
    """The ranking's rows for photos: each individual with its best-matching annotation (and its file).

    With the query's ``scored`` stages each row carries its best annotation's raw LightGlue score and, with a
    ``calibration``, the probability of that annotation's ranking score (a monotone map: same order).
    """
    rows = []
    for row in ranking:
        annot = annotations[row.best]
        probability = lightglue = None
        if scored is not None:
            if scored.matched[row.best]:
                lightglue = float(scored.lightglue[row.best])
            if calibration is not None:
                probability = float(calibration.probability(float(scored.scores[row.best])))
        rows.append(Candidate(row.rank, str(row.individual), annot.name, row.score, str(annot.path), probability,
                              lightglue))
    return rows


@dataclass
class QueryRanking:
    """One query of a batch: its top candidates, or the reason it has none."""

    query: str  # its label (``query_label``)
    path: str  # its photo file
    candidates: List[Candidate] = field(default_factory=list)  # best first, at most ``top``
    error: Optional[str] = None  # why the query could not be identified (then no candidates)
    key: Optional[str] = None  # content key of the photo; None when the file could not be read
    complete: bool = False  # the candidates are the whole ranking (it had no more than ``top`` individuals)
    compared: int = 0  # annotations the query was compared with
    resumed: bool = False  # read back from the journal rather than computed in this run
    fallback: Optional[str] = None  # two-stage without stage-1 evidence: QueryScores.fallback

    def to_dict(self) -> Dict[str, Any]:
        return {"query": self.query, "path": self.path, "error": self.error, "compared": self.compared,
                "resumed": self.resumed, "fallback": self.fallback, "candidates": [asdict(c) for c in self.candidates]}


class JournalBusy(RuntimeError):
    """Another process is writing the same journal (two batch runs on one output folder)."""


class Journal:
    """Append-only JSON lines of finished queries (see the module docstring); one writer at a time.

    Opening takes an exclusive lock (released by the kernel when the process dies, SIGKILL included), cuts
    off a last line torn by a kill, and reads the entries made under ``ranking`` and ``database``; entries of
    other configs or databases stay in the file and are not used.
    """

    def __init__(self, path: Union[str, Path], ranking: str, database: str):
        import fcntl

        self.path, self.ranking, self.database = Path(path), ranking, database
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_CLOEXEC", 0), 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise JournalBusy(f"{self.path} is being written by another run; wait for it or choose another "
                              "output folder") from None
        self._entries: Dict[str, Dict[str, Any]] = {}  # content key -> the entry's fields
        self.unused = 0  # entries made under another config or database
        self._read()

    def __enter__(self) -> "Journal":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # also releases the lock
            self._fd = -1

    def __len__(self) -> int:
        return len(self._entries)

    def _read(self) -> None:
        with open(self._fd, "rb", closefd=False) as handle:
            data = handle.read()
        end = data.rfind(b"\n") + 1
        if end < len(data):  # the last line was being written when the run was killed
            logger.info("journal %s: dropping a torn last line (%d bytes)", self.path, len(data) - end)
            os.ftruncate(self._fd, end)
        for number, line in enumerate(data[:end].splitlines(), start=1):
            entry = _journal_entry(line)
            if entry is None:
                logger.warning("journal %s line %d is not an entry this version wrote; ignored", self.path, number)
            elif (entry["ranking"], entry["database"]) != (self.ranking, self.database):
                self.unused += 1
            else:
                self._entries[entry["key"]] = entry

    def find(self, key: str, top: int) -> Optional[QueryRanking]:
        """The journaled ranking of the photo with content ``key`` (its ``top`` rows), if one can serve."""
        entry = self._entries.get(key)
        if entry is None or (entry["top"] < top and not entry["complete"]):
            return None
        candidates = [Candidate(**row) for row in entry["candidates"][:top]]
        return QueryRanking(entry["query"], entry["path"], candidates, key=key,
                            complete=entry["complete"] and len(candidates) == len(entry["candidates"]),
                            compared=entry["compared"], resumed=True,
                            fallback=entry["fallback"] if isinstance(entry.get("fallback"), str) else None)

    def record(self, result: QueryRanking, top: int) -> None:
        """Append one finished query and make it durable (flush + fsync) before returning."""
        assert result.key is not None and result.error is None, "only rankings are journaled"
        entry = {"v": JOURNAL_VERSION, "key": result.key, "ranking": self.ranking, "database": self.database,
                 "top": top, "complete": result.complete, "compared": result.compared, "query": result.query,
                 "path": result.path, "fallback": result.fallback, "candidates": [asdict(c) for c in result.candidates]}
        data = (json.dumps(entry, separators=(",", ":")) + "\n").encode("utf-8")
        while data:
            written = os.write(self._fd, data)
            data = data[written:]
        os.fsync(self._fd)
        self._entries[result.key] = entry


def _journal_entry(line: bytes) -> Optional[Dict[str, Any]]:
    """The fields of one journal line, or None when it is not an entry of this version."""
    try:
        entry = json.loads(line)
        ok = isinstance(entry, dict) and entry.get("v") == JOURNAL_VERSION and all(
            isinstance(entry.get(name), str) for name in ("key", "ranking", "database", "query", "path")) \
            and isinstance(entry.get("top"), int) and isinstance(entry.get("compared"), int) \
            and isinstance(entry.get("candidates"), list)
        if ok:  # every row has the fields of a Candidate, with numbers where the outputs format numbers
            rows = [Candidate(**row) for row in entry["candidates"]]
            ok = all(isinstance(r.rank, int) and isinstance(r.score, (int, float)) for r in rows)
    except (ValueError, TypeError):
        return None
    return entry if ok else None


def database_fingerprint(database: Dataset) -> str:
    """A digest of what the database holds: each annotation's path, crop and individual, its file's size and mtime.

    Cheap (one ``stat`` per photo, nothing read): an added, removed, relabelled or rewritten photo changes it.
    """
    digest = hashlib.sha256()
    for annot in database.annotations:
        try:
            info = os.stat(annot.path)
            stamp: Optional[Tuple[int, int]] = (info.st_size, info.st_mtime_ns)
        except OSError:
            stamp = None
        digest.update(json.dumps([os.path.abspath(annot.path), annot.bbox, annot.individual, stamp]).encode())
        digest.update(b"\n")
    return digest.hexdigest()[:16]


def query_label(queries: Dataset, query: Annotation) -> str:
    """How a query is named in the outputs: its path below the QUERIES folder (or as the CSV has it), plus the crop.

    A single photo is named as it was given.
    """
    source = queries.source
    if query.path == source:
        return str(source)
    base = source if source.is_dir() else source.parent
    try:
        label = query.path.relative_to(base).as_posix()
    except ValueError:
        label = str(query.path)
    return label if query.bbox is None else f"{label}@{','.join(map(str, query.bbox))}"


def identify_batch(
    queries: Dataset,
    source: BatchSource,
    config: Config,
    *,
    top: int,
    journal: Optional[Journal] = None,
    progress: bool = True,
    checkpoint: Optional[Callable[[List[QueryRanking]], None]] = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> List[QueryRanking]:
    """Each query of ``queries`` ranked against ``source``'s database (its ``top`` rows), in order.

    Queries found in ``journal`` are taken from it; the others are scored and journaled one by one.
    ``checkpoint`` receives the results so far every ``checkpoint_seconds`` (e.g. to rewrite the outputs).
    """
    from tqdm.auto import tqdm

    calibration = calibration_for(config)
    results: List[QueryRanking] = []
    last = time.monotonic()
    bar = tqdm(queries.annotations, desc="queries", unit="query", disable=not progress)
    for query in bar:
        result = _identify_one(queries, query, source, config, top, journal, calibration)
        results.append(result)
        if result.error is not None:
            logger.warning("%s; the batch goes on", result.error)
        if checkpoint is not None and time.monotonic() - last >= checkpoint_seconds:
            checkpoint(results)
            last = time.monotonic()
    bar.close()
    return results


def _identify_one(queries: Dataset, query: Annotation, source: BatchSource, config: Config, top: int,
                  journal: Optional[Journal], calibration: Optional[Calibration]) -> QueryRanking:
    label, path = query_label(queries, query), str(query.path)
    try:
        key = content_key(read_image_bytes(query.path), query.bbox)
    except ImageReadError as exc:
        return QueryRanking(label, path, error=str(exc))
    done = journal.find(key, top) if journal is not None else None
    if done is not None:
        return replace(done, query=label, path=path)
    try:
        scored = score_query(query, source, config)
    except ImageReadError as exc:  # undecodable, truncated, or a chip too small to use
        return QueryRanking(label, path, error=str(exc), key=key)
    ranking = rank_individuals(scored.scores.tolist(), [a.individual for a in scored.candidates], config["name_score"])
    rows = candidate_rows(scored.candidates, ranking, scored, calibration)
    result = QueryRanking(label, path, rows[:top], key=key, complete=len(rows) <= top,
                          compared=len(scored.candidates), fallback=scored.fallback)
    if journal is not None:
        journal.record(result, top)
    return result
