"""End-to-end benchmark (``fraudray bench``): the consumer pool + Serve + sinks on the local
stack, next to a per-message baseline and the stages' limits, on one seeded workload.

Every run writes into fresh topics (transactions per run, labels, decisions, alerts, DLQ;
deleted at the end) with ids and users tagged per run, so nothing collides with earlier runs
or other users of the stack; its PostgreSQL rows are checked (each transaction decided exactly
once) and then deleted. Steps:

1. backlog drain with 1, 2, 4 consumer actors (a fresh copy of the workload each): sustained
   tx/s from first polled record to last committed batch, µs/tx per stage, CPU/RSS per process;
2. fixed offered load (paced producer, event time = send time): event→decision latency
   p50/p95/p99 from ``decisions.latency_ms``;
3. the per-message baseline (benchmarks/baseline.py) on the first records of the workload;
4. every stage alone (benchmarks/stages.py) and their sum, the box's estimated limit.

    .venv/bin/python -m benchmarks.e2e --quick --report var/bench/e2e-quick.json
"""

from __future__ import annotations

import os

from core.procs import service_pids
from core.ray_client import ray_env

os.environ.update(ray_env())  # token auth and Serve's fast path, before anything imports ray

import argparse
import json
import platform
import secrets
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks import baseline, procstat, stages
from core import db, ray_client
from core.settings import Settings, get_settings
from features.online import OnlineStore

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class BenchConfig:
    count: int = 100_000  # transactions per drain run
    actors: tuple[int, ...] = (1, 2, 4)
    rates: tuple[int, ...] = (2000, 5000)  # offered tx/s for the latency runs (#25's targets)
    paced_actors: int = 2  # consumer actors of the latency runs: one per core
    replicas: tuple[int, ...] = (1, 2)  # Serve replicas per model deployment, one drain each
    replica_actors: int = 2  # consumer actors of those drains (2 replicas of everything fill 2 cores)
    paced_seconds: float = 10.0  # measured, after the warm-up
    paced_warmup_s: float = 3.0  # sent first at the same rate, left out of the percentiles
    baseline_count: int = 300
    stage_count: int = 10_000
    http_rps: tuple[int, ...] = (10, 30, 100, 300, 1000)  # open loop (benchmarks/http_load.py)
    http_endpoints: tuple[str, ...] = ("predict", "score")
    http_seconds: float = 10.0
    users: int = 20_000
    seed: int = 42
    quick: bool = False
    http_port: int = 18050
    command: str = "fraudray bench"
    steps: tuple[str, ...] = ("drain", "paced", "baseline", "stages", "http", "replicas")
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def quick_config(cls, **overrides: Any) -> BenchConfig:
        base: dict[str, Any] = {
            "count": 5000,
            "rates": (2000,),
            "replicas": (1,),
            "paced_seconds": 5.0,
            "paced_warmup_s": 1.0,
            "baseline_count": 100,
            "stage_count": 2000,
            "http_rps": (100,),
            "http_seconds": 3.0,
            "users": 2000,
            "quick": True,
            "command": "fraudray bench --quick",
        }
        return cls(**(base | overrides))


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        commit = ""
    mem = next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal"))
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "mem_gib": round(int(mem.split()[1]) / 2**20, 1),
        "python": platform.python_version(),
        "commit": commit or "unknown",
        "load1_start": load1(),
    }


class Workload:
    """The seeded workload, re-tagged per run: same amounts, times, merchants and user
    behaviour; ids and users unique to the run so the online store and PostgreSQL see them fresh."""

    def __init__(self, count: int, seed: int, users: int) -> None:
        from ingest.simulator import demo_transactions

        self.base = list(demo_transactions(count, seed=seed, users=users))

    def tagged(self, tag: str, n: int | None = None) -> list[dict[str, Any]]:
        from ingest.simulator import retag

        return list(retag(self.base[:n], tag, ("transaction_id", "user_id", "merchant_id")))


