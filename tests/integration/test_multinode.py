"""Beyond one box, on one box: a Ray head and a second Ray node started with `ray start`
(own GCS port, own temp dir, token auth), the Serve app deployed from deploy/serve_config.yaml
with one scorer replica per node, and one consumer actor pinned to each node. Real traffic
through Kafka, Redis and PostgreSQL; both nodes must do work, and every transaction must end
up with exactly one decision row.

Other people run private Ray clusters on this machine, so nothing here uses `ray stop`: the
two nodes are stopped by the pids of their own processes (those naming our temp dir or GCS
port, and their children).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray
import yaml
from prometheus_client.parser import text_string_to_metric_families

from cluster.first_start import ensure_models
from core import ray_client
from core.families import DEPLOYMENT_NAMES, SCORER_DEPLOYMENT
from core.ports import free_port
from core.settings import REPO_ROOT, Settings
from ingest.consumer import ConsumerActor, ConsumerPool
from tests.helpers import API_KEY, count_rows, produce, with_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NODES = ("node_a", "node_b")  # custom resources, one per node: how the test pins work to a node
N_TX = 20_000
RAY = str(Path(sys.executable).parent / "ray")
SERVE = str(Path(sys.executable).parent / "serve")


# wait_for, run_checked and stop_nodes are shared with test_deploy_serve.py.
def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what}: not reached in {timeout} s"
        time.sleep(0.5)


@dataclass(frozen=True)
class TwoNodes:
    address: str  # GCS address for ray.init / --address
    temp_dir: Path
    metrics_port: dict[str, int]  # node resource name -> that node's metrics export port
    env: dict[str, str]  # environment of the nodes (token auth on)


def run_checked(
    cmd: list[str], env: dict[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[:3])} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    return out


def own_pids(temp_dir: Path, gcs_port: int) -> set[int]:
    """Processes of our two nodes: they name our temp dir or our GCS port; plus descendants."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid_text = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            ppid = int(ppid_text)
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if state != "Z":  # a zombie is already dead; its parent (or init) reaps it
            table[int(entry.name)] = (ppid, cmd)
    me = os.getpid()
    # Ray's client server names only the GCS address (with the node's IP), not the temp dir.
    ours = re.compile(rf"{re.escape(str(temp_dir))}(?:/|\s|$)|--(?:gcs[-_])?address=\S+:{gcs_port}\b")
    mine = {pid for pid, (_ppid, cmd) in table.items() if pid != me and ours.search(cmd)}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _c) in table.items() if ppid in mine} - mine - {me}
        mine |= children
        grew = bool(children)
    return mine


def stop_nodes(temp_dir: Path, gcs_port: int) -> None:
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        pids = own_pids(temp_dir, gcs_port)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and own_pids(temp_dir, gcs_port):
            time.sleep(0.2)
    left = own_pids(temp_dir, gcs_port)
    assert not left, f"Ray processes of the test cluster still alive: {sorted(left)}"


@pytest.fixture
def two_nodes(local_stack: Settings) -> Iterator[TwoNodes]:
    """Head (resource node_a) and a second node (node_b), 1 CPU each, token auth on."""
    token = ray_client.ensure_token()  # the driver below reads it from ~/.ray/auth_token
    # Short path: Ray's Unix socket paths under the temp dir must stay below 108 bytes.
    temp_dir = Path(tempfile.mkdtemp(prefix="frmn-", dir="/tmp"))
    gcs_port = free_port()
    # The token reaches each node through its environment, as the Secret does on Kubernetes
    # and the file mount does with `ray up`. Metrics flush every 2 s instead of 10 s.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_metrics_report_interval_ms="2000")
    common = [
        "--num-cpus", "1", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
        "--object-store-memory", str(256 * 1024 * 1024), "--disable-usage-stats",
        # Free ports for what would otherwise take fixed defaults that another cluster may hold.
        "--dashboard-agent-listen-port", "0",
    ]  # fmt: skip
    metrics = {name: free_port() for name in NODES}
    try:
        run_checked([RAY, "start", "--head", "--port", str(gcs_port), "--include-dashboard", "false",
                     "--ray-client-server-port", str(free_port()), "--resources", json.dumps({"node_a": 1}),
                     "--metrics-export-port", str(metrics["node_a"]), *common], env)  # fmt: skip
        run_checked([RAY, "start", "--address", f"127.0.0.1:{gcs_port}",
                     "--resources", json.dumps({"node_b": 1}),
                     "--metrics-export-port", str(metrics["node_b"]), *common], env)  # fmt: skip
        yield TwoNodes(f"127.0.0.1:{gcs_port}", temp_dir, metrics, env)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_nodes(temp_dir, gcs_port)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


class PinnedPool(ConsumerPool):
    """A ConsumerPool whose i-th actor runs on the node that holds custom resource ``nodes[i]``."""

    def __init__(self, settings: Settings, group_id: str, nodes: tuple[str, ...]) -> None:
        self.nodes = nodes
        super().__init__(settings, len(nodes), group_id)

    def add(self) -> Any:
        node = self.nodes[len(self.actors)]
        actor = ConsumerActor.options(resources={node: 0.01}).remote(  # type: ignore[attr-defined]
            self.settings, self.settings.serve.app_name, SCORER_DEPLOYMENT, self.group_id
        )
        self.actors.append(actor)
        self.runs.append(actor.run.remote(**self.run_kwargs))
        return actor


