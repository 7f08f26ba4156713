"""The standalone tool ``wbia-lightglue``: one module per command (identify, evaluate, match, extract,
calibrate, demo), the parser and error handling in :mod:`.app`."""
from .app import build_parser, main

__all__ = ["build_parser", "main"]