class Topics:
    """Fresh topics for a benchmark, all deleted by ``close``."""

    def __init__(self, settings: Settings) -> None:
        self.admin = AdminClient(settings.kafka.client_config("admin"))
        self.partitions = settings.kafka.partitions
        self.created: list[str] = []

    def new(self, prefix: str) -> str:
        name = f"bench-{prefix}-{uuid.uuid4().hex[:8]}"
        self.admin.create_topics([NewTopic(name, num_partitions=self.partitions, replication_factor=1)])[
            name
        ].result()
        self.created.append(name)
        return name

    def close(self) -> None:
        if self.created:
            for fut in self.admin.delete_topics(self.created, operation_timeout=30).values():
                fut.result()


def with_kafka(settings: Settings, **update: str) -> Settings:
    return settings.model_copy(update={"kafka": settings.kafka.model_copy(update=update)})


def produce(settings: Settings, records: list[dict[str, Any]]) -> float:
    from ingest.producer import FastTransactionProducer

    t0 = time.perf_counter()
    producer = FastTransactionProducer(settings)
    producer.send_many(records)
    producer.flush()
    return time.perf_counter() - t0


def check(settings: Settings, ids: list[str]) -> dict[str, Any]:
    """Exactly-once in PostgreSQL: one transaction row and one decision per workload id."""
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute(
            "SELECT count(*), count(DISTINCT transaction_id) FROM decisions WHERE transaction_id = ANY(%s)",
            (ids,),
        )
        decisions, distinct = cur.fetchone()
        cur.execute("SELECT count(*) FROM transactions WHERE transaction_id = ANY(%s)", (ids,))
        (transactions,) = cur.fetchone()
        cur.execute(
            "SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms), "
            "max(latency_ms) FROM decisions WHERE transaction_id = ANY(%s)",
            (ids,),
        )
        pct, worst = cur.fetchone()
    return {
        "workload": len(ids),
        "decisions": int(decisions),
        "transactions": int(transactions),
        "duplicates": int(decisions - distinct),
        "exactly_once": int(decisions) == int(distinct) == int(transactions) == len(ids),
        "latency_ms": dict(
            zip(("p50", "p95", "p99"), (round(float(p), 1) for p in pct or (0, 0, 0)), strict=True)
        )
        | {"max": round(float(worst or 0), 1)},
    }


def services(settings: Settings) -> dict[str, int]:
    return service_pids(settings.var_dir)


def drain_run(
    settings: Settings, topics: Topics, records: list[dict[str, Any]], actors: int
) -> dict[str, Any]:
    """Produce ``records`` into a fresh topic, then drain it with ``actors`` consumers."""
    from ingest.consumer import ConsumerPool, stage_us_per_tx, throughput

    s = with_kafka(settings, transactions_topic=topics.new("tx"))
    produce_s = produce(s, records)
    procs = services(settings)
    before, t0 = procstat.snapshot(procs), time.time()
    pool = ConsumerPool(s, actors, f"bench-{uuid.uuid4().hex[:8]}")
    warm = warm_point(pool, procs)
    stats = pool.drain(timeout=900)
    end = time.time()
    wall = end - t0
    start = min((x["first_record_at"] for x in stats if x["first_record_at"]), default=t0)
    after = procstat.snapshot(procs)
    usage = procstat.usage(before, after, wall)
    ids = [r["transaction_id"] for r in records]
    checked = check(s, ids)
    del checked["latency_ms"]  # the backlog's event times are simulated: not a latency
    new = sum(x["new_decisions"] for x in stats)
    checked["new_decisions"] = new
    checked["exactly_once"] = checked["exactly_once"] and new == len(ids)
    return {
        "actors": actors,
        "count": len(records),
        "tx_per_s": round(throughput(stats)),
        "wall_s": round(wall, 2),
        "startup_s": round(start - t0, 2),
        "produce_s": round(produce_s, 2),
        "scored": sum(x["scored"] for x in stats),
        "batches": sum(x["batches"] for x in stats),
        "retries": sum(x["retries"] for x in stats),
        "state_cache_hits": sum(x["state_cache_hits"] for x in stats),
        "us_per_tx": {k: round(v) for k, v in stage_us_per_tx(stats).items()},
        "check": checked,
        "processes": usage,
        "steady": steady_cpu(warm, after, end, sum(x["scored"] for x in stats)),
        "load1": load1(),
    }


