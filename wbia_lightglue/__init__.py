"""ALIKED + LightGlue identification for Wildbook IA.

``import wbia_lightglue`` registers the WBIA plugin (:mod:`wbia_lightglue._plugin`) when WBIA is in
use: at once if ``wbia`` is already imported, otherwise right after ``wbia`` is first imported (so
before any ``wbia.opendb``). Importing this package never imports wbia or torch itself: the core
(:mod:`wbia_lightglue.core`) and the command-line tools stay fast and WBIA-free.
"""
from __future__ import annotations

import importlib
import importlib.abc
import sys
import threading
from typing import Optional

from ._version import __version__ as __version__

_PLUGIN = __name__ + "._plugin"


def register_plugin() -> None:
    """Import the WBIA plugin module now (its decorators fill WBIA's registries). Raises on failure."""
    importlib.import_module(_PLUGIN)


class _RegisterAfterWbiaImport(importlib.abc.MetaPathFinder):
    """One-shot meta-path finder: when ``wbia`` is imported, register the plugin right after it loads.

    It finds nothing itself; it asks the other finders for wbia's spec and wraps that loader's
    ``exec_module`` so the plugin is imported once wbia's ``__init__`` has run. The WBIA shims for
    Python 3.11 are applied before wbia starts loading. A failing registration propagates out of
    ``import wbia``: a server must not come up silently without the plugin.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed = True

    def find_spec(self, fullname, path, target=None):
        if fullname != "wbia":
            return None
        with self._lock:
            if not self._armed:
                return None
            self._armed = False
        # Leaving the list alone here: the import system is iterating over sys.meta_path right now.
        from .wbia_plugin import compat

        compat.apply()
        spec = _find_real_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_wbia = spec.loader.exec_module

        def exec_module(module):
            _remove_hook()
            exec_wbia(module)
            register_plugin()

        spec.loader.exec_module = exec_module  # this loader instance serves wbia's __init__ only
        return spec


def _find_real_spec(fullname, path, target):
    for finder in sys.meta_path:
        if isinstance(finder, _RegisterAfterWbiaImport):
            continue
        find_spec = getattr(finder, "find_spec", None)
        spec = find_spec(fullname, path, target) if find_spec else None
        if spec is not None:
            return spec
    return None


_HOOK: Optional[_RegisterAfterWbiaImport] = None


def _remove_hook() -> None:
    global _HOOK
    if _HOOK is not None and _HOOK in sys.meta_path:
        sys.meta_path.remove(_HOOK)
    _HOOK = None


def _install_hook() -> None:
    global _HOOK
    if "wbia" in sys.modules:
        register_plugin()
    elif _HOOK is None:
        _HOOK = _RegisterAfterWbiaImport()
        sys.meta_path.insert(0, _HOOK)


_install_hook()
