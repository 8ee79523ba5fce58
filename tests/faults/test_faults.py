"""One fault per test while 50,000 seeded transactions stream at 4,000 tx/s through two
consumer actors (one per Ray node): afterwards every transaction has exactly one decision row,
no row is duplicated, the group has committed every offset (``drain``), and every partition was
committing again within ``RECOVERY_BOUND_S`` of the fault. The order matters only for the last
test, which kills the second Ray node for good."""

from __future__ import annotations

import io
import math
import os
import signal
import struct
import threading
import time
import uuid
from typing import Any

import fastavro
import psycopg2
import pytest
import ray
from confluent_kafka import Consumer

from features.online import OnlineStore
from features.rebuild import RebuildStats, rebuild
from ingest.serde import TransactionSerde
from tests.faults.conftest import (
    N_TX,
    FaultEnv,
    SpreadPool,
    assert_exactly_once,
    kill_pids,
    unless_left_out,
    wait_for,
)

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow, unless_left_out]


def test_redis_restart_with_state_lost_then_rebuilt_from_postgres(fault_env: FaultEnv) -> None:
    """Redis restarts with an empty data directory. The consumers retry until it answers; the
    documented recovery (features/rebuild.py) replays PostgreSQL into it meanwhile."""
    stack = fault_env.stack
    box: dict[str, Any] = {}

    def inject(_pool: SpreadPool) -> dict[str, Any]:
        downtime = stack.restart("redis", wipe=True)

        def run() -> None:
            try:
                box["stats"] = rebuild(stack.settings)
            except BaseException as exc:
                box["error"] = exc

        box["thread"] = threading.Thread(target=run, daemon=True)
        box["thread"].start()
        return {"restart_s": round(downtime, 1)}

    result, s, records = fault_env.run("redis restart (state lost)", inject, seed=101)
    box["thread"].join(timeout=300)
    assert "error" not in box, box.get("error")
    stats: RebuildStats = box["stats"]
    result.extra["rebuild_s"] = round(stats.seconds, 1)
    result.extra["rebuilt_tx"] = stats.transactions
    assert_exactly_once(result)
    # The rebuilt store equals the store that never failed: per user, every transaction
    # PostgreSQL holds is in the user's event set exactly once.
    store = OnlineStore(s.redis.url.get_secret_value())
    users = sorted({r["user_id"] for r in records})[:200]
    with psycopg2.connect(s.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT user_id, array_agg(transaction_id) FROM transactions"
            " WHERE user_id = ANY(%s) GROUP BY user_id",
            (users,),
        )
        in_pg = {u: set(ids) for u, ids in cur.fetchall()}
    conn.close()
    states = {u: store.user_state(u) for u in users}
    events = {u: st.txid if st else [] for u, st in states.items()}
    assert all(len(set(ids)) == len(ids) for ids in events.values())
    # a state keeps a user's latest 256 events: those users are compared by count
    differ = {
        u: {"missing": sorted(ids - set(events[u]))[:5], "extra": sorted(set(events[u]) - ids)[:5],
            "pg": len(ids), "store": len(events[u])}
        for u, ids in in_pg.items()
        if (set(events[u]) != ids if len(ids) <= 256 else len(events[u]) != 256)
    }  # fmt: skip
    sample = dict(list(differ.items())[:5])
    assert not differ, f"{len(differ)} users' events differ from PostgreSQL, e.g. {sample}"
    # the batches in flight at the restart went into the store again once PostgreSQL had them
    assert result.extra["store_reapplied"] >= 1
    assert all(store.read_latest(u) is not None for u in list(in_pg)[:20])


def test_kill_9_a_consumer_actor(fault_env: FaultEnv) -> None:
    def inject(pool: SpreadPool) -> dict[str, Any]:
        pid = ray.get(pool.actors[0].__ray_call__.remote(lambda _self: os.getpid()))
        os.kill(pid, signal.SIGKILL)  # Ray restarts the actor and retries its run()
        return {"killed_pid": pid}

    result, _s, _r = fault_env.run("kill -9 consumer actor", inject, seed=102)
    assert_exactly_once(result)


def test_kill_a_serve_replica(fault_env: FaultEnv) -> None:
    from core.families import SCORER_DEPLOYMENT

    def inject(_pool: SpreadPool) -> dict[str, Any]:
        # Ray names a replica's process after it: ray::ServeReplica:<app>:<deployment>.
        title = f"ray::ServeReplica:{fault_env.stack.settings.serve.app_name}:{SCORER_DEPLOYMENT}"
        pids = fault_env.ray.titled_pids(title)
        assert pids, f"no live process titled {title}"
        os.kill(pids[0], signal.SIGKILL)  # the Serve controller starts a new replica
        return {"killed": title}

    result, _s, _r = fault_env.run("kill Serve replica (Ensemble)", inject, seed=103)
    assert_exactly_once(result)