Warm = tuple[dict[int, procstat.Proc], float, int]


def warm_point(pool: Any, procs: dict[str, int], timeout_s: float = 30.0) -> Warm | None:
    """The moment every consumer actor has polled its first records: a CPU snapshot, the wall
    clock and the transactions scored by then. What the processes use from there on is the
    pipeline's own CPU per transaction; from the pool's start it also holds the actors'
    start-up (their imports, joining the group). None when not every actor got records within
    ``timeout_s`` (more actors than partitions, a backlog drained before the last one joined)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stats = pool.stats()
        if all(st["first_record_at"] for st in stats):
            return procstat.snapshot(procs), time.time(), sum(st["scored"] for st in stats)
        time.sleep(0.1)
    return None


def steady_cpu(warm: Warm | None, after: dict[int, procstat.Proc], end: float, scored: int) -> dict[str, Any]:
    """µs of CPU per transaction per process group from ``warm`` to ``end`` (the transactions
    scored in between), and the cores the box used meanwhile; {} without a warm point."""
    if warm is None or scored <= warm[2]:
        return {}
    snap, t_warm, scored_before = warm
    n = scored - scored_before
    used = procstat.usage(snap, after, end - t_warm)
    per_tx = {g: round(1e6 * u["cpu_s"] / n, 1) for g, u in used.items()}
    return {
        "transactions": n,
        "seconds": round(end - t_warm, 2),
        "cores": round(sum(u["cores"] for u in used.values()), 2),
        "cpu_us_per_tx": per_tx,
        "cpu_us_per_tx_total": round(sum(per_tx.values()), 1),
    }


def latency_by_second(settings: Settings, ids: list[str]) -> list[dict[str, float]]:
    """p50/p99 pipeline latency (ms) of ``ids`` per second of event time (= send time when
    restamped): how a paced run's latency moves from its start to its end."""
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute(
            "SELECT floor(extract(epoch FROM t.event_time)) AS s, count(*),"
            " percentile_cont(ARRAY[0.5, 0.99]) WITHIN GROUP (ORDER BY d.latency_ms)"
            " FROM decisions d JOIN transactions t USING (transaction_id)"
            " WHERE d.transaction_id = ANY(%s) GROUP BY s ORDER BY s",
            (ids,),
        )
        rows = cur.fetchall()
    t0 = rows[0][0] if rows else 0
    return [{"s": int(s - t0), "n": int(n), "p50": round(float(p[0]), 1), "p99": round(float(p[1]), 1)}
            for s, n, p in rows]  # fmt: skip


