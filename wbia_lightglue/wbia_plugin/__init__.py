"""The WBIA side of the project; :mod:`wbia_lightglue._plugin` is its public entry point and registers it.

* ``compat``: the Python 3.11 shims (``compat.apply()``, the one way to apply them); ``registry``: applies
  them, then is the plugin's one door into wbia (decorators, table names, wbia modules);
* ``configs``: config resolution at the edge; ``state``: the plugin's per-process memory;
* ``chips``: annotation chips and UUIDs; ``features``: the ``LightGlueFeatures`` table and feature ibs
  methods; ``pairs``: pair scores, matches, evaluation; ``request``: the ``LightGlue`` pair table and query
  request (AnnotMatch, review images); ``stage1``: the stage-1 index of two-stage mode;
  ``invalidation``: the ``delete_root`` hook;
* ``routes``: web routes; ``jobs``: fast retries of LightGlue jobs; ``launcher``: the server launcher.

The only package that imports wbia; at import time only ``registry`` does, after the shims.
"""
