"""A Ray cluster of several nodes on this machine with every process on the loopback address (127.0.0.1).

For trying ``--ray`` on one machine, for the tests and for ``benchmarks/ray_throughput.py``. A cluster across
machines is started with ``ray start`` as usual (README, "Beyond one machine").

Why not just ``ray start --node-ip-address 127.0.0.1``: Ray 2.60 rewrites a loopback address into the machine's
routable one (``ray/_private/services.py``: ``resolve_ip_for_localhost`` -> ``get_node_ip_address`` ->
``node_ip_address_from_perspective``), in ``ray start`` for ``--node-ip-address`` and ``--address``
(``ray/scripts/scripts.py``, ``start``) and in ``ray.init`` for ``address`` and ``_node_ip_address``
(``ray/_private/worker.py``, ``init``). Only a node whose address is the literal ``127.0.0.1`` listens on
loopback alone (its GCS, raylet, object manager, workers and agents compare the address with ``127.0.0.1``);
every other node listens on all interfaces. The rewrite is skipped where
``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (``ray_constants.ENABLE_RAY_CLUSTER`` false: the node's address is
loopback), but under that setting ``ray start --address`` refuses to start a worker node ("Multi-node Ray
clusters are not supported"). Hence:

* the head: ``ray start --head --node-ip-address 127.0.0.1`` with :data:`LOOPBACK_ENV`;
* each worker node: ``python -m wbia_lightglue.distributed.local_cluster worker ADDRESS``, which starts Ray's
  ``Node`` as ``ray start --address ... --block`` does (and as ``ray.cluster_utils.Cluster.add_node``, Ray's
  own multi-node-on-one-machine helper, does), with its address given as ``127.0.0.1`` rather than resolved;
* the driver: ``ray_runner.connect`` with a loopback address sets :data:`LOOPBACK_ENV` before it imports ray
  and passes ``_node_ip_address="127.0.0.1"``.

Each node is a process group of its own (``start_new_session``), so one can be killed as a machine dies.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

logger = logging.getLogger("wbia_lightglue")

LOOPBACK = "127.0.0.1"
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # see the module docstring
START_SECONDS = 180  # how long a node may take to join


def is_loopback_address(address: str) -> bool:
    """Whether ``host:port`` names this machine's loopback (``127.0.0.1``, ``localhost``, ``::1``)."""
    host = address.rsplit(":", 1)[0].strip("[]") if ":" in address else address
    return host in (LOOPBACK, "localhost", "::1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


class LocalCluster:
    """A head and ``workers`` worker nodes on loopback, ``num_cpus`` CPUs each; ``address`` is the head's.

    ``logs``: where each node's output goes (``ray-head.log``, ``ray-worker1.log``, ...). ``env``: the
    environment of the node processes (LOOPBACK_ENV is added). ``stop()`` ends every process it started.
    """

    def __init__(self, workers: int = 1, *, num_cpus: int = 1, logs: Optional[Path] = None,
                 env: Optional[Mapping[str, str]] = None, object_store_mib: Optional[int] = None):
        # short: Ray's socket paths under the temp dir must stay under 107 characters
        self.temp = Path(f"/tmp/rl-{uuid.uuid4().hex[:8]}")
        self.logs = Path(logs) if logs is not None else self.temp / "logs"
        self.env: Dict[str, str] = {**(env if env is not None else os.environ), **LOOPBACK_ENV}
        self.num_cpus, self.object_store_mib = num_cpus, object_store_mib
        self.port = free_port()
        self.address = f"{LOOPBACK}:{self.port}"
        self.nodes: Dict[str, subprocess.Popen] = {}
        try:
            self.nodes["head"] = self._start("head", self._ray_start_head())
            self.wait_for_nodes(1)
            for number in range(1, workers + 1):
                self.add_worker(f"worker{number}")
        except BaseException:
            self.stop()
            raise

    # ------------------------------------------------------------------ nodes
    def _ray_start_head(self) -> List[str]:
        ray = str(Path(sys.executable).with_name("ray"))
        return [ray, "start", "--head", "--node-ip-address", LOOPBACK, "--port", str(self.port),
                "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(self.temp),
                "--num-cpus", str(self.num_cpus), *self._memory_args(), "--block"]

    def _memory_args(self) -> List[str]:
        return [] if self.object_store_mib is None else ["--object-store-memory", str(self.object_store_mib << 20)]

    def add_worker(self, name: str) -> None:
        """Start a worker node named ``name`` and wait until it has joined."""
        command = [sys.executable, "-m", "wbia_lightglue.distributed.local_cluster", "worker", self.address,
                   "--num-cpus", str(self.num_cpus), "--temp-dir", str(self.temp)]
        if self.object_store_mib is not None:
            command += ["--object-store-mib", str(self.object_store_mib)]
        self.nodes[name] = self._start(name, command)
        self.wait_for_nodes(len(self.nodes))

    def _start(self, name: str, command: Sequence[str]) -> subprocess.Popen:
        self.temp.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"ray-{name}.log", "w") as log:
            return subprocess.Popen(list(command), env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)

    def alive_nodes(self) -> int:
        """The cluster's live nodes, as a fresh driver on loopback sees them (0 while it cannot connect)."""
        code = ("import sys; from wbia_lightglue.distributed.ray_runner import connect; connect(sys.argv[1], "
                "progress=False); import ray; print(sum(n['Alive'] for n in ray.nodes()))")
        proc = subprocess.run([sys.executable, "-c", code, self.address], env=self.env, capture_output=True,
                              text=True, timeout=120)
        out = proc.stdout.split()
        return int(out[-1]) if proc.returncode == 0 and out and out[-1].isdigit() else 0

    def wait_for_nodes(self, count: int, timeout: float = START_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, proc in self.nodes.items():
                if proc.poll() is not None:
                    log = self.logs / f"ray-{name}.log"
                    raise RuntimeError(f"ray node {name} exited ({proc.returncode}): see {log}")
            if self.alive_nodes() >= count:
                return
            time.sleep(1)
        raise RuntimeError(f"{count} ray nodes not up after {timeout:.0f} s (logs in {self.logs})")

    def kill(self, name: str) -> None:
        """SIGKILL a node's process group (its raylet, object store and agents), as when a machine dies."""
        proc = self.nodes[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)

    def pids(self) -> List[int]:
        """Every live process of the cluster: the nodes' process groups, what runs in its temp dir, their children."""
        table = {}  # pid -> (parent, process group)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                table[int(entry.name)] = (int(fields[1]), int(fields[2]))
        groups = {proc.pid for proc in self.nodes.values() if proc.poll() is None}
        found = set(self._in_temp_dir()) | {pid for pid, (_, group) in table.items() if group in groups}
        while True:
            children = {pid for pid, (parent, _) in table.items() if parent in found} - found
            if not children:
                return sorted(found)
            found |= children

    def stop(self) -> None:
        for name in reversed(list(self.nodes)):
            try:
                self.kill(name)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        # Ray's worker processes run in process groups of their own; they exit when their raylet is gone.
        # Any still running after a while is ours by the unique temp dir in its command line.
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self._in_temp_dir():
            time.sleep(0.5)
        for pid in self._in_temp_dir():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)

    def _in_temp_dir(self) -> List[int]:
        found = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit() and int(entry.name) != os.getpid():
                try:
                    if str(self.temp).encode() in (entry / "cmdline").read_bytes():
                        found.append(int(entry.name))
                except OSError:
                    pass
        return found

    def __enter__(self) -> "LocalCluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------------------- a worker node