def paced_run(
    settings: Settings, topics: Topics, records: list[dict[str, Any]], rate: int, actors: int, *,
    warmup: int = 0,
) -> dict[str, Any]:  # fmt: skip
    """Offer ``records`` at ``rate`` tx/s (event time = send time) to a running pool; the
    latency percentiles leave out the first ``warmup`` records (exactly once covers all)."""
    from ingest.consumer import STAGES, ConsumerPool
    from ingest.producer import FastTransactionProducer, send_paced

    s = with_kafka(settings, transactions_topic=topics.new("paced"))
    pool = ConsumerPool(s, actors, f"bench-{uuid.uuid4().hex[:8]}")
    deadline = time.monotonic() + 120
    while sum(len(a) for a in pool.assignments()) < settings.kafka.partitions:
        if time.monotonic() > deadline:
            pool.stop()
            raise TimeoutError("consumer group never got every partition")
        time.sleep(0.5)
    procs = services(settings)
    before, t0 = procstat.snapshot(procs), time.time()
    sent, seconds = send_paced(
        FastTransactionProducer(s), iter(records), rate=rate, count=len(records), restamp=True
    )
    stats = pool.drain(timeout=600)
    usage = procstat.usage(before, procstat.snapshot(procs), time.time() - t0)
    ids = [r["transaction_id"] for r in records[:sent]]
    checked = check(s, ids)
    checked["exactly_once"] = checked["exactly_once"] and sum(x["new_decisions"] for x in stats) == sent
    batches = max(1, sum(x["batches"] for x in stats))
    return {
        "rate": rate,
        "actors": actors,
        "sent": sent,
        # what a batch is made of below capacity: its rows and each stage's milliseconds (poll
        # includes waiting for records, and the idle polls until the drain saw the end)
        "rows_per_batch": round(sum(x["scored"] for x in stats) / batches, 1),
        "state_cache_hits": sum(x["state_cache_hits"] for x in stats),
        "ms_per_batch": {st: round(1e3 * sum(x["stage_s"][st] for x in stats) / batches, 1) for st in STAGES},
        "warmup": min(warmup, sent),
        "sent_per_s": round(sent / max(seconds, 1e-9), 1),
        "latency_ms": check(s, ids[warmup:])["latency_ms"] if warmup < sent else checked["latency_ms"],
        "by_second": latency_by_second(s, ids),
        "check": checked,
        "processes": usage,  # the driver's share is the paced producer
        "load1": load1(),
    }


def pin_replicas(
    settings: Settings, autoscaling: dict[str, dict[str, Any]], replicas: int, timeout_s: float = 300.0
) -> float:
    """Pin each deployment of ``autoscaling`` (name -> its autoscaling config) to ``replicas``
    replicas (min = max, applied in place) and wait until each runs exactly that many;
    returns the seconds it took."""
    from ray import serve

    from serve_deployments import deploy as serving

    serving.configure(
        settings,
        {
            n: {"autoscaling_config": c | {"min_replicas": replicas, "max_replicas": replicas}}
            for n, c in autoscaling.items()
        },
    )
    t0 = time.monotonic()
    while True:
        deployments = serve.status().applications[settings.serve.app_name].deployments
        states = {
            n: {str(getattr(k, "value", k)): v for k, v in deployments[n].replica_states.items()}
            for n in autoscaling
        }
        if all(s.get("RUNNING", 0) == replicas and sum(s.values()) == replicas for s in states.values()):
            return round(time.monotonic() - t0, 1)
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"replicas not at {replicas} after {timeout_s} s: {states}")
        time.sleep(1)


def start_ray(settings: Settings) -> None:
    """A private local Ray without the dashboard: fewer processes competing with the pipeline."""
    import ray

    for attempt in range(5):  # a raylet that cannot start in 30 s on a loaded box: try again
        try:
            ray.init(
                address="local",
                num_cpus=settings.ray.num_cpus,
                namespace=settings.ray.namespace,
                include_dashboard=False,
                object_store_memory=settings.ray.object_store_mb * 1024 * 1024,
                log_to_driver=False,
            )
            return
        except Exception:
            ray.shutdown()
            if attempt == 4:
                raise


