"""Where the pipeline runs beyond one machine: :mod:`.ray_runner` (identify, extract and evaluate on a Ray cluster).

Nothing here imports ``ray`` until a run asks for a cluster. :mod:`.local_cluster`: a cluster on this machine's
loopback (the tests, ``benchmarks/ray_throughput.py``, trying ``--ray`` on one machine).
"""
