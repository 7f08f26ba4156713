"""``python -m wbia_lightglue.serve --dbdir DB --web ...``: WBIA with the plugin (see wbia_plugin.launcher)."""
from .wbia_plugin.launcher import main

if __name__ == "__main__":
    main()
