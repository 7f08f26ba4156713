"""Annotations as the plugin reads them from WBIA: chips (with bad images isolated), image paths, UUIDs.

Also :class:`QueryChipError`, what a query fails with when its own chip cannot be computed.
"""
from __future__ import annotations

import logging
import re
import uuid
from typing import List, Optional, Sequence

import numpy as np

logger = logging.getLogger("wbia_lightglue")


class QueryChipError(ValueError):
    """A query annotation has no usable chip (missing or unreadable image).

    ``str()`` is the full reason for the log (it may name the image file); ``public`` the same without
    server paths, for a web caller.
    """

    def __init__(self, message: str, public: Optional[str] = None):
        super().__init__(message)
        self.public = public if public is not None else message


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/[^\s()'\"]+")  # /a/b.jpg, not a/b or http://


def public_reason(message: str, paths: Sequence[Optional[str]] = ()) -> str:
    """``message`` without server paths: the ``paths`` given (exactly, spaces and all), then anything else
    that looks like an absolute path, shown as ``<server path>``."""
    for path in paths:
        if path:
            message = message.replace(str(path), "<server path>")
    return _ABSOLUTE_PATH.sub("<server path>", message)


def annot_chips(ibs, aids: Sequence[int]) -> List[Optional[np.ndarray]]:
    """BGR chips in ``aids`` order; None (and a warning naming the annotation) where there is none.

    WBIA computes chips in one batch and one unreadable image fails the whole batch, so on failure
    each annotation is retried alone to isolate the bad ones.
    """
    try:
        chips = _chips(ibs, list(aids))
    except Exception as exc:  # noqa: BLE001 - any image error; isolated below
        logger.info("chip batch failed (%s); computing the %d chips one by one", exc, len(aids))
        chips = [_one_chip(ibs, aid) for aid in aids]
    for aid, chip in zip(aids, chips):
        if chip is None:
            logger.warning("annotation %d: no chip (image %s missing or unreadable); it scores 0",
                           aid, image_path(ibs, aid))
    return chips


def _chips(ibs, aids: List[int]) -> List[np.ndarray]:
    # ibs.get_annot_chips without depc.get's own retries (three tries, 1-3 s apart, per call): a failed
    # chip is never stored here and the next request reads the image again, so waiting buys nothing and
    # cost a failing query job ~8 s per attempt (WBIA runs a failing job six times).
    return list(ibs.depc_annot.get("chips", aids, "img", num_retries=1))


def _one_chip(ibs, aid: int) -> Optional[np.ndarray]:
    try:
        return _chips(ibs, [aid])[0]
    except Exception as exc:  # noqa: BLE001 - a corrupt or missing file raises many kinds of error
        logger.warning("annotation %d: its chip cannot be computed from image %s (%s: %s); it scores 0",
                       aid, image_path(ibs, aid), type(exc).__name__, exc)
        return None


def image_path(ibs, aid: int) -> Optional[str]:
    """The path of the annotation's image, for messages (None when even that cannot be read)."""
    try:
        return ibs.get_annot_image_paths([aid])[0]
    except Exception:  # noqa: BLE001 - only used in a message
        return None


def annot_uuids(ibs, aids: Sequence[int]) -> List[uuid.UUID]:
    """Annotation UUIDs (the feature cache key: stable, and unique across databases in one process)."""
    uuids = ibs.get_annot_uuids(list(aids))
    unknown = [aid for aid, u in zip(aids, uuids) if u is None]
    if unknown:
        raise ValueError(f"unknown annotation ids: {unknown}")
    return list(uuids)
