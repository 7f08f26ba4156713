"""Labelled photo collections for the standalone tool: a folder of ``<individual>/<image>`` or a CSV.

A CSV has the columns ``path`` (relative to the CSV's folder) and ``individual``; any other column is kept
as an attribute (e.g. ``side``, usable to restrict comparisons with ``--group-by``). The optional columns
``x, y, w, h`` (all four, in pixels of the full image) crop the annotation; a row with all four empty uses
the whole image.

The CSV may start with a UTF-8 byte-order mark (Excel writes one). It must be a regular file of at most
``MAX_CSV_BYTES``. A row repeating an earlier one (same image and box, same individual) is reported and
used once; the same image and box under another individual is an error.

Problems with the collection itself (missing folder, missing columns, malformed rows) raise
``DatasetError`` before any image is read, naming every bad line (up to ``MAX_REPORTED_ROWS``); a
single image that cannot be read raises ``images.ImageReadError`` when read, so callers can skip it
and go on with the others.

Queries (``load_queries``, for ``identify QUERIES``) are read by the same rules without labels: one photo, a
folder searched at any depth for image files (``is_image_file``), or a CSV whose only required column is
``path`` (``individual``, the box and other columns are read as above when present).
"""
from __future__ import annotations

import csv
import io
import logging
import math
import os
import random
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from ..files import read_regular_file
from .images import IMAGE_SUFFIXES, BBox

logger = logging.getLogger("wbia_lightglue")

REQUIRED_COLUMNS = ("path", "individual")
QUERY_COLUMNS = ("path",)  # a query CSV: the individual is what is asked
UNKNOWN = "?"  # the individual of a query that has none
BBOX_COLUMNS = ("x", "y", "w", "h")
MAX_CSV_BYTES = 64 << 20  # ~500,000 rows of typical length
MAX_BBOX_VALUE = 1 << 20  # pixels; OpenCV decodes at most 2**30 pixels, so no side reaches this
MAX_REPORTED_ROWS = 5  # bad rows named in one error message


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
    """Sort key that orders embedded numbers numerically ("ind2" < "ind10").

    Runs of decimal digits of any script count as numbers; other characters that str.isdigit() accepts,
    such as '①' or '²', are text. Numbers are compared without int() (a name of thousands of digits would
    exceed Python's int-conversion limit): by their length without leading zeros, then digit by digit.
    """
    return tuple(_number_key(part) if part.isdecimal() else (1, 0, part) for part in re.split(r"(\d+)", text) if part)


def _number_key(digits: str) -> tuple:
    """(0, length, ASCII digits) of a run of decimal digits of any script, leading zeros dropped."""
    ascii_digits = digits.translate(_DIGITS) if not digits.isascii() else digits
    ascii_digits = ascii_digits.lstrip("0")
    return (0, len(ascii_digits), ascii_digits)


class _DecimalDigits(dict):
    """str.translate table: any Unicode decimal digit -> its ASCII digit (built lazily, per character)."""

    def __missing__(self, code: int) -> int:
        value = ord("0") + unicodedata.decimal(chr(code))
        self[code] = value
        return value


_DIGITS = _DecimalDigits()


def load_dataset(source: Union[str, Path]) -> Dataset:
    """Read a folder dataset or a CSV dataset (see the module docstring)."""
    source = Path(source)
    if source.is_dir():
        dataset = _load_folder(source)
    elif source.is_file():
        dataset = _load_csv(source)
    elif source.exists():  # a FIFO, a device, a socket: reading it could block or never end
        raise DatasetError(f"dataset {source} is not a folder or a regular file")
    else:
        raise DatasetError(f"dataset {source} does not exist (expected a folder or a CSV file)")
    if not dataset.annotations:
        raise DatasetError(f"dataset {source} holds no images")
    logger.info("dataset %s: %d annotations of %d individuals", source, len(dataset), len(dataset.individuals))
    return dataset


def load_queries(source: Union[str, Path]) -> Dataset:
    """Photos to identify: one photo, a folder (any depth, natural order) or a CSV with a ``path`` column.

    A file whose name ends in ``.csv`` is a CSV; any other file is a photo (read, and refused if unreadable,
    only when it is identified). Queries have the individual ``UNKNOWN`` unless the CSV names one.
    """
    source = Path(source)
    if source.is_dir():
        dataset = Dataset(source, [Annotation(path, UNKNOWN) for path in image_files(source)])
    elif source.is_file() and source.suffix.lower() == ".csv":
        dataset = _load_csv(source, QUERY_COLUMNS)
    elif source.is_file():
        dataset = Dataset(source, [Annotation(source, UNKNOWN)])
    elif source.exists():
        raise DatasetError(f"queries {source} is not a folder or a regular file")
    else:
        raise DatasetError(f"queries {source} does not exist (expected a photo, a folder or a CSV file)")
    if not dataset.annotations:
        raise DatasetError(f"queries {source} holds no images")
    logger.info("queries %s: %d photos", source, len(dataset))
    return dataset


