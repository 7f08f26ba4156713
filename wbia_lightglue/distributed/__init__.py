"""Where the pipeline runs beyond one machine: :mod:`.ray_runner` (a batch identify on a Ray cluster).

Nothing here imports ``ray`` until a run asks for a cluster.
"""
