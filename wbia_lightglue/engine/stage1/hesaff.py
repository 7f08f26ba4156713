"""Hessian-affine SIFT features through ``pyhesaff`` (the detector of WBIA's HotSpotter), loaded lazily.

``pyhesaff`` (``wbia-pyhesaff``) is optional: it publishes only cp37..cp310 wheels, so ``pip install
wbia-lightglue`` cannot bring it; ``wbia-lightglue setup-hesaff`` installs it (``.ci/build_env.sh`` does the same).
``shortlist_detector = "auto"`` (the default) uses it when :func:`available`, else OpenCV SIFT; ``"hesaff"``
without it is a config error naming the fix (:data:`MISSING`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from typing import Any, Optional, Tuple

import numpy as np

logger = logging.getLogger("wbia_lightglue")

_PYHESAFF: Optional[Any] = None
_IMPORT_ERROR: Optional[str] = None  # why pyhesaff did not import (tried once a process)

MISSING = ("Hessian-affine (pyhesaff, from wbia-pyhesaff) is not installed; run `wbia-lightglue setup-hesaff` "
           "to install it into this environment")


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
    """The ``pyhesaff`` module; ImportError saying how to install it when it does not import (tried once)."""
    global _PYHESAFF, _IMPORT_ERROR
    if _PYHESAFF is None:
        if _IMPORT_ERROR is None:
            preload_system_gldispatch()
            try:
                import pyhesaff
            except (ImportError, OSError) as exc:  # OSError: its shared library would not load
                _IMPORT_ERROR = str(exc) or type(exc).__name__
            else:
                _PYHESAFF = pyhesaff
                return _PYHESAFF
        raise ImportError(f"{MISSING} (import pyhesaff: {_IMPORT_ERROR})")
    return _PYHESAFF


def available() -> bool:
    """Whether ``pyhesaff`` imports (the import is tried once a process)."""
    try:
        import_pyhesaff()
    except ImportError:
        return False
    return True


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