def deploy(settings: Settings, api_key: str, timeout_s: float = 600.0, attempts: int = 3) -> str:
    """``serving.deploy``, patient with a loaded box: its 60 s wait for the app is not enough
    when the replicas alone take that long to start (the deploy goes on after the timeout),
    and Serve's proxy can die starting up (then Serve is shut down and started again)."""
    from ray import serve
    from ray.exceptions import RayError

    from ingest.simulator.frames import simulated_frame
    from serve_deployments import deploy as serving
    from training import quick

    quick.ensure_models(settings, simulated_frame)
    for attempt in range(attempts):
        try:
            return serving.deploy(settings, api_keys=[api_key])
        except TimeoutError:
            break
        except RayError:
            if attempt == attempts - 1:
                raise
            serve.shutdown()
    deadline = time.monotonic() + timeout_s
    while (status := serve.status().applications[settings.serve.app_name].status) != "RUNNING":
        if time.monotonic() > deadline or status == "DEPLOY_FAILED":
            raise TimeoutError(f"Serve app is {status} after {timeout_s} s")
        time.sleep(1)
    return f"http://{settings.serve.http_host}:{settings.serve.http_port}"


@dataclass(frozen=True)
class RunningApp:
    """A fraud app already running (``fraudray serve``, ``make run``) on the Ray cluster that
    the settings name or this process is connected to: the bench uses it instead of starting a
    private Ray and deploying one (saving ~1 minute of start-up), and leaves it running."""

    url: str
    api_key: str


def attach(settings: Settings, app: RunningApp) -> None:
    """Connect to the app's Ray cluster (if not connected yet) and check the app is RUNNING."""
    import ray
    from ray import serve

    from core import ray_client
    from core.errors import ModelNotReady

    if not ray.is_initialized():
        address = ray_client.head_address(settings)
        host, _, port = address.rpartition(":")
        if port.isdigit():  # host:port of a GCS (not "auto" or ray://): fail fast when nobody listens
            try:
                socket.create_connection((host, int(port)), timeout=3).close()
            except OSError:
                raise ModelNotReady(
                    f"no Ray cluster answers at {address} (start the app with `make run` or"
                    " `fraudray serve`, or set RAY_ADDRESS)"
                ) from None
        ray_client.init(settings, log_to_driver=False)
    status = serve.status().applications.get(settings.serve.app_name)
    if status is None or status.status != "RUNNING":
        state = "not deployed" if status is None else status.status
        raise ModelNotReady(f"Serve app {settings.serve.app_name!r} at {app.url} is {state}")


@dataclass
class _Ctx:
    settings: Settings
    topics: Topics
    workload: Workload
    config: BenchConfig
    run_id: str
    url: str = ""
    api_key: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    ids: list[str] = field(default_factory=list)
    streamed: list[dict[str, Any]] = field(default_factory=list)  # the last drain's workload

    def records(self, tag: str, n: int) -> list[dict[str, Any]]:
        out = self.workload.tagged(f"b{self.run_id}{tag}", n)
        self.ids += [r["transaction_id"] for r in out]
        return out


def _steps(ctx: _Ctx, report: dict[str, Any], log: Callable[[str], None]) -> None:
    config, settings = ctx.config, ctx.settings
    if "drain" in config.steps:
        report["drain"] = []
        for n in config.actors:
            ctx.streamed = ctx.records(f"d{n}", config.count)
            row = drain_run(settings, ctx.topics, ctx.streamed, n)
            report["drain"].append(row)
            log(f"drain {n} actor(s): {row['tx_per_s']:,} tx/s, exactly once {row['check']['exactly_once']}")
            log(f"  µs/tx {row['us_per_tx']} (load {row['load1']})")
    if "paced" in config.steps:
        report["paced"] = []
        for rate in config.rates:
            warmup = int(rate * config.paced_warmup_s)
            records = ctx.records(f"p{rate}", warmup + int(rate * config.paced_seconds))
            row = paced_run(settings, ctx.topics, records, rate, config.paced_actors, warmup=warmup)
            report["paced"].append(row)
            log(f"offered {rate:,} tx/s (sent {row['sent_per_s']:,.0f}): latency ms {row['latency_ms']}")
    if "baseline" in config.steps:
        records = ctx.records("base", config.baseline_count)
        s = with_kafka(settings, transactions_topic=ctx.topics.new("base"))
        produce(s, records)
        b = baseline.run(s, ctx.url, ctx.api_key, len(records)) | {"load1": load1()}
        b["check"] = check(s, [r["transaction_id"] for r in records])
        report["baseline"] = b
        log(f"baseline: {b['tx_per_s']:,} tx/s, µs/tx {b['us_per_tx']} (load {b['load1']})")
    if "stages" in config.steps:
        records = ctx.workload.tagged(f"b{ctx.run_id}st", config.stage_count)
        st = stages.measure(settings, records, f"bench{ctx.run_id}", quick=config.quick)
        report["stages"] = st | {"load1": load1()}
        log(f"stages alone µs/tx: {st['us_per_tx']} -> limit {st['limit_tx_per_s']:,} tx/s")
    if "http" in config.steps:
        _http_step(ctx, report, log)
    if "replicas" in config.steps:  # last: the other steps run on the app's own autoscaling
        _replicas_step(ctx, report, log)


