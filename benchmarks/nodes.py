"""What an added Ray node buys: the backlog drain of `fraudray bench` on a private Ray cluster of
one node, then of two, each node pinned to a core of its own (``taskset``), so that the second
node brings one more core to the consumer actors and Serve replicas. The stack's services
(Kafka, Redis, PostgreSQL) are not pinned: they run on whichever core is free, in both runs.

    python -m benchmarks.nodes --count 50000 --actors 2 --rounds 2

Each node gets two logical CPUs (the app and two consumer actors fit on one node) and one
physical core. Prints one JSON line per drain and a summary; docs/scaling.md has the figures.
"""

from __future__ import annotations

import os

from core.ray_client import ray_env

os.environ.update(ray_env())  # before ray is imported

import argparse
import contextlib
import json
import secrets
import shutil
import signal
import statistics
import subprocess
import tempfile
import time
import uuid
from typing import Any

from benchmarks import e2e, stages
from core import ray_client
from core.ports import free_port
from core.procs import pid_alive, process_table, with_descendants
from core.settings import Settings, get_settings
from features.online import OnlineStore


class PinnedCluster:
    """A head on core 0 and, with ``nodes=2``, a second node on core 1; their processes (found
    by the private temp dir) are stopped by ``stop``, never `ray stop`."""

    def __init__(self, nodes: int) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="frnodes-", dir="/tmp")  # short: Ray's socket paths
        self.port = free_port()
        common = ["--num-cpus", "2", "--node-ip-address", "127.0.0.1", "--temp-dir", self.temp_dir,
                  "--object-store-memory", str(512 * 1024 * 1024), "--disable-usage-stats",
                  "--dashboard-agent-listen-port", "0"]  # fmt: skip
        ray = ray_client.ray_cli()
        env = {**os.environ, **ray_env()}
        self._start(["taskset", "-c", "0", ray, "start", "--head", "--port", str(self.port),
                     "--include-dashboard", "false", "--ray-client-server-port", str(free_port()),
                     "--metrics-export-port", str(free_port()), *common], env)  # fmt: skip
        for core in range(1, nodes):
            self._start(["taskset", "-c", str(core), ray, "start", "--address", self.address,
                         "--metrics-export-port", str(free_port()), *common], env)  # fmt: skip

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, cmd: list[str], env: dict[str, str]) -> None:
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180, check=False)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"{' '.join(cmd[:5])} failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            table = process_table()
            roots = {p for p, (_pp, cmd) in table.items() if self.temp_dir in cmd or f":{self.port} " in cmd}
            doomed = with_descendants(roots - {os.getpid()}, table)
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and any(pid_alive(p) for p in doomed):
                time.sleep(0.2)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def measure(base: Settings, nodes: int, count: int, actors: int, rounds: int) -> list[dict[str, Any]]:
    """``rounds`` drains of ``count`` fresh transactions with ``actors`` consumers."""
    import ray

    settings = base.model_copy(update={"serve": base.serve.model_copy(update={"http_port": free_port()})})
    cluster = PinnedCluster(nodes)
    topics = e2e.Topics(settings)
    run_id = uuid.uuid4().hex[:6]
    ids: list[str] = []
    rows = []
    try:
        ray.init(address=cluster.address, namespace=settings.ray.namespace, log_to_driver=False)
        e2e.deploy(settings, secrets.token_urlsafe(24))
        workload = e2e.Workload(count, seed=7, users=max(1000, count // 10))
        for r in range(rounds):
            records = workload.tagged(f"n{run_id}{nodes}r{r}")
            ids += [x["transaction_id"] for x in records]
            row = e2e.drain_run(settings, topics, records, actors)
            placed = {n["NodeID"][:8]: n["Resources"].get("CPU", 0) for n in ray.nodes() if n["Alive"]}
            row |= {"nodes": nodes, "round": r, "node_cpus": placed}
            row.pop("processes", None)
            print(json.dumps(row), flush=True)
            rows.append(row)
    finally:
        with contextlib.suppress(Exception):
            stages.delete_rows(settings, ids)
        OnlineStore(settings.redis.urls()).drop_population(f"n{run_id}")
        topics.close()
        ray_client.shutdown()
        cluster.stop()
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=50_000, help="transactions per drain")
    ap.add_argument("--actors", type=int, default=2, help="consumer actors (spread over the nodes)")
    ap.add_argument("--rounds", type=int, default=2, help="drains per cluster size")
    ap.add_argument("--nodes", type=int, nargs="+", default=[1, 2], help="cluster sizes, in order")
    args = ap.parse_args(argv)
    if shutil.which("taskset") is None:
        raise SystemExit("taskset (util-linux) is needed to pin each node to its core")
    base = get_settings()
    summary = {}
    for n in args.nodes:
        rows = measure(base, n, args.count, args.actors, args.rounds)
        summary[n] = {
            "median_tx_per_s": statistics.median(r["tx_per_s"] for r in rows),
            "exactly_once": all(r["check"]["exactly_once"] for r in rows),
            "load1": [r["load1"] for r in rows],
        }
    print(json.dumps({"summary": summary, "cores": os.cpu_count()}), flush=True)


if __name__ == "__main__":
    main()
