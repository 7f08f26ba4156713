"""The engine: config -> models -> extraction -> cache -> matcher -> scoring. WBIA-free; torch loads lazily.

Public names are re-exported by :mod:`wbia_lightglue.core`; import from there.
"""
