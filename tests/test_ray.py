"""Batch identify on a real Ray cluster (``identify QUERIES DATABASE --output DIR --ray ADDRESS``).

A cluster of two nodes is started as separate processes on the loopback address (``distributed.local_cluster``:
``ray start --head --node-ip-address 127.0.0.1`` and a worker node bound to 127.0.0.1, each in its own process
group, one CPU each) and the CLI runs as a user runs it, in a subprocess (its driver binds to 127.0.0.1 too).
Real weights on real nyala photos (``../shared/data/nyala``, skipped when absent) at small settings: a database
of 10 photos (4 individuals, left flanks), 5 queries (their other left flanks, and one database photo, which is
left out of its own ranking), a shortlist of 4 so that stage 1 decides which pairs LightGlue sees.

* the Ray run writes the same rankings as a local run of the same settings;
* while it runs, every socket of the cluster's processes and of the driver is on the loopback address;
* the worker node is killed (SIGKILL to its process group) once the first query is journaled: the run still
  completes, every query ranked once, the same rankings;
* ``extract --ray`` fills the store with the features a local run stores; ``evaluate --ray`` writes the report a
  local evaluate writes (same scores, ranks and calibration check);
* sharded stage 1 (merged neighbours) gives exactly the scores of one index over the whole database;
* without ``--ray`` nothing imports ray (identify, extract, evaluate).

The module skips when ray is not installed; CI (``WBIA_LIGHTGLUE_STRICT_TIERS=1``) turns that into a failure.
"""
import csv
import ipaddress
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import PHOTOS, ROOT

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'wbia-lightglue[ray]')")

from wbia_lightglue.data.dataset import load_dataset, load_queries  # noqa: E402
from wbia_lightglue.data.store import FeatureStore, annotation_features  # noqa: E402
from wbia_lightglue.distributed.local_cluster import LocalCluster  # noqa: E402
from wbia_lightglue.distributed.sharded_stage1 import Stage1Shard  # noqa: E402
from wbia_lightglue.engine.config import load_config  # noqa: E402
from wbia_lightglue.engine.stage1 import Neighbours, build_index, merge_neighbours, score_neighbours  # noqa: E402

pytestmark = [pytest.mark.ray]
SMALL = ["--keypoints", "256", "--image-size", "320", "--shortlist", "4", "--device", "cpu", "-q"]
NUM_QUERIES = 5


def env():
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "RAY_USAGE_STATS_ENABLED": "0"}


def cli(*argv):
    return [sys.executable, "-m", "wbia_lightglue", *map(str, argv)]


def journal_lines(path: Path):
    data = path.read_bytes() if path.exists() else b""
    return data[:data.rfind(b"\n") + 1].splitlines()


# ----------------------------------------------------------------------------- data and the local reference
@pytest.fixture(scope="module")
def nyala_set(nyala_dir, tmp_path_factory):
    """db.csv (10 photos of 4 individuals), queries/ (5 photos: 4 new ones and one database photo)."""
    root = tmp_path_factory.mktemp("ray")
    left = defaultdict(list)
    for row in csv.DictReader(open(nyala_dir / "labels.csv")):
        if row["side"] == "left":
            left[row["individual"]].append(row["path"])
    names = [name for name in left if len(left[name]) >= 4][:4]
    db = [(name, p) for name in names for p in left[name][:3 if name in names[:2] else 2]]
    assert len(db) == 10
    with open(root / "db.csv", "w") as handle:
        handle.write("path,individual\n")
        handle.writelines(f"{nyala_dir / p},{name}\n" for name, p in db)
    (root / "queries").mkdir()
    for name in names:
        shutil.copyfile(nyala_dir / left[name][3], root / "queries" / f"{name}_{Path(left[name][3]).name}")
    shutil.copyfile(nyala_dir / db[0][1], root / "queries" / "in_db.jpg")  # a database photo as a query
    return root


