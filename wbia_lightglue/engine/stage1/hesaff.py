"""Hessian-affine SIFT features through ``pyhesaff`` (the detector of WBIA's HotSpotter), loaded lazily.

``pyhesaff`` (``wbia-pyhesaff``, installed with this package's requirements) is optional for the engine:
only ``shortlist_detector = "hesaff"`` needs it, and its absence is reported naming that key.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any, Optional, Tuple

import numpy as np

logger = logging.getLogger("wbia_lightglue")

_PYHESAFF: Optional[Any] = None


def preload_system_gldispatch() -> None:
    """Load the system libGLdispatch globally, before pyhesaff's own copy can be picked up.

    pyhesaff ships its own libGLdispatch (auditwheel); when libhesaff.so is dlopen'ed the *system* libGLX
    resolves __glDispatchInit against that copy and the process segfaults. Loading the system library
    globally first makes the symbol resolve to the system copy.
    """
    path = ctypes.util.find_library("GLdispatch")
    if path:
        try:
            ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:  # harmless where the library is absent or unusable
            logger.debug("could not preload %s: %s", path, exc)


def import_pyhesaff() -> Any:
    """The ``pyhesaff`` module; ImportError naming the config key when it is not installed."""
    global _PYHESAFF
    if _PYHESAFF is None:
        preload_system_gldispatch()
        try:
            import pyhesaff
        except ImportError as exc:
            raise ImportError(
                "shortlist_detector 'hesaff' needs pyhesaff (pip install wbia-pyhesaff==4.0.0, part of this "
                "package's requirements.txt); or set shortlist_detector to 'sift'") from exc
        _PYHESAFF = pyhesaff
    return _PYHESAFF


def detect(bgr: np.ndarray, limit: int) -> Tuple[np.ndarray, np.ndarray]:
    """(keypoints [N x 2] float32 x, y; descriptors [N x 128] uint8) of a BGR uint8 image, at most ``limit``.

    pyhesaff's descriptors are used as they come (uint8 SIFT): RootSIFT on top of them lowered shortlist
    recall on part A of benchmarks/two_stage.py (0.61 vs 0.68 at k = 10). Past ``limit`` the
    largest-scale regions are kept (pyhesaff has no response to rank by).
    """
    pyhesaff = import_pyhesaff()
    kpts, desc = pyhesaff.detect_feats_in_image(np.ascontiguousarray(bgr, np.uint8))
    if len(kpts) > limit:
        # kpts rows: x, y, a, c, d, ori with [[a, 0], [c, d]] the region's shape: a * d grows with its area
        keep = np.sort(np.argsort(-(kpts[:, 2] * kpts[:, 4]), kind="stable")[:limit])
        kpts, desc = kpts[keep], desc[keep]
    return np.asarray(kpts[:, :2], np.float32), np.ascontiguousarray(desc, np.uint8)
