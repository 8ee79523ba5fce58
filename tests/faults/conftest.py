"""The fault suite's private world: its own Kafka, Redis and PostgreSQL (other ports, data under
/tmp) that the tests may restart or wipe, and its own two-node Ray cluster (a head and a second
raylet started with ``ray start --address``) running the Serve app. Nothing here touches the
shared local stack or anybody else's Ray processes: nodes are stopped by the pids of their own
processes.

Each test streams a seeded set of transactions at a steady rate through a consumer pool, injects
one fault, measures how long until every partition commits again, drains, and checks that every
transaction has exactly one decision. Results are appended to ``$FRAUDRAY_FAULTS_REPORT``
(default /tmp/fraudray-faults.jsonl); docs/reliability.md quotes them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import pytest
import ray
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from cluster import stack
from core import ray_client
from core.ports import free_port
from core.procs import process_table, with_descendants
from core.settings import (
    REPO_ROOT,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    ServeSettings,
    Settings,
    StackSettings,
)
from ingest.consumer import ConsumerActor, ConsumerPool, group_lag
from ingest.producer import TransactionProducer
from ingest.serde import FastRecordEncoder
from ingest.simulator import demo_transactions

N_TX = 50_000  # per test: the issue's floor
RATE = 4_000  # tx/s, steady; the pool drains ~4-6k tx/s on this box when it is idle
ACTORS = 2
RECOVERY_BOUND_S = 60.0  # every partition commits again within this after the fault
DRAIN_TIMEOUT_S = 240.0
# The broker evicts a dead group member after this (Kafka's default is 45 s; production
# guidance in docs/reliability.md). Until then its partitions wait.
SESSION_TIMEOUT_MS = 10_000
REPORT = Path(os.environ.get("FRAUDRAY_FAULTS_REPORT", "/tmp/fraudray-faults.jsonl"))
RAY = str(Path(sys.executable).parent / "ray")
NODE_B = "fault_node_b"
# Part of `make test`; FRAUDRAY_FAULTS=0 leaves the fault runs out (e.g. a quick local rerun).
unless_left_out = pytest.mark.skipif(
    os.environ.get("FRAUDRAY_FAULTS") == "0", reason="fault injection left out: FRAUDRAY_FAULTS=0"
)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.25) -> float:
    """Seconds until ``predicate()``; fails the test after ``timeout``."""
    t0 = time.monotonic()
    while not predicate():
        assert time.monotonic() - t0 < timeout, f"{what}: not within {timeout:.0f} s"
        time.sleep(every)
    return time.monotonic() - t0


class FaultKafka(stack.Kafka):
    """The stack's Kafka with a short group session timeout and a small offsets topic."""

    def prepare(self) -> None:
        super().prepare()
        with open(self.properties, "a") as fh:
            fh.write(
                f"group.consumer.session.timeout.ms={SESSION_TIMEOUT_MS}\n"
                f"group.consumer.min.session.timeout.ms={SESSION_TIMEOUT_MS // 2}\n"
                "offsets.topic.num.partitions=4\n"
            )


@dataclass
class FaultStack:
    settings: Settings
    services: dict[str, stack.Service]

    def restart(self, name: str, *, wipe: bool = False) -> float:
        """Stop a service (SIGTERM/SIGINT, as the stack does), optionally delete its data, start it."""
        t0 = time.monotonic()
        svc = self.services[name]
        svc.stop()
        if wipe:
            shutil.rmtree(svc.data_dir, ignore_errors=True)
        svc.start()
        return time.monotonic() - t0


