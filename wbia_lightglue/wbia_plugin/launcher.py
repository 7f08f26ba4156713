"""Start Wildbook IA with the LightGlue plugin loaded: ``python -m wbia_lightglue.serve --dbdir DB --web ...``.

WBIA 4.0.4 has no discovery for third-party plugins and reads its plugin registries when the
controller is built, so the plugin must be imported before WBIA opens the database. This entry point
applies the Python 3.11 shims, registers the plugin, then runs ``wbia.dev`` exactly as
``python -m wbia.dev ARGS`` would (same module code, run as ``__main__``, same arguments), so every
WBIA flag (``--dbdir``, ``--web``, ``--port``, ``--containerized``, ...) keeps its meaning.
"""
from __future__ import annotations

import logging
import runpy
import sys
from typing import Optional, Sequence

from . import compat

logger = logging.getLogger("wbia_lightglue")


def main(argv: Optional[Sequence[str]] = None) -> None:
    """Console script ``wbia-lightglue-serve``: WBIA's ``wbia.dev`` main with the plugin registered."""
    args = list(sys.argv[1:] if argv is None else argv)
    compat.apply()
    # utool parses sys.argv when wbia is imported: it must see WBIA's arguments, as under wbia.dev.
    sys.argv = [sys.argv[0], *args]
    from .. import register_plugin

    register_plugin()  # imports wbia; raises if the plugin cannot be registered
    logger.info("wbia_lightglue plugin registered; starting wbia.dev %s", " ".join(args))
    runpy.run_module("wbia.dev", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
