"""Start Wildbook IA with the LightGlue plugin loaded: ``python -m wbia_lightglue.serve --dbdir DB --web ...``.

``--host ADDRESS`` (this launcher's only option) makes the web server listen on that address only.

WBIA 4.0.4 has no discovery for third-party plugins and reads its plugin registries when the
controller is built, so the plugin must be imported before WBIA opens the database. This entry point
applies the Python 3.11 shims, registers the plugin, then runs ``wbia.dev`` exactly as
``python -m wbia.dev ARGS`` would (same module code, run as ``__main__``, same arguments), so every
WBIA flag (``--dbdir``, ``--web``, ``--port``, ``--containerized``, ...) keeps its meaning.
"""
from __future__ import annotations

import logging
import os
import runpy
import signal
import sys
from typing import List, Optional, Sequence, Tuple

from . import compat

logger = logging.getLogger("wbia_lightglue")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``wbia-lightglue-serve``: WBIA's ``wbia.dev`` main with the plugin registered."""
    args = list(sys.argv[1:] if argv is None else argv)
    host, args = _pop_option(args, "--host")
    compat.apply()
    _headless_qt()
    if logger.level == logging.NOTSET:
        # WBIA leaves the root logger at WARNING in its job-engine workers and sets its own 'wbia' logger
        # to INFO; ours follows suit, so a server's log shows what the plugin does (render times, ...).
        logger.setLevel(logging.INFO)
    # utool parses sys.argv when wbia is imported: it must see WBIA's arguments, as under wbia.dev.
    sys.argv = [sys.argv[0], *args]
    from .. import _plugin  # noqa: F401 - importing it imports wbia and registers the plugin (raises if it cannot)
    from .jobs import retry_lightglue_jobs_at_once

    retry_lightglue_jobs_at_once()
    _stop_on_sigterm()
    if host:
        _listen_on(host)
    logger.info("wbia_lightglue plugin registered; starting wbia.dev %s", " ".join(args))
    runpy.run_module("wbia.dev", run_name="__main__", alter_sys=True)


def _pop_option(args: List[str], name: str) -> Tuple[Optional[str], List[str]]:
    """Take ``name VALUE`` or ``name=VALUE`` out of ``args`` (an option of the launcher, not of WBIA)."""
    rest: List[str] = []
    value: Optional[str] = None
    items = iter(args)
    for arg in items:
        if arg == name:
            value = next(items, None)
            if value is None:
                raise SystemExit(f"{name} needs a value (an address to listen on, e.g. 127.0.0.1)")
        elif arg.startswith(name + "="):
            value = arg[len(name) + 1:]
        else:
            rest.append(arg)
    return value, rest


def _listen_on(host: str) -> None:
    # WBIA's web server listens on every interface and has no option for it; --host narrows it (e.g. to
    # 127.0.0.1 behind a reverse proxy, or in tests). Its job engine already talks over 127.0.0.1 only.
    from tornado.tcpserver import TCPServer

    original = TCPServer.listen

    def listen(self, port, address=None, *args, **kwargs):
        return original(self, port, address or host, *args, **kwargs)

    TCPServer.listen = listen  # type: ignore[method-assign]


def _headless_qt() -> None:
    # WBIA renders review images through its Qt GUI toolkit (wbia.guitool); without a display, Qt
    # aborts the process unless it uses the offscreen platform. An explicit setting is left alone.
    if "QT_QPA_PLATFORM" not in os.environ and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        os.environ["QT_QPA_PLATFORM"] = "offscreen"


def _stop_on_sigterm() -> None:
    # WBIA stops cleanly on Ctrl+C only: the web server catches KeyboardInterrupt and closes the job
    # engine, whose worker processes are terminated. A plain SIGTERM (docker stop, systemd, kill) would
    # kill the server alone and leave the workers running, so SIGTERM takes the Ctrl+C path. The workers
    # are forked from this process and inherit the handler: there it does what SIGTERM always did.
    server_pid = os.getpid()

    def on_sigterm(signum, frame):
        if os.getpid() != server_pid:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)


if __name__ == "__main__":
    main()