@pytest.fixture(scope="package")
def fault_stack() -> Iterator[FaultStack]:
    var = Path(tempfile.mkdtemp(prefix="frfault-", dir="/tmp"))
    var.chmod(0o755)  # PostgreSQL runs as `postgres` and must enter it
    (var / "cache").mkdir()
    (var / "cache" / "kafka-libs").symlink_to(REPO_ROOT / "var" / "cache" / "kafka-libs")
    kafka_port = free_port()
    s = Settings(
        kafka=KafkaSettings(
            bootstrap=f"127.0.0.1:{kafka_port}", controller_port=free_port(), heap_mb=512, partitions=6
        ),
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"),  # type: ignore[arg-type]
        postgres=PostgresSettings(dsn=f"postgresql://fraudray@127.0.0.1:{free_port()}/fraudray"),  # type: ignore[arg-type]
        serve=ServeSettings(http_port=free_port()),
        stack=StackSettings(var_dir=var, ready_timeout_s=120),
    )
    services: dict[str, stack.Service] = {
        "postgres": stack.services(s)["postgres"],
        "redis": stack.services(s)["redis"],
        "kafka": FaultKafka("kafka", s.kafka.port, s, extra_ports=(s.kafka.controller_port,)),
    }
    try:
        for svc in services.values():
            svc.start()
        yield FaultStack(s, services)
    finally:
        for svc in reversed(services.values()):
            with contextlib.suppress(Exception):
                svc.stop()
        pg_data = services["postgres"].data_dir
        shutil.rmtree(var, ignore_errors=True)
        shutil.rmtree(pg_data, ignore_errors=True)


# -- a two-node Ray cluster of our own ----------------------------------------------------------


def cluster_pids(temp_dir: Path, gcs_port: int) -> set[int]:
    """Every process of our cluster: they name our temp dir or GCS port; plus descendants."""
    table = process_table()
    ours = re.compile(rf"{re.escape(str(temp_dir))}(?:/|\s|$)|--(?:gcs[-_])?address=\S+:{gcs_port}\b")
    roots = {pid for pid, (_p, cmd) in table.items() if pid != os.getpid() and ours.search(cmd)}
    return with_descendants(roots, table)