def test_restart_postgres(fault_env: FaultEnv) -> None:
    def inject(_pool: SpreadPool) -> dict[str, Any]:
        return {"restart_s": round(fault_env.stack.restart("postgres"), 1)}

    result, _s, _r = fault_env.run("restart PostgreSQL", inject, seed=104)
    assert_exactly_once(result)


def test_restart_kafka_broker(fault_env: FaultEnv) -> None:
    def inject(_pool: SpreadPool) -> dict[str, Any]:
        return {"restart_s": round(fault_env.stack.restart("kafka"), 1)}

    result, _s, _r = fault_env.run("restart Kafka broker", inject, seed=105)
    assert_exactly_once(result)


def _hostile_values(n: int) -> list[bytes]:
    """Undecodable and invalid records of five kinds."""
    serde = TransactionSerde()
    template = {
        "transaction_id": "",
        "user_id": "u-hostile",
        "merchant_id": "m-1",
        "amount": 10.0,
        "currency": "EUR",
        "event_time": int(time.time() * 1000),
        "country": "DE",
    }
    out = []
    for i in range(n):
        rec = dict(template, transaction_id=f"hostile-{uuid.uuid4().hex}")
        kind = i % 5
        if kind == 0:
            out.append(b"\x00\x00" + bytes([i % 256]))
        elif kind == 1:
            buf = io.BytesIO()
            buf.write(struct.pack(">bI", 0, 999))
            fastavro.schemaless_writer(buf, serde.schema, rec)
            out.append(buf.getvalue())
        elif kind == 2:
            out.append(serde.encode(dict(rec, amount=-5.0)))
        elif kind == 3:
            out.append(serde.encode(dict(rec, amount=math.nan)))
        else:
            out.append(serde.encode(dict(rec, country="XX")))
    return out


def test_fill_the_dlq(fault_env: FaultEnv) -> None:
    """10,000 bad records (17 % of the stream) in bursts through it: all dead-lettered with a
    reason, every good one decided, and the good ones never wait."""
    n_bad = 10_000
    result, s, _r = fault_env.run(
        "fill the DLQ (10k bad records)", lambda _p: None, seed=106, bad=_hostile_values(n_bad)
    )
    assert_exactly_once(result)
    reader = Consumer(
        {
            "bootstrap.servers": s.kafka.bootstrap,
            "group.id": f"dlq-{uuid.uuid4().hex[:8]}",
            "auto.offset.reset": "earliest",
        }
    )
    reader.subscribe([s.kafka.dlq_topic])
    sources: set[tuple[Any, Any]] = set()
    reasons: set[str] = set()
    deadline = time.monotonic() + 60
    while len(sources) < n_bad and time.monotonic() < deadline:
        for m in reader.consume(1000, 1.0):
            if m.error() is None:
                h: dict[str, Any] = dict(m.headers() or [])
                sources.add((h["source.partition"], h["source.offset"]))
                reasons.add(h["error.message"].decode()[:20])
    reader.close()
    assert len(sources) == n_bad, f"{len(sources)} distinct dead letters, expected {n_bad}"
    assert all(r for r in reasons) and len(reasons) >= 4, reasons
    result.extra["dlq_distinct"] = len(sources)


def test_kill_a_whole_ray_worker_node(fault_env: FaultEnv) -> None:
    """SIGKILL of the second node's raylet and every process under it (its consumer actor and
    any Serve replicas there): Ray restarts the actors on the head."""
    pool_nodes = [fault_env.ray.head_node_id, fault_env.ray.node_b_id]

    def inject(pool: SpreadPool) -> dict[str, Any]:
        on_b = ray.get(
            pool.actors[1].__ray_call__.remote(lambda _self: ray.get_runtime_context().get_node_id())
        )
        assert on_b == fault_env.ray.node_b_id, "the second consumer should run on the second node"
        pids = fault_env.ray.node_b_pids()
        assert len(pids) >= 2, "raylet of the second node not found"
        kill_pids(pids)
        wait_for(
            lambda: not any(n["Alive"] for n in ray.nodes() if n["NodeID"] == fault_env.ray.node_b_id),
            30,
            "the head sees the node dead",
        )
        return {"killed_processes": len(pids)}

    result, _s, _r = fault_env.run("kill Ray worker node", inject, seed=107, nodes=pool_nodes)
    assert_exactly_once(result)
    assert result.transactions == N_TX