def identify_command(root: Path, output: Path, store: Path, *extra):
    return cli("identify", root / "queries", root / "db.csv", "--output", output, "--cache-dir", store,
               "--top", "3", "--report-queries", "1", *SMALL, *extra)


def identify(root: Path, output: Path, store: Path, *extra, timeout=900):
    return subprocess.run(identify_command(root, output, store, *extra), env=env(), capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def local_run(nyala_set):
    proc = identify(nyala_set, nyala_set / "out-local", nyala_set / "store-local")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return nyala_set / "out-local"


# ----------------------------------------------------------------------------- a real two-node cluster on loopback
@pytest.fixture(scope="module")
def cluster(nyala_set):
    """A head and a worker node (``distributed.local_cluster``: every process on 127.0.0.1), one CPU each."""
    started = LocalCluster(1, num_cpus=1, logs=nyala_set, env=env())
    yield started
    started.stop()


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    return bool((getattr(address, "ipv4_mapped", None) or address).is_loopback)


def run_watching_sockets(command, cluster, timeout=900):
    """Run ``command`` (a driver) to its end, listing every inet socket of the driver and the cluster meanwhile.

    Returns (returncode, stdout, stderr, sockets): each socket seen as (process name, status, local, remote).
    """
    proc = subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)
    seen = set()
    out: list = []
    reader = threading.Thread(target=lambda: out.extend(proc.communicate(timeout=timeout)), daemon=True)
    reader.start()
    while reader.is_alive():
        try:
            driver = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        except psutil.Error:  # it has just ended
            driver = []
        for pid in set(cluster.pids()) | set(driver):
            try:
                process = psutil.Process(pid)
                name = process.name()
                for conn in process.net_connections(kind="inet"):
                    remote = f"{conn.raddr.ip}:{conn.raddr.port}" if conn.raddr else ""
                    seen.add((name, conn.status, f"{conn.laddr.ip}:{conn.laddr.port}", remote))
            except (psutil.Error, OSError):
                pass
        time.sleep(0.1)
    reader.join()
    return proc.returncode, out[0], out[1], seen


@pytest.fixture(scope="module")
def ray_run(nyala_set, cluster):
    """identify --ray on the cluster (a fresh store: the features are extracted there), its sockets watched."""
    output = nyala_set / "out-ray"
    start = time.monotonic()
    run = run_watching_sockets(identify_command(nyala_set, output, nyala_set / "store-ray", "--ray", cluster.address),
                               cluster)
    print(f"ray run: {time.monotonic() - start:.1f} s, {len(run[3])} sockets seen")
    return output, run


# ----------------------------------------------------------------------------- the batch on the cluster
@pytest.mark.slow
def test_a_ray_run_writes_the_rankings_of_a_local_run(nyala_set, local_run, ray_run):
    output, (returncode, stdout, stderr, _) = ray_run
    assert returncode == 0, stderr[-3000:]
    assert (output / "rankings.csv").read_text() == (local_run / "rankings.csv").read_text()
    assert (output / "failed.csv").read_text() == (local_run / "failed.csv").read_text()
    mine, theirs = (json.loads((o / "rankings.json").read_text()) for o in (output, local_run))
    assert mine["results"] == theirs["results"] and mine["ranked"] == NUM_QUERIES
    assert "database features: 10 extracted" in stdout  # on the cluster, into the driver's store
    assert len(journal_lines(output / "journal.jsonl")) == NUM_QUERIES
    assert "<section class=\"query" in (output / "report.html").read_text()

    # a rerun keeps every query from the journal and never reaches the cluster
    again = identify(nyala_set, output, nyala_set / "store-ray", "--ray", "127.0.0.1:1")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"(0 computed, {NUM_QUERIES} kept from the journal)" in again.stdout
    assert (output / "rankings.csv").read_text() == (local_run / "rankings.csv").read_text()