def worker_node(address: str, num_cpus: int, temp_dir: str, object_store_mib: Optional[int] = None) -> None:
    """Join the cluster at ``address`` as a worker node on loopback and block (``ray start --address --block``)."""
    import ray._private.node
    import ray._private.parameter

    params = ray._private.parameter.RayParams(
        node_ip_address=LOOPBACK, gcs_address=address, num_cpus=num_cpus, temp_dir=temp_dir,
        include_log_monitor=False,  # type: ignore[arg-type]  # one per machine: the head's (typed str, is a bool)
        object_store_memory=None if object_store_mib is None else object_store_mib << 20)
    node = ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
    logger.info("ray worker node on %s joined %s", node.node_ip_address, address)
    while True:
        time.sleep(1)
        dead = [kind for kind, proc in node.dead_processes()
                if proc.returncode not in (0, signal.SIGTERM, -signal.SIGTERM, 128 + signal.SIGTERM)]
        if dead:
            logger.error("ray processes exited: %s; stopping this node", ", ".join(dead))
            node.kill_all_processes(check_alive=False, allow_graceful=False)
            os._exit(1)


def main(argv: Optional[Sequence[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m wbia_lightglue.distributed.local_cluster",
                                     description="A Ray cluster on this machine's loopback: a head and N worker "
                                                 "nodes, until Ctrl-C.")
    parser.add_argument("--workers", type=int, default=1, help="worker nodes beside the head (default 1)")
    parser.add_argument("--num-cpus", type=int, default=1, help="CPUs of each node (default 1)")
    commands = parser.add_subparsers(dest="command")
    worker = commands.add_parser("worker", help="(used by the cluster) one worker node joining ADDRESS")
    worker.add_argument("address")
    worker.add_argument("--num-cpus", type=int, default=1)
    worker.add_argument("--temp-dir", required=True)
    worker.add_argument("--object-store-mib", type=int)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "worker":
        worker_node(args.address, args.num_cpus, args.temp_dir, args.object_store_mib)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stopped by a signal: the nodes go too
    with LocalCluster(args.workers, num_cpus=args.num_cpus) as cluster:
        logger.info("ray cluster of %d nodes on loopback: --ray %s (logs in %s); Ctrl-C stops it",
                    args.workers + 1, cluster.address, cluster.logs)
        try:
            while all(proc.poll() is None for proc in cluster.nodes.values()):
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