def kill_pids(pids: set[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


@dataclass
class FaultRay:
    address: str
    temp_dir: Path
    gcs_port: int
    env: dict[str, str]
    node_b_metrics_port: int
    dashboard_port: int
    head_node_id: str = ""
    node_b_id: str = ""

    def titled_pids(self, title: str) -> list[int]:
        """Our cluster's live processes whose title starts with ``title`` (Ray names a worker
        after what it runs: ``ray::ConsumerActor``, ``ray::ServeReplica:<app>:<deployment>``)."""
        table = process_table()
        ours = cluster_pids(self.temp_dir, self.gcs_port)
        return sorted(pid for pid in ours if pid in table and table[pid][1].startswith(title))

    def consumer_stacks(self) -> str:
        """Every thread's Python stack in each consumer actor's process (py-spy): where a loop
        that neither drains nor stops is waiting."""
        pids = self.titled_pids("ray::ConsumerActor")
        spy = Path(sys.executable).with_name("py-spy")
        dumps = []
        for pid in pids:
            try:
                out = subprocess.run(
                    [str(spy), "dump", "--pid", str(pid)],
                    capture_output=True,
                    text=True,
                    timeout=30,
                    check=False,
                )
                dumps.append(f"pid {pid}:\n{out.stdout or out.stderr}")
            except (OSError, subprocess.TimeoutExpired) as exc:
                dumps.append(f"pid {pid}: no stack ({exc})")
        return "consumer actors' stacks:\n" + ("\n".join(dumps) or "no consumer actor process found")

    def node_b_pids(self) -> set[int]:
        """The second node's raylet (it names its own metrics port) and everything under it."""
        table = process_table()
        mark = re.compile(rf"--metrics[-_]export[-_]port[= ]{self.node_b_metrics_port}\b")
        raylets = {pid for pid, (_p, cmd) in table.items() if "raylet" in cmd and mark.search(cmd)}
        return with_descendants(raylets, table)


def _run(cmd: list[str], env: dict[str, str], cleanup: Callable[[], None], attempts: int = 3) -> None:
    """``ray start …``, retried: on a box loaded by other suites it sometimes times out."""
    for attempt in range(1, attempts + 1):
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240, check=False)
        if out.returncode == 0:
            return
        if attempt == attempts:
            raise AssertionError(f"{' '.join(cmd[:3])} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
        cleanup()


@pytest.fixture(scope="package")
def fault_ray(fault_stack: FaultStack) -> Iterator[FaultRay]:
    s = fault_stack.settings
    token = ray_client.ensure_token()
    temp_dir = Path(tempfile.mkdtemp(prefix="frf-", dir="/tmp"))  # short: socket paths < 108 bytes
    gcs_port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=token,
        # Declare a dead node after 3 missed health checks instead of 5 (period and timeout
        # stay at Ray's defaults: shorter ones failed start-ups on this busy box).
        RAY_health_check_failure_threshold="3",
    )
    common = [
        "--node-ip-address",
        "127.0.0.1",
        "--temp-dir",
        str(temp_dir),
        "--disable-usage-stats",
        "--object-store-memory",
        str(300 * 1024 * 1024),
        "--dashboard-agent-listen-port",
        "0",
    ]
    info = FaultRay(f"127.0.0.1:{gcs_port}", temp_dir, gcs_port, env, free_port(), free_port())

    def stop_all() -> None:
        for sig, grace in ((signal.SIGTERM, 3), (signal.SIGKILL, 8)):  # the cluster's data is not kept
            kill_pids(cluster_pids(temp_dir, gcs_port), sig)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: not cluster_pids(temp_dir, gcs_port), grace, "Ray processes gone")

    def stop_node_b() -> None:
        kill_pids(info.node_b_pids())

    try:
        _run(
            [
                RAY,
                "start",
                "--head",
                "--port",
                str(gcs_port),
                "--num-cpus",
                "2",
                # No dashboard: on a busy 2-core box its dozen processes made the raylet miss
                # Ray's fixed 30 s registration window.
                "--include-dashboard",
                "false",
                "--ray-client-server-port",
                str(free_port()),
                "--metrics-export-port",
                str(free_port()),
                *common,
            ],
            env,
            stop_all,
        )
        _run(
            [
                RAY,
                "start",
                "--address",
                info.address,
                "--num-cpus",
                "1",
                "--resources",
                json.dumps({NODE_B: 1}),
                "--metrics-export-port",
                str(info.node_b_metrics_port),
                *common,
            ],
            env,
            stop_node_b,
        )
        os.environ["RAY_AUTH_MODE"] = "token"
        ray.init(address=info.address, namespace=s.ray.namespace, log_to_driver=False)
        for n in ray.nodes():
            if n["Alive"]:
                if NODE_B in n["Resources"]:
                    info.node_b_id = n["NodeID"]
                else:
                    info.head_node_id = n["NodeID"]
        assert info.node_b_id and info.head_node_id, ray.nodes()
        _deploy_serve(s)
        yield info
    finally:
        ray_client.shutdown()  # stop_all() takes the nodes down, Serve and all
        stop_all()
        if os.environ.get("FRAUDRAY_FAULTS_KEEP_LOGS") == "1":
            print(f"\nfault Ray's logs kept in {temp_dir}/session_latest/logs")
        else:
            subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def _deploy_serve(s: Settings) -> None:
    """The app `fraud` as `fraudray serve` deploys it, with three differences: the HTTP proxy on
    the head only (two nodes on one machine share 127.0.0.1); the Isolation Forest as the only
    member (the ensemble's other members add CPU, not failure modes, and this box is shared);
    and the shared registry's production model copied into our var/, so that nobody's promote
    changes it under us."""
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    from cluster.first_start import ensure_models
    from serve_deployments import deploy as serving
    from serve_deployments.app import production_versions

    # On a fresh machine this suite may be the first to need a model (pytest runs tests/faults
    # before tests/integration): train the first-start models as `make run` would.
    ensure_models(Settings())
    v = dict(production_versions(Settings())["if"])
    dest = s.var_dir / "models" / "if" / v["version"]
    shutil.copytree(v["uri"], dest, dirs_exist_ok=True)
    versions = {"if": {"uri": str(dest), "version": v["version"]}}
    http = {"host": s.serve.http_host, "port": s.serve.http_port}
    serve.start(proxy_location="HeadOnly", http_options=http)
    app = {
        "name": s.serve.app_name,
        "route_prefix": "/",
        "import_path": serving.IMPORT_PATH,
        "args": {
            "families": ["if"],
            "models": versions,
            "redis_url": s.redis.url.get_secret_value(),
            "postgres_dsn": s.postgres.dsn.get_secret_value(),
            # Auth is on by default: without keys every route but /health answers 401. No fault
            # test calls the HTTP API (the consumers call the Ensemble's handle); one that does
            # must deploy with a key (tests.helpers.API_KEY), not switch auth off.
            "api_keys": [],
        },
        "deployments": serving._deployments(versions),
    }
    config = {"proxy_location": "HeadOnly", "http_options": http, "applications": [app]}
    serving._client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=False)

    def running() -> bool:
        status = serve.status().applications.get(s.serve.app_name)
        assert status is None or status.status != "DEPLOY_FAILED", status
        return status is not None and status.status == "RUNNING"

    wait_for(running, 300, "Serve app running", every=1.0)