def _http_step(ctx: _Ctx, report: dict[str, Any], log: Callable[[str], None]) -> None:
    """Each endpoint (``GET /predict``, ``POST /score``) at each offered rate until two rates
    in a row saturate."""
    import asyncio

    config = ctx.config
    try:
        from benchmarks import http_load
    except ImportError:  # the load generator lives in its own module; a tree without it skips
        log("benchmarks/http_load.py is missing: HTTP step skipped")
        return
    # Users the stream has decided, as /predict's callers would ask about (their latest
    # transaction's decision is stored: `source: stream`), and those users' transactions for
    # /score; without a drain, transactions written straight into the store (every /predict
    # answer scored). Both are dropped with the run's population.
    records = list({r["user_id"]: r for r in ctx.streamed}.values())[:1000]
    records = records or http_load.seed_records(200, f"b{ctx.run_id}http")
    requests = {
        "predict": http_load.predict_requests([str(r["user_id"]) for r in records]),
        "score": http_load.score_requests(records),
    }
    report["http"] = []
    for endpoint in config.http_endpoints:
        saturated = 0
        for rps in config.http_rps:
            row = asyncio.run(
                http_load.open_loop(ctx.url, ctx.api_key, requests[endpoint], rps, config.http_seconds)
            )
            report["http"].append(row | {"load1": load1()})
            log(f"{row['endpoint']} at {rps} rps: {row}")
            saturated = saturated + 1 if row["rps_done"] < rps / 2 else 0
            if saturated == 2:  # two rates in a row: higher ones would only queue longer
                log(f"{row['endpoint']} saturated at two offered rates in a row: higher rates skipped")
                break


def _replicas_step(ctx: _Ctx, report: dict[str, Any], log: Callable[[str], None]) -> None:
    """A backlog drain per replica count, the models pinned there; the app's autoscaling after."""
    import ray

    from ingest.consumer import ACTOR_CPUS
    from serve_deployments import deploy as serving

    config, settings = ctx.config, ctx.settings
    actors = config.replica_actors
    live = serving.autoscaling(settings)
    report["replicas"] = []
    try:
        for n in config.replicas:
            ready_s = pin_replicas(settings, live, n)
            free = ray.available_resources().get("CPU", 0.0)
            if free + 1e-9 < actors * ACTOR_CPUS:  # they would wait for CPUs, and the drain forever
                log(f"{n} replica(s) per model leave {free:.2f} CPUs: {actors} actors do not fit, skipped")
                report["replicas"].append(
                    {"replicas": n, "ready_s": ready_s, "skipped": f"{free:.2f} CPUs free"}
                )
                continue
            row = drain_run(settings, ctx.topics, ctx.records(f"r{n}", config.count), actors)
            report["replicas"].append({"replicas": n, "ready_s": ready_s} | row)
            log(f"drain, {actors} actors, {n} replica(s) per model: {row['tx_per_s']:,} tx/s")
    finally:  # the app's autoscaling as found (an attached app keeps running)
        serving.configure(settings, {n: {"autoscaling_config": c} for n, c in live.items()})


