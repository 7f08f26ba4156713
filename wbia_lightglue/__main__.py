"""``python -m wbia_lightglue``: the same tool as the ``wbia-lightglue`` console script."""
import sys

from .cli import main

sys.exit(main())
