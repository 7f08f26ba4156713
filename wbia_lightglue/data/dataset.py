"""Labelled photo collections for the standalone tool: a folder of ``<individual>/<image>`` or a CSV.

A CSV has the columns ``path`` (relative to the CSV's folder) and ``individual``; any other column is kept
as an attribute (e.g. ``side``, usable to restrict comparisons with ``--group-by``). The optional columns
``x, y, w, h`` (all four, in pixels of the full image) crop the annotation; a row with all four empty uses
the whole image.

Problems with the collection itself (missing folder, missing columns, a malformed bounding box) raise
``DatasetError``; a single image that cannot be read raises ``images.ImageReadError`` when read, so
callers can skip it and go on with the others.
"""
from __future__ import annotations

import csv
import logging
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Union

from .images import IMAGE_SUFFIXES, BBox

logger = logging.getLogger("wbia_lightglue")

REQUIRED_COLUMNS = ("path", "individual")
BBOX_COLUMNS = ("x", "y", "w", "h")


class DatasetError(ValueError):
    """The collection cannot be used (missing, empty, malformed CSV); the message names the file and line."""


@dataclass(frozen=True)
class Annotation:
    """One labelled photo (or a crop of it)."""

    path: Path
    individual: str
    bbox: Optional[BBox] = None
    attributes: Dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self) -> str:
        """A short label for tables and messages: ``<parent>/<file>`` plus the crop, if any."""
        label = f"{self.path.parent.name}/{self.path.name}"
        return label if self.bbox is None else f"{label}@{','.join(map(str, self.bbox))}"


@dataclass
class Dataset:
    """An ordered list of annotations read from ``source``."""

    source: Path
    annotations: List[Annotation]

    def __len__(self) -> int:
        return len(self.annotations)

    @property
    def individuals(self) -> List[str]:
        """Distinct individuals in natural order ("2" before "10")."""
        return sorted({a.individual for a in self.annotations}, key=natural_key)

    def column(self, name: str) -> List[str]:
        """The values of attribute ``name`` per annotation; DatasetError when a row lacks it."""
        if name == "individual":
            return [a.individual for a in self.annotations]
        missing = [a for a in self.annotations if name not in a.attributes]
        if missing:
            available = sorted({k for a in self.annotations for k in a.attributes})
            raise DatasetError(f"{self.source}: no column {name!r} to group by; "
                               f"available: {', '.join(available) or 'none'}")
        return [a.attributes[name] for a in self.annotations]

    def subset(self, individuals: Sequence[str]) -> "Dataset":
        keep = set(individuals)
        return Dataset(self.source, [a for a in self.annotations if a.individual in keep])


def natural_key(text: str) -> tuple:
    """Sort key that orders embedded numbers numerically ("ind2" < "ind10")."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def load_dataset(source: Union[str, Path]) -> Dataset:
    """Read a folder dataset or a CSV dataset (see the module docstring)."""
    source = Path(source)
    if source.is_dir():
        dataset = _load_folder(source)
    elif source.is_file():
        dataset = _load_csv(source)
    else:
        raise DatasetError(f"dataset {source} does not exist (expected a folder or a CSV file)")
    if not dataset.annotations:
        raise DatasetError(f"dataset {source} holds no images")
    logger.info("dataset %s: %d annotations of %d individuals", source, len(dataset), len(dataset.individuals))
    return dataset


def _load_folder(root: Path) -> Dataset:
    annotations = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        for image in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
            if image.is_file() and image.suffix.lower() in IMAGE_SUFFIXES:
                annotations.append(Annotation(image, folder.name))
    stray = [p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    if stray:  # an image outside any individual's folder has no label: say so rather than guess
        logger.warning("%s: %d images outside an <individual>/ folder are ignored (e.g. %s)",
                       root, len(stray), stray[0])
    return Dataset(root, annotations)


def _load_csv(path: Path) -> Dataset:
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
            header = list(rows[0].keys()) if rows else _header(path)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"CSV {path} cannot be read: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        raise DatasetError(f"CSV {path} lacks the column(s) {', '.join(missing)}; "
                           f"it has: {', '.join(c for c in header if c) or 'no header'}")
    has_bbox = [c in header for c in BBOX_COLUMNS]
    if any(has_bbox) and not all(has_bbox):
        raise DatasetError(f"CSV {path}: a bounding box needs all of the columns x, y, w, h; "
                           f"found only {', '.join(c for c in BBOX_COLUMNS if c in header)}")
    annotations = []
    for line, row in enumerate(rows, start=2):  # line 1 is the header
        annotations.append(_annotation_from_row(path, line, row, all(has_bbox)))
    return Dataset(path, annotations)


def _header(path: Path) -> List[str]:
    with open(path, newline="") as handle:
        return next(csv.reader(handle), [])


def _annotation_from_row(csv_path: Path, line: int, row: Dict[str, Optional[str]], has_bbox: bool) -> Annotation:
    where = f"CSV {csv_path} line {line}"
    if None in row:  # DictReader puts surplus cells under the key None
        raise DatasetError(f"{where}: more cells than header columns")
    path, individual = (row.get("path") or "").strip(), (row.get("individual") or "").strip()
    if not path or not individual:
        raise DatasetError(f"{where}: empty {'path' if not path else 'individual'}")
    bbox = _parse_bbox(where, [row.get(c) for c in BBOX_COLUMNS]) if has_bbox else None
    skip = set(REQUIRED_COLUMNS) | (set(BBOX_COLUMNS) if has_bbox else set())
    attributes = {k: (v or "").strip() for k, v in row.items() if k not in skip}
    return Annotation(csv_path.parent / path, individual, bbox, attributes)


def _parse_bbox(where: str, cells: List[Optional[str]]) -> Optional[BBox]:
    cells = [(c or "").strip() for c in cells]
    if not any(cells):
        return None
    try:
        x, y, w, h = (int(round(float(c))) for c in cells)
    except ValueError:
        raise DatasetError(f"{where}: bounding box x,y,w,h = {','.join(cells)} is not four numbers") from None
    if x < 0 or y < 0 or w <= 0 or h <= 0:
        raise DatasetError(f"{where}: bounding box x,y,w,h = {x},{y},{w},{h} needs x, y >= 0 and w, h > 0")
    return x, y, w, h


def limit_individuals(dataset: Dataset, count: Optional[int], seed: Optional[int] = None) -> Dataset:
    """Keep ``count`` individuals: the first ones in natural order, or a seeded random choice."""
    if count is None:
        return dataset
    if count < 1:
        raise DatasetError(f"--limit-individuals must be at least 1, got {count}")
    names = dataset.individuals
    chosen = names[:count] if seed is None else random.Random(seed).sample(names, min(count, len(names)))
    logger.info("keeping %d of %d individuals", len(chosen), len(names))
    return dataset.subset(chosen)