def run(
    base: Settings, config: BenchConfig, log: Callable[[str], None] = print, *, app: RunningApp | None = None
) -> dict[str, Any]:
    """The whole benchmark on a private local Ray, or on ``app`` where it runs; returns the
    report (a JSON-able dict)."""
    import ray

    report: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "config": asdict(config),
    }
    log(f"load average {report['machine']['load1_start']} on {report['machine']['cpus']} cores")
    t_all = time.monotonic()
    report["vacuum_s"] = round(stages.vacuum(base), 1)
    was_connected = ray.is_initialized()
    if app is not None:  # before anything is created: no app, no topics to clean up
        attach(base, app)
    topics = Topics(base)
    settings = base.model_copy(
        update={"serve": base.serve.model_copy(update={"http_port": config.http_port})}
    )
    settings = with_kafka(
        settings,
        labels_topic=topics.new("labels"),
        decisions_topic=topics.new("decisions"),
        alerts_topic=topics.new("alerts"),
        dlq_topic=topics.new("dlq"),
    )
    paced = max((int(r * (config.paced_warmup_s + config.paced_seconds)) for r in config.rates), default=0)
    size = max(config.count, config.baseline_count, config.stage_count, paced)
    ctx = _Ctx(settings, topics, Workload(size, config.seed, config.users), config, uuid.uuid4().hex[:6])
    try:
        t0 = time.monotonic()
        if app is None:
            start_ray(settings)
            ctx.url = deploy(settings, ctx.api_key)
        else:
            ctx.url, ctx.api_key = app.url, app.api_key
        report["startup_s"] = round(time.monotonic() - t0, 1)
        report["attached"] = app is not None
        log(f"Ray + Serve {'found' if app else 'up'} in {report['startup_s']} s ({ctx.url})")
        _steps(ctx, report, log)
    finally:
        try:
            if ctx.ids:
                stages.delete_rows(settings, ctx.ids)
            OnlineStore(settings.redis.url.get_secret_value()).drop_population(f"b{ctx.run_id}")
            topics.close()
        finally:
            if app is None:  # the app this run deployed goes; on its private Ray, with the Ray
                ray_client.shutdown(delete_serve_apps=was_connected)
            elif not was_connected:  # an attached run leaves the app and its Ray as found
                ray.shutdown()
    best = max((r["tx_per_s"] for r in report.get("drain", [])), default=0)
    if report.get("baseline", {}).get("tx_per_s"):
        report["ratio_vs_baseline"] = round(best / report["baseline"]["tx_per_s"], 1)
    if report.get("stages"):
        report["fraction_of_limit"] = round(best / report["stages"]["limit_tx_per_s"], 3)
    report["machine"]["load1_end"] = load1()
    report["seconds"] = round(time.monotonic() - t_all, 1)
    return report


def save(report: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--count", type=int)
    ap.add_argument("--actors", type=int, nargs="+")
    ap.add_argument("--report", type=Path, default=ROOT / "var/bench/e2e.json")
    ap.add_argument("--docs", type=Path, default=ROOT / "docs/benchmarks.md")
    args = ap.parse_args(argv)
    overrides: dict[str, Any] = {"command": "python -m benchmarks.e2e" + (" --quick" if args.quick else "")}
    if args.count:
        overrides["count"] = args.count
    if args.actors:
        overrides["actors"] = tuple(args.actors)
    config = BenchConfig.quick_config(**overrides) if args.quick else BenchConfig(**overrides)
    report = run(get_settings(), config)
    save(report, args.report)
    from benchmarks.report import write_docs

    write_docs(report, args.docs, args.docs.parent / "img" / "benchmarks-scaling.png")
    print(f"report {args.report}, docs {args.docs} ({report['seconds']} s)")


if __name__ == "__main__":
    main()
