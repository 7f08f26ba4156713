"""Batch identify on Ray: throughput on a local cluster of 1 node vs 2 nodes, beside the local run, same run.

Each run is the real command, ``wbia-lightglue identify QUERIES DATABASE --output DIR`` (``--ray ADDRESS`` for
the cluster runs), in a fresh process with a fresh feature store, so its wall time includes extracting the
database's and the queries' features, stage 1 and LightGlue on each query's shortlist:

* ``local``    - no Ray: the baseline, with ``OMP_NUM_THREADS=--num-cpus`` (the CPUs one node gets);
* ``ray N``    - a cluster of N nodes on this machine (``distributed.local_cluster``: every process on
  127.0.0.1), ``--num-cpus`` CPUs each, started before the run (its start-up is reported, not counted).

On this project's 2-core machine the fair comparison is 1 CPU per node (the default): 2 nodes use both cores,
1 node and the local run one (the driver of a Ray run, which fuses, ranks and writes, shares them). Queries
run one after the other; on the cluster a query's LightGlue pairs are one task, so what 2 nodes can speed up is
the extraction (one extractor per node) and stage 1 (sharded), not LightGlue within a query.

Reported per run: whole-run wall time and queries per minute over it; the time to the first finished query
(setup and extraction, read from the journal as it grows) and queries per minute after it (the query phase);
whether its rankings.csv equals the local run's. Data: real nyala photos (``../shared/data/nyala``): the
database is bench_common's fixed subset (``--individuals``, ``--max-per-flank``), the queries the first
``--queries`` other photos of the same individuals and flanks (then any other photos).

    python benchmarks/ray_throughput.py                      # 40 individuals (111 photos), 30 queries, 1024 kp
    python benchmarks/ray_throughput.py --individuals 3 --max-per-flank 2 --queries 3 --keypoints 128 \\
        --image-size 256 --shortlist 2                      # a smoke run (about 2 minutes)
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from bench_common import (
    DEFAULT_INDIVIDUALS,
    DEFAULT_MAX_PER_FLANK,
    NYALA,
    NYALA_DIR,
    RESULTS,
    ROOT,
    machine,
    select_subset,
)

from wbia_lightglue.data.dataset import natural_key
from wbia_lightglue.distributed.local_cluster import LocalCluster

DEFAULT_OUTPUT = RESULTS / "ray_throughput.json"


def write_inputs(folder: Path, individuals: int, max_per_flank: int, queries: int) -> Dict[str, Any]:
    """``db.csv`` (path,individual) and ``queries.csv`` (path) in ``folder``; what they hold."""
    database = select_subset(NYALA, individuals, max_per_flank)
    in_db = {str(a.path) for a in database}
    flanks = {(a.individual, a.attributes["side"]) for a in database}
    with open(NYALA, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if str(NYALA_DIR / r["path"]) not in in_db]
    rows.sort(key=lambda r: ((r["individual"], r["side"]) not in flanks, natural_key(r["path"])))
    chosen = rows[:queries]
    if len(chosen) < queries:
        raise SystemExit(f"only {len(chosen)} photos outside the database for --queries {queries}")
    with open(folder / "db.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "individual"])
        writer.writerows([a.path, a.individual] for a in database)
    with open(folder / "queries.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path"])
        writer.writerows([NYALA_DIR / r["path"]] for r in chosen)
    return {"database_photos": len(database), "database_individuals": len({a.individual for a in database}),
            "queries": len(chosen), "queries_of_database_flanks": sum((r["individual"], r["side"]) in flanks
                                                                       for r in chosen)}


def journal_lines(path: Path) -> int:
    data = path.read_bytes() if path.exists() else b""
    return data[:data.rfind(b"\n") + 1].count(b"\n")


def identify(folder: Path, name: str, settings: Sequence[str], env: Dict[str, str],
             address: Optional[str] = None) -> Dict[str, Any]:
    """One batch identify run in a fresh process and store; its times as the journal grows."""
    output, store = folder / f"out-{name}", folder / f"store-{name}"
    command = [sys.executable, "-m", "wbia_lightglue", "identify", folder / "queries.csv", folder / "db.csv",
               "--output", output, "--cache-dir", store, "--report-queries", "0", "-q", *settings]
    if address is not None:
        command += ["--ray", address]
    finished: List[float] = []  # seconds from the start at which each query was journaled
    start = time.perf_counter()
    with open(folder / f"{name}.log", "w") as log:
        proc = subprocess.Popen([str(c) for c in command], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        while proc.poll() is None:
            lines = journal_lines(output / "journal.jsonl")
            finished += [time.perf_counter() - start] * (lines - len(finished))
            time.sleep(0.1)
    wall = time.perf_counter() - start
    lines = journal_lines(output / "journal.jsonl")
    finished += [wall] * (lines - len(finished))
    if proc.returncode != 0:
        raise RuntimeError(f"{name}: identify exited {proc.returncode}; see {folder / f'{name}.log'}")
    row: Dict[str, Any] = {"run": name, "wall_s": round(wall, 2), "queries": lines,
                           "queries_per_min": round(60 * lines / wall, 2)}
    if finished:
        row["first_query_s"] = round(finished[0], 2)
    if len(finished) > 1 and finished[-1] > finished[0]:
        row["query_phase_queries_per_min"] = round(60 * (len(finished) - 1) / (finished[-1] - finished[0]), 2)
    row["rankings"] = (output / "rankings.csv").read_text()
    return row


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--individuals", type=int, default=DEFAULT_INDIVIDUALS, help="database individuals")
    parser.add_argument("--max-per-flank", type=int, default=DEFAULT_MAX_PER_FLANK)
    parser.add_argument("--queries", type=int, default=30)
    parser.add_argument("--keypoints", type=int, default=1024)
    parser.add_argument("--image-size", type=int, help="image_size (long edge; default: the config's)")
    parser.add_argument("--shortlist", type=int, default=15, help="shortlist_k (0: exhaustive)")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="cluster sizes measured")
    parser.add_argument("--num-cpus", type=int, default=1, help="CPUs per node (and the local run's threads)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="the JSON written")
    parser.add_argument("--keep", type=Path, help="keep the inputs, outputs and logs in this folder")
    args = parser.parse_args(argv)
    if not NYALA.is_file():
        raise SystemExit(f"{NYALA} is absent: this benchmark needs the nyala photos")

    settings = ["--device", "cpu", "--keypoints", str(args.keypoints), "--shortlist", str(args.shortlist)]
    settings += ["--image-size", str(args.image_size)] if args.image_size else []
    threads = str(args.num_cpus)
    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, "PYTHONWARNINGS": "ignore",
           "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    folder = Path(tempfile.mkdtemp(prefix="ray-throughput-")) if args.keep is None else args.keep
    folder.mkdir(parents=True, exist_ok=True)
    try:
        data = write_inputs(folder, args.individuals, args.max_per_flank, args.queries)
        print(f"{data['database_photos']} database photos, {data['queries']} queries; settings {' '.join(settings)}")
        runs = [identify(folder, "local", settings, env)]
        print(f"local: {runs[-1]['wall_s']} s")
        for nodes in args.nodes:
            start = time.perf_counter()
            with LocalCluster(nodes - 1, num_cpus=args.num_cpus, logs=folder / f"ray-{nodes}", env=env) as cluster:
                started = time.perf_counter() - start
                runs.append(identify(folder, f"ray{nodes}", settings, env, cluster.address))
            runs[-1].update(nodes=nodes, cluster_start_s=round(started, 2))
            print(f"ray, {nodes} node(s): {runs[-1]['wall_s']} s (cluster started in {started:.1f} s)")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    local = runs[0]["rankings"]
    for row in runs:
        row["same_rankings_as_local"] = row.pop("rankings") == local
    result = {"machine": machine(), "data": data, "settings": settings, "num_cpus_per_node": args.num_cpus,
              "local_threads": args.num_cpus, "runs": runs,
              "note": "fresh feature store per run: wall time includes extraction; the cluster's start-up is not "
                      "counted; the driver of a Ray run shares the machine's cores with the nodes"}
    print(f"{'run':<8} {'wall s':>8} {'q/min':>7} {'first q s':>10} {'q/min after':>12} {'same':>5}")
    for row in runs:
        print(f"{row['run']:<8} {row['wall_s']:>8} {row['queries_per_min']:>7} {row.get('first_query_s', ''):>10} "
              f"{row.get('query_phase_queries_per_min', ''):>12} {str(row['same_rankings_as_local']):>5}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.output}")
    return result


if __name__ == "__main__":
    main()