# -- one fault run ------------------------------------------------------------------------------


class SpreadPool(ConsumerPool):
    """Consumer actors alternating between the head and the second node (soft affinity: a
    restarted actor whose node died goes wherever there is room)."""

    def __init__(self, settings: Settings, n: int, group_id: str, nodes: list[str]) -> None:
        self.nodes = nodes
        super().__init__(settings, n, group_id)

    def add(self) -> Any:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from core.families import SCORER_DEPLOYMENT

        node = self.nodes[len(self.actors) % len(self.nodes)]
        actor = ConsumerActor.options(  # type: ignore[attr-defined]
            scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=True)
        ).remote(self.settings, self.settings.serve.app_name, SCORER_DEPLOYMENT, self.group_id)
        self.actors.append(actor)
        self.runs.append(actor.run.remote(**self.run_kwargs))
        return actor

    def crashed_runs(self) -> list[str]:
        """The errors of the actors' loops that ended with an exception while the actor lived
        on (Ray's ``max_task_retries`` only covers actor death): nobody would restart such a
        loop in production, so any is a failure. (A timed-out lag query used to end loops this
        way when the broker restarted.)"""
        done, _ = ray.wait(list(self.runs), num_returns=len(self.runs), timeout=0)
        errors = []
        for ref in done:
            try:
                ray.get(ref)
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1][:200]}")
        return errors