def _serve_config(settings: Settings, http_port: int) -> dict[str, Any]:
    """deploy/serve_config.yaml, sized for two 1-CPU nodes: exactly one scorer replica per node."""
    cfg: dict[str, Any] = yaml.safe_load((REPO_ROOT / "deploy" / "serve_config.yaml").read_text())
    versions = ensure_models(settings)
    models = {family: {"uri": mv.uri, "version": mv.version} for family, mv in versions.items()}
    cfg["proxy_location"] = "HeadOnly"  # both nodes share 127.0.0.1: one proxy per port
    cfg["http_options"] = {"host": "127.0.0.1", "port": http_port}
    (app,) = cfg["applications"]
    # Every family pinned: the config lists all the model deployments, so the app must bind them.
    app["args"] = {"models": models, "api_keys": [API_KEY]}
    by_name = {d["name"]: d for d in app["deployments"]}
    by_name[SCORER_DEPLOYMENT].update(
        num_replicas=2, max_replicas_per_node=1, autoscaling_config=None, ray_actor_options={"num_cpus": 0.25}
    )
    # The models: one small replica each, wherever it fits (per node at most 0.25 Ensemble +
    # 0.3 models + 0.1 FraudApi + 0.25 consumer actor of its 1 CPU).
    for model in DEPLOYMENT_NAMES.values():
        by_name[model].update(num_replicas=1, autoscaling_config=None, ray_actor_options={"num_cpus": 0.1})
    by_name["FraudApi"].update(num_replicas=1, autoscaling_config=None, ray_actor_options={"num_cpus": 0.1})
    return cfg


def _scored_by_replicas(port: int) -> float:
    """Requests the Ensemble (scorer) replicas of one node have processed (its metrics port)."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "ray_serve_deployment_request_counter"
        for sample in family.samples
        if sample.name.endswith("_total") and sample.labels.get("deployment") == SCORER_DEPLOYMENT
    )


def test_two_nodes_share_the_stream(
    two_nodes: TwoNodes,
    local_stack: Settings,
    new_topic: Callable[..., str],
    group_id: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Token auth is really on: the same call with a wrong token is refused.
    wrong_env = {**two_nodes.env, "RAY_AUTH_TOKEN": "not-the-token"}
    wrong = subprocess.run([RAY, "status", "--address", two_nodes.address], capture_output=True, text=True,
                           env=wrong_env, timeout=60, check=False)  # fmt: skip
    assert "AuthenticationError" in wrong.stdout + wrong.stderr, wrong.stderr[-2000:]

    http_port = free_port()
    s = with_topics(
        local_stack,
        transactions_topic=new_topic("multinode", partitions=6),
        labels_topic=new_topic("labels", 1),
    )
    s = s.model_copy(update={"serve": s.serve.model_copy(update={"http_port": http_port})})
    ray.init(address=two_nodes.address, namespace=s.ray.namespace, log_to_driver=False)
    node_of = {res: n["NodeID"] for n in ray.nodes() if n["Alive"] for res in NODES if res in n["Resources"]}
    assert sorted(node_of) == list(NODES) and len(set(node_of.values())) == 2, ray.nodes()

    # The Serve app, the way `ray up` / RayService deploy it: from the config file.
    config = two_nodes.temp_dir / "serve_config.yaml"
    config.write_text(yaml.safe_dump(_serve_config(s, http_port)))
    run_checked([SERVE, "run", str(config), "--non-blocking", "--address", two_nodes.address], two_nodes.env)
    base = f"http://127.0.0.1:{http_port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 480, "Serve app fraud healthy")  # five deployments over two nodes, 2 cores

    pool = PinnedPool(s, group_id, NODES)
    runs_on = dict(zip(NODES, ray.get([a.__ray_call__.remote(lambda _self: ray.get_runtime_context()
                                                              .get_node_id()) for a in pool.actors]),
                       strict=True))  # fmt: skip
    assert runs_on == node_of, "each consumer actor must run on the node it was pinned to"
    wait_for(lambda: all(pool.assignments()), 120, "both consumers own partitions")
    assert sorted(p for a in pool.assignments() for p in a) == list(range(6))

    t0 = time.monotonic()
    ids = [r["transaction_id"] for r in produce(s, N_TX, users=2000)]
    stats = pool.drain(timeout=300)
    seconds = time.monotonic() - t0

    dsn = s.postgres.dsn.get_secret_value()
    assert count_rows(dsn, "decisions", ids) == N_TX  # PK on transaction_id: exactly one each
    assert count_rows(dsn, "transactions", ids) == N_TX
    consumed = {node: st["scored"] for node, st in zip(NODES, stats, strict=True)}
    assert sum(consumed.values()) >= N_TX and all(v > 0 for v in consumed.values()), consumed
    assert sum(st["dead_lettered"] for st in stats) == 0

    # Scorer replicas: what each node's own metrics endpoint (the one Prometheus scrapes) says.
    scored_calls: dict[str, float] = {}

    def replicas_reported() -> bool:
        scored_calls.update({n: _scored_by_replicas(p) for n, p in two_nodes.metrics_port.items()})
        return all(v > 0 for v in scored_calls.values())

    wait_for(replicas_reported, 60, f"scorer calls on both nodes (so far {scored_calls})")

    with capsys.disabled():
        print(f"\nmulti-node: {N_TX:,} tx in {seconds:.1f} s; consumer actor tx per node {consumed}; "
              f"scorer replica calls per node {({k: int(v) for k, v in scored_calls.items()})}")  # fmt: skip