def is_image_file(path: Path) -> bool:
    """A regular file with one of the image suffixes (``images.IMAGE_SUFFIXES``, any case)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def image_files(root: Path) -> List[Path]:
    """Every image file under ``root`` at any depth, in natural order of the path below ``root``.

    Hidden files and folders (a leading dot) are left out, and symbolic links to folders are not followed.
    """
    found = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        found += [path for path in (Path(folder) / name for name in files if not name.startswith("."))
                  if is_image_file(path)]
    return sorted(found, key=lambda p: [natural_key(part) for part in p.relative_to(root).parts])


def _load_folder(root: Path) -> Dataset:
    annotations = []
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: natural_key(p.name)):
        for image in sorted(folder.iterdir(), key=lambda p: natural_key(p.name)):
            if is_image_file(image):
                annotations.append(Annotation(image, folder.name))
    stray = [p.name for p in root.iterdir() if is_image_file(p)]
    if stray:  # an image outside any individual's folder has no label: say so rather than guess
        logger.warning("%s: %d images outside an <individual>/ folder are ignored (e.g. %s)",
                       root, len(stray), stray[0])
    return Dataset(root, annotations)


def _load_csv(path: Path, required: Sequence[str] = REQUIRED_COLUMNS) -> Dataset:
    try:
        raw = read_regular_file(path, MAX_CSV_BYTES)
    except OSError as exc:
        raise DatasetError(f"CSV {path} cannot be read: {exc.strerror or exc}") from None
    if b"\0" in raw:  # a binary file, or UTF-16 (Excel's "Unicode text"): neither is a CSV we can read
        line = raw[:raw.index(b"\0")].count(b"\n") + 1
        raise DatasetError(f"CSV {path} line {line} holds a NUL byte: not a UTF-8 text CSV")
    try:
        text = raw.decode("utf-8-sig")  # -sig: Excel's byte-order mark would otherwise hide 'path'
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise DatasetError(f"CSV {path} line {line} is not UTF-8 text (byte {exc.start})") from None
    try:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = [(reader.line_num, row) for row in reader]  # line_num: the row's last line in the file
        header = list(reader.fieldnames or [])
    except csv.Error as exc:
        raise DatasetError(f"CSV {path} cannot be read after line {reader.line_num}: {exc}") from None
    missing = [c for c in required if c not in header]
    if missing:
        raise DatasetError(f"CSV {path} lacks the column(s) {', '.join(missing)}; "
                           f"it has: {', '.join(c for c in header if c) or 'no header'}")
    has_bbox = [c in header for c in BBOX_COLUMNS]
    if any(has_bbox) and not all(has_bbox):
        raise DatasetError(f"CSV {path}: a bounding box needs all of the columns x, y, w, h; "
                           f"found only {', '.join(c for c in BBOX_COLUMNS if c in header)}")
    annotations, errors, duplicates = [], [], []
    seen: Dict[tuple, Tuple[int, str]] = {}  # (normalised path, bbox) -> (line, individual)
    for line, row in rows:
        try:
            annot = _annotation_from_row(path, line, row, all(has_bbox), "individual" in required)
        except DatasetError as exc:
            errors.append(str(exc))
            continue
        key = (os.path.normpath(annot.path), annot.bbox)
        if key in seen:
            first, individual = seen[key]
            if individual != annot.individual:
                errors.append(f"CSV {path} line {line}: {annot.name} is individual {annot.individual!r} here but "
                              f"{individual!r} on line {first}")
            else:
                duplicates.append(f"{line} (= {first})")
            continue
        seen[key] = (line, annot.individual)
        annotations.append(annot)
    if errors:
        more = f" (and {len(errors) - MAX_REPORTED_ROWS} more bad rows)" if len(errors) > MAX_REPORTED_ROWS else ""
        raise DatasetError("; ".join(errors[:MAX_REPORTED_ROWS]) + more)
    if duplicates:
        shown = ", ".join(duplicates[:10]) + (", ..." if len(duplicates) > 10 else "")
        logger.warning("CSV %s: %d rows repeat an earlier row (same image, box and individual) and are used once: "
                       "line %s", path, len(duplicates), shown)
    return Dataset(path, annotations)


def _annotation_from_row(csv_path: Path, line: int, row: Dict[str, Optional[str]], has_bbox: bool,
                         labelled: bool = True) -> Annotation:
    where = f"CSV {csv_path} line {line}"
    if None in row:  # DictReader puts surplus cells under the key None
        raise DatasetError(f"{where}: more cells than header columns")
    path, individual = (row.get("path") or "").strip(), (row.get("individual") or "").strip()
    if not labelled:  # a query: the individual is optional
        individual = individual or UNKNOWN
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
    shown = ",".join(c[:20] for c in cells)
    try:
        values = [float(c) for c in cells]
    except ValueError:
        raise DatasetError(f"{where}: bounding box x,y,w,h = {shown} is not four numbers") from None
    if not all(math.isfinite(v) and abs(v) <= MAX_BBOX_VALUE for v in values):  # inf, nan, 1e300
        raise DatasetError(f"{where}: bounding box x,y,w,h = {shown} needs finite values of at most "
                           f"{MAX_BBOX_VALUE} pixels")
    x, y, w, h = (int(round(v)) for v in values)
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
