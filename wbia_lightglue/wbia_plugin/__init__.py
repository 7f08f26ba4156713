"""The WBIA side: compatibility shims (``compat``), registries, the plugin (``plugin``: ibs methods, depc
tables, query request), web routes (``routes``) and the server launcher (``launcher``).

The only package that imports wbia; :mod:`wbia_lightglue._plugin` is its public entry point.
"""