@pytest.mark.slow
def test_the_cluster_and_the_driver_use_only_the_loopback(ray_run):
    """While the job runs (extraction, stage-1 shards, LightGlue tasks), every inet socket of every cluster
    process (GCS, raylets, object managers, agents, workers) and of the driver is bound to, and connected to,
    a loopback address: a test sends nothing to another address."""
    _, (returncode, _, stderr, sockets) = ray_run
    assert returncode == 0, stderr[-3000:]
    names = {name for name, *_ in sockets}
    assert {"gcs_server", "raylet"} <= names and len(sockets) > 20, sorted(sockets)[:20]  # it really looked
    assert any(status == "LISTEN" for _, status, _, _ in sockets)
    outside = sorted(s for s in sockets if not all(is_loopback(end.rsplit(":", 1)[0]) for end in s[2:] if end))
    assert not outside, outside[:20]


@pytest.mark.slow
def test_a_killed_worker_node_loses_and_duplicates_nothing(nyala_set, local_run, cluster):
    output = nyala_set / "out-killed"
    journal = output / "journal.jsonl"
    command = cli("identify", nyala_set / "queries", nyala_set / "db.csv", "--output", output, "--cache-dir",
                  nyala_set / "store-killed", "--top", "3", "--report-queries", "1", *SMALL, "--ray", cluster.address)
    proc = subprocess.Popen(command, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 600
        while not journal_lines(journal) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None and 1 <= len(journal_lines(journal)) < NUM_QUERIES, "not mid-job"
        cluster.kill("worker1")  # the worker node with its raylet, its shard of stage 1 and any task on it
        out, err = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    keys = [json.loads(line)["key"] for line in journal_lines(journal)]
    assert len(keys) == NUM_QUERIES == len(set(keys))  # every query journaled exactly once
    table = (output / "rankings.csv").read_text()
    assert table == (local_run / "rankings.csv").read_text()
    assert len(table.splitlines()) == 1 + 3 * NUM_QUERIES  # no query twice


# ----------------------------------------------------------------------------- extract and evaluate on the cluster
def store_entries(store: Path):
    """Every feature file of a store, by its path in the store."""
    return {p.relative_to(store): p for p in store.rglob("*.npz") if "shortlist" not in p.parts}


@pytest.mark.slow
def test_extract_on_the_cluster_fills_the_store_a_local_run_fills(nyala_set, local_run, cluster):
    store = nyala_set / "store-extract-ray"
    proc = subprocess.run(cli("extract", nyala_set / "db.csv", "--cache-dir", store, *SMALL, "--ray", cluster.address),
                          env=env(), capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "features: 10 extracted, 0 loaded from the store" in proc.stdout
    mine, local = store_entries(store), store_entries(nyala_set / "store-local")  # the local run's, same settings
    assert len(mine) == 10 and set(mine) <= set(local)  # the same content keys under the same fingerprint
    for name, path in mine.items():
        with np.load(path) as a, np.load(local[name]) as b:
            assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files), name
    again = subprocess.run(cli("extract", nyala_set / "db.csv", "--cache-dir", store, *SMALL), env=env(),
                           capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert "features: 0 extracted, 10 loaded from the store" in again.stdout, again.stderr[-3000:]


@pytest.mark.slow
def test_evaluate_on_the_cluster_reports_what_a_local_evaluate_reports(nyala_set, local_run, cluster):
    def evaluate(output, store, *extra):
        proc = subprocess.run(cli("evaluate", nyala_set / "db.csv", "--output", output, "--cache-dir", store,
                                  "--report-queries", "0", *SMALL, *extra),
                              env=env(), capture_output=True, text=True, timeout=900, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc.stdout, json.loads((output / "report.json").read_text())

    _, local = evaluate(nyala_set / "eval-local", nyala_set / "store-local")
    # a fresh store: the ALIKED and stage-1 features are extracted on the cluster (the line counts ALIKED)
    out, mine = evaluate(nyala_set / "eval-ray", nyala_set / "store-eval-ray", "--ray", cluster.address)
    assert "features: 10 extracted" in out
    assert {k: v for k, v in mine.items() if k != "meta"} == {k: v for k, v in local.items() if k != "meta"}
    assert mine["num_answerable"] == 10 and mine["meta"]["mode"] == "two_stage"
    assert mine["meta"]["calibration"] == local["meta"]["calibration"]  # its Brier score on the same pair scores
    assert (nyala_set / "eval-ray" / "report.html").is_file() and (nyala_set / "eval-ray" / "cmc.png").is_file()


# ----------------------------------------------------------------------------- the pieces, without a cluster
@pytest.mark.slow
def test_sharded_stage1_scores_equal_one_index(nyala_set, tmp_path):
    """Shards' neighbours merged on the driver vote exactly as one index over the whole database."""
    config = load_config(None, shortlist_k=4)
    database = load_dataset(nyala_set / "db.csv")
    stored = annotation_features(database.annotations, FeatureStore(tmp_path), config, progress=False, kind="stage1")
    keys, feats = stored.keys, stored.features
    whole = build_index(keys, feats, config)
    bounds = [0, 3, 4, len(keys)]  # uneven shards, one of a single annotation
    shards = [(Stage1Shard(config, keys[a:b], feats[a:b]), a) for a, b in zip(bounds[:-1], bounds[1:])]
    slot_of = {key: i for i, key in enumerate(keys)}
    queries = annotation_features(load_queries(nyala_set / "queries").annotations, FeatureStore(tmp_path), config,
                                  progress=False, kind="stage1")
    checked = 0
    for key, query in zip(queries.keys, queries.features):
        exclude = [key] if key in slot_of else []
        fetch = whole.fetch(exclude)
        tables = [shard.neighbours(query, fetch) for shard, _ in shards]
        tables = [Neighbours(t.dist, t.slots + offset * (t.slots >= 0), t.xy) for t, (_, offset) in
                  zip(tables, shards)]
        merged = score_neighbours(merge_neighbours(tables, fetch), query, keys, slot_of, keys, whole.k, exclude)
        expected = whole.search(query, exclude=exclude)
        assert merged.scores == expected.scores and merged.votes == expected.votes
        assert max(expected.scores.values()) > 0
        checked += bool(exclude)
    assert checked == 1  # the database photo among the queries: its own votes excluded the same way


def test_a_config_pickles_with_its_values_and_source(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"max_num_keypoints": 300, "shortlist_k": 7}))
    config = load_config(path)
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config and copy.source == config.source and copy.fingerprint == config.fingerprint


def test_without_ray_nothing_imports_ray(tmp_path):
    """identify, extract and evaluate without --ray, in one process: ray is never imported."""
    for name in ("sacre_coeur", "DSC_04"):
        (tmp_path / "db" / name).mkdir(parents=True)
        for photo in PHOTOS.glob(f"{name}*.jpg"):
            shutil.copyfile(photo, tmp_path / "db" / name / photo.name)
    code = """
import sys
from wbia_lightglue import cli, core
for argv in sys.argv[1:]:
    assert cli.main(argv.split("|")) == 0, argv
print("ray imported" if "ray" in sys.modules else "ray not imported")
"""
    small = ["--cache-dir", tmp_path / "store", "--keypoints", "64", "--image-size", "256", "--shortlist", "0",
             "--device", "cpu", "-q"]
    commands = [["identify", PHOTOS / "sacre_coeur1.jpg", tmp_path / "db", "--output", tmp_path / "out", *small],
                ["extract", tmp_path / "db", *small],
                ["evaluate", tmp_path / "db", "--output", tmp_path / "eval", "--report-queries", "0", *small]]
    proc = subprocess.run([sys.executable, "-c", code, *("|".join(map(str, argv)) for argv in commands)],
                          env=env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ray not imported")
    assert (tmp_path / "out" / "rankings.csv").is_file() and (tmp_path / "eval" / "report.json").is_file()


def test_ray_is_for_the_batch_form(tmp_path):
    proc = subprocess.run(cli("identify", PHOTOS / "sacre_coeur1.jpg", PHOTOS, "--ray", "127.0.0.1:1"), env=env(),
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2 and "--ray is for the batch form" in proc.stderr
