"""Make wildbook-ia 4.0.4 importable on Python 3.11. Apply before the first ``import wbia``.

Every shim is idempotent and touches only what is missing, so applying them on an older Python (where
WBIA runs unpatched) changes nothing. ``apply()`` does not import wbia itself.
"""
from __future__ import annotations

import collections
import inspect
import logging
import os
import sys
from typing import List

logger = logging.getLogger("wbia_lightglue")

_APPLIED = False


def _preload_system_gldispatch() -> None:
    # pyhesaff (imported by wbia) segfaults without it; one implementation, in the engine
    from ..engine.stage1.hesaff import preload_system_gldispatch

    preload_system_gldispatch()


def _import_distutils_version() -> None:
    # wbia/control/_sql_helpers.py does `import distutils` and then uses distutils.version.
    try:
        import distutils.version  # noqa: F401
    except ImportError:  # Python >= 3.12 without setuptools' distutils: nothing we can do here
        logger.debug("distutils.version is unavailable")


def _restore_getargspec() -> None:
    # Removed in 3.11; utool's web error path calls it and would otherwise mask every API error.
    if hasattr(inspect, "getargspec"):
        return
    arg_spec = collections.namedtuple("ArgSpec", "args varargs keywords defaults")

    def getargspec(func):
        return arg_spec(*inspect.getfullargspec(func)[:4])

    inspect.getargspec = getargspec


def _restore_formatargspec() -> None:
    # Also removed in 3.11; WBIA formats a failing web call's signature with it, so without it every
    # API error answers HTTP 500 "module 'inspect' has no attribute 'formatargspec'" instead of the error.
    if hasattr(inspect, "formatargspec"):
        return

    def formatargspec(args, varargs=None, varkw=None, defaults=None, kwonlyargs=(), kwonlydefaults=None,
                      annotations=None, formatarg=str, formatvarargs=lambda name: "*" + name,
                      formatvarkw=lambda name: "**" + name, formatvalue=lambda value: "=" + repr(value),
                      formatreturns=lambda text: " -> " + text, formatannotation=inspect.formatannotation):
        annotations = annotations or {}
        kwonlydefaults = kwonlydefaults or {}

        def with_annotation(name):
            text = formatarg(name)
            if name in annotations:
                text += ": " + formatannotation(annotations[name])
            return text

        first_default = len(args) - len(defaults) if defaults else len(args)
        specs = []
        for i, name in enumerate(args):
            spec = with_annotation(name)
            if i >= first_default:
                spec += formatvalue(defaults[i - first_default])
            specs.append(spec)
        if varargs is not None:
            specs.append(formatvarargs(with_annotation(varargs)))
        elif kwonlyargs:
            specs.append("*")
        for name in kwonlyargs or ():
            spec = with_annotation(name)
            if name in kwonlydefaults:
                spec += formatvalue(kwonlydefaults[name])
            specs.append(spec)
        if varkw is not None:
            specs.append(formatvarkw(with_annotation(varkw)))
        result = "(" + ", ".join(specs) + ")"
        if "return" in annotations:
            result += formatreturns(formatannotation(annotations["return"]))
        return result

    inspect.formatargspec = formatargspec


def _oauthlib_py2_names() -> None:
    # Flask-OAuthlib 0.9.6 (imported by WBIA's web extensions) still imports oauthlib 2's Python 2
    # helpers, which oauthlib 3 dropped; WBIA itself needs oauthlib >= 3 (requests-oauthlib 2).
    try:
        import oauthlib.common as common
    except ImportError:  # no web server extensions installed: nothing to patch
        return
    for name, value in (("bytes_type", bytes), ("unicode_type", str), ("PY3", True)):
        if not hasattr(common, name):
            setattr(common, name, value)


def _theano_flags() -> None:
    # query_chips_graph imports theano, which compiles C code at import unless told otherwise.
    os.environ.setdefault("THEANO_FLAGS", "blas.ldflags=,cxx=")


def apply() -> None:
    """Apply every shim once (safe to call many times)."""
    global _APPLIED
    if _APPLIED:
        return
    _preload_system_gldispatch()
    _import_distutils_version()
    _restore_getargspec()
    _restore_formatargspec()
    _oauthlib_py2_names()
    _theano_flags()
    _APPLIED = True


def hidden_argv() -> "_HiddenArgv":
    """Context manager: hide ``sys.argv[1:]`` while importing wbia.

    utool parses ``sys.argv`` at import time and misreads other programs' flags (pytest's, say).
    """
    return _HiddenArgv()


class _HiddenArgv:
    def __enter__(self) -> None:
        self._saved: List[str] = sys.argv[1:]
        del sys.argv[1:]

    def __exit__(self, *exc) -> None:
        sys.argv[1:] = self._saved