class Stream(threading.Thread):
    """Sends pre-encoded messages at a steady rate (token bucket) from a background thread."""

    def __init__(self, settings: Settings, messages: list[tuple[str, bytes]], rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.messages, self.rate = settings, messages, rate
        self.sent = 0
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        try:
            producer = TransactionProducer(self.settings)
            t0 = time.monotonic()
            while self.sent < len(self.messages):
                due = min(len(self.messages), int((time.monotonic() - t0) * self.rate) + 1)
                for key, value in self.messages[self.sent : due]:
                    producer.send_raw(key, value)
                self.sent = max(self.sent, due)
                producer._producer.poll(0)
                time.sleep(0.02)
            producer.flush(timeout=300)
            self.seconds = time.monotonic() - t0
        except BaseException as exc:  # reported by the test
            self.error = exc


@dataclass
class FaultResult:
    fault: str
    transactions: int
    recovery_s: float
    lost: int
    duplicated: int
    dead_lettered: int = 0
    total_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def drained(settings: Settings, group_id: str) -> bool:
    try:
        return sum(group_lag(settings, group_id).values()) == 0
    except Exception:  # broker down or restarting (group_lag retries a moving coordinator itself): not yet
        return False


def tx_partitions(pool: ConsumerPool, settings: Settings) -> list[list[int]]:
    """The transactions-topic partitions each actor of ``pool`` owns right now."""
    topic = settings.kafka.transactions_topic

    def owned(self: Any, t: str = topic) -> list[int]:
        return sorted(tp.partition for tp in self.loop.consumer.assignment() if tp.topic == t)

    return list(ray.get([a.__ray_call__.remote(owned) for a in pool.actors], timeout=60))


def committed_offsets(settings: Settings, group_id: str) -> tuple[dict[int, int], dict[int, int]] | None:
    """(committed offset, high watermark) per partition of the transactions topic; None if Kafka
    cannot answer right now."""
    k = settings.kafka
    probe = Consumer(
        {"bootstrap.servers": k.bootstrap, "group.id": group_id, "log_level": 0, "socket.timeout.ms": 2000}
    )
    try:
        tps = [TopicPartition(k.transactions_topic, p) for p in range(k.partitions)]
        committed = {tp.partition: tp.offset for tp in probe.committed(tps, timeout=3)}
        high = {tp.partition: probe.get_watermark_offsets(tp, timeout=3)[1] for tp in tps}
        return committed, high
    except Exception:  # broker down or electing a coordinator: "not yet"
        return None
    finally:
        probe.close()


@dataclass
class FaultEnv:
    stack: FaultStack
    ray: FaultRay

    def fresh(self, tag: str) -> tuple[Settings, str]:
        """Settings with new transactions, labels and DLQ topics on the private Kafka, and a
        new group. The labels topic has one partition: with six, Kafka's uniform assignor gave
        one of two members all six labels partitions and the other all six transaction ones."""
        s = self.stack.settings
        suffix = uuid.uuid4().hex[:8]
        base = f"faults-{tag}-{suffix}"
        admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap})
        wanted = [
            NewTopic(base, num_partitions=s.kafka.partitions, replication_factor=1),
            NewTopic(f"{base}.labels", num_partitions=1, replication_factor=1),
            NewTopic(f"{base}.dlq", num_partitions=1, replication_factor=1),
        ]
        for fut in admin.create_topics(wanted).values():
            fut.result()
        kafka = s.kafka.model_copy(
            update={"transactions_topic": base, "labels_topic": f"{base}.labels", "dlq_topic": f"{base}.dlq"}
        )
        return s.model_copy(update={"kafka": kafka}), base

    def run(
        self,
        name: str,
        inject: Callable[[SpreadPool], dict[str, Any] | None],
        *,
        seed: int,
        bad: list[bytes] | None = None,
        nodes: list[str] | None = None,
    ) -> tuple[FaultResult, Settings, list[dict[str, Any]]]:
        """Stream ``N_TX`` transactions (plus ``bad`` raw values spread through them), inject the
        fault at 30 %, time the recovery, drain, and count lost and duplicated decisions."""
        s, group = self.fresh(re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
        records = list(demo_transactions(N_TX, seed=seed, users=2000, tag=f"fault{seed:08x}"))
        enc = FastRecordEncoder.for_serde(TransactionProducer(s).serde)
        messages = [(r["user_id"], enc.encode(r)) for r in records]
        if bad:  # spread evenly through the stream
            step = len(messages) // len(bad)
            mixed: list[tuple[str, bytes]] = []
            for i, value in enumerate(bad):
                mixed += [*messages[i * step : (i + 1) * step], (f"hostile-{i}", value)]
            messages = mixed + messages[len(bad) * step :]
        pool = SpreadPool(s, ACTORS, group, nodes or [self.ray.head_node_id, self.ray.node_b_id])
        t_start = time.monotonic()
        try:
            wait_for(lambda: all(tx_partitions(pool, s)), 120, "every consumer owns transaction partitions")
            stream = Stream(s, messages, RATE)
            stream.start()
            wait_for(lambda: stream.sent >= 0.3 * len(messages) or stream.error is not None, 120, "30 % sent")
            base = committed_offsets(s, group)
            assert base is not None
            t_fault = time.monotonic()
            extra = inject(pool) or {}

            # When each partition first committed past its offset at the fault: a tail on every
            # partition points at the broker or the output producer, on a few at the group.
            moved: dict[int, float] = {}

            def recovered() -> bool:
                now = committed_offsets(s, group)
                if now is None:
                    return False
                committed, high = now
                for p in committed:
                    if p not in moved and (committed[p] > base[0][p] or committed[p] >= high[p]):
                        moved[p] = round(time.monotonic() - t_fault, 1)
                return len(moved) == len(committed)

            try:
                wait_for(recovered, RECOVERY_BOUND_S + 30, f"{name}: every partition committing again", 0.5)
            except AssertionError as exc:
                raise AssertionError(f"{exc}; partitions moved after (s): {moved}") from None
            recovery = time.monotonic() - t_fault
            extra["partition_recovery_s"] = dict(sorted(moved.items()))
            stream.join(timeout=600)
            assert stream.error is None, stream.error
            t_streamed = time.monotonic()

            def drained_without_crashes() -> bool:
                crashed = pool.crashed_runs()
                assert not crashed, f"{name}: a consumer loop ended with an exception: {crashed}"
                return drained(s, group)

            try:
                wait_for(drained_without_crashes, DRAIN_TIMEOUT_S, "group committed every offset", 0.5)
            except AssertionError as exc:
                state = drain_state(pool, s, group)
                raise AssertionError(f"{exc}; {state}; {self.ray.consumer_stacks()}") from None
            drain_s = time.monotonic() - t_streamed
            try:
                stats = pool.stop()
            except ray.exceptions.GetTimeoutError as exc:
                raise AssertionError(f"{name}: {exc}; {self.ray.consumer_stacks()}") from None
        finally:
            with contextlib.suppress(Exception):
                pool.stop(timeout=30)
        ids = [r["transaction_id"] for r in records]
        lost, duplicated = count_lost_and_duplicated(s, ids)
        reapplied = sum(st["store_reapplied"] for st in stats)  # batches applied again: the store lost state
        result = FaultResult(
            fault=name,
            transactions=len(ids),
            recovery_s=round(recovery, 1),
            lost=lost,
            duplicated=duplicated,
            dead_lettered=sum(st["dead_lettered"] for st in stats),
            total_s=round(time.monotonic() - t_start, 1),
            extra=extra
            | {
                "stream_s": round(stream.seconds, 1),
                "drain_s": round(drain_s, 1),  # from the stream's end to every offset committed
                "store_reapplied": reapplied,
                # Kafka clients a loop replaced for partitions they never started (librdkafka #5586)
                "client_restarts": sum(st["client_restarts"] for st in stats),
            },
        )
        with REPORT.open("a") as fh:
            fh.write(json.dumps(asdict(result)) + "\n")
        print(f"\nFAULT {json.dumps(asdict(result))}")
        return result, s, records


def drain_state(pool: SpreadPool, settings: Settings, group_id: str) -> str:
    """Where a drain that did not finish stands: per partition the committed offset and the
    high watermark, and per actor what its loop counted."""
    offsets = committed_offsets(settings, group_id)
    behind = "offsets unknown"
    if offsets is not None:
        committed, high = offsets
        behind = "committed/high " + ", ".join(f"p{p}: {c}/{high[p]}" for p, c in sorted(committed.items()))
    keys = (
        "polled", "scored", "batches", "retries", "commits", "commit_conflicts", "client_restarts",
        "last_batch_at", "lag",
    )  # fmt: skip
    actors = []
    for actor in pool.actors:
        try:
            st = ray.get(actor.stats.remote(), timeout=10)
            actors.append({k: st.get(k) for k in keys})
        except Exception as exc:  # a dead or stuck actor is an answer too
            actors.append({"error": f"{type(exc).__name__}: {exc}"[:200]})
    return f"{behind}; actors: {actors}; now {time.time():.0f}"


def count_lost_and_duplicated(settings: Settings, ids: list[str]) -> tuple[int, int]:
    """Transactions without a decision row, and rows beyond one per transaction (either table)."""
    with psycopg2.connect(settings.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(DISTINCT transaction_id) FROM decisions WHERE transaction_id = ANY(%s)",
            (ids,),
        )
        rows, distinct = cur.fetchone()
        cur.execute(
            "SELECT count(*) - count(DISTINCT transaction_id) FROM transactions"
            " WHERE transaction_id = ANY(%s)",
            (ids,),
        )
        (tx_dupes,) = cur.fetchone()
    conn.close()
    return len(set(ids)) - int(distinct), int(rows - distinct) + int(tx_dupes)


@pytest.fixture(scope="package")
def fault_env(fault_stack: FaultStack, fault_ray: FaultRay) -> FaultEnv:
    return FaultEnv(fault_stack, fault_ray)


def assert_exactly_once(result: FaultResult) -> None:
    assert result.lost == 0, f"{result.fault}: {result.lost} transactions without a decision"
    assert result.duplicated == 0, f"{result.fault}: {result.duplicated} duplicate rows"
    assert result.recovery_s <= RECOVERY_BOUND_S, (
        f"{result.fault}: healthy again after {result.recovery_s} s (bound {RECOVERY_BOUND_S} s)"
    )
