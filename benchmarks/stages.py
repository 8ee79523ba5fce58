"""Stage limits: the µs/tx of each pipeline stage measured alone on the workload's records.

decode (Avro + validation), features (``OnlineStore.update_and_compute`` into a private key
namespace, deleted afterwards), each model and the Ensemble through their Serve handles at
batch 1/100/1000 and the consumer's batch size, and the sinks (PostgreSQL COPY+upsert of
transactions and decisions, Kafka decisions), each in the consumer's batches. The sum over the
stages the consumer runs serially (decode + features + Ensemble at the consumer's batch size +
sinks) is the box's estimated limit for one consumer; the end-to-end rate is reported as a
fraction of it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import redis

from core import db
from core.contracts import DecisionRow, TxRow
from core.settings import Settings
from features.online import OnlineStore
from features.validation import validate
from ingest.producer import producer_config
from ingest.serde import TransactionSerde
from ingest.sinks import KafkaSink, PostgresSink

MODEL_BATCHES = (1, 100, 1000, 10_000)  # and the consumer's batch size


def _timed(fn: Callable[[], Any], rows: int, min_s: float, max_reps: int) -> float:
    """µs per row of ``fn`` (one warm-up call, then repeated for ``min_s`` or ``max_reps``)."""
    fn()
    reps, t0 = 0, time.perf_counter()
    while reps < max_reps and (reps == 0 or time.perf_counter() - t0 < min_s):
        fn()
        reps += 1
    return 1e6 * (time.perf_counter() - t0) / (reps * rows)


def _chunks(seq: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def decode_us(records: list[dict[str, Any]], batch: int) -> float:
    serde = TransactionSerde()
    values = serde.encode_many(records)
    now_ms = int(time.time() * 1000)
    t0 = time.perf_counter()
    for chunk in _chunks(values, batch):
        good, _bad = serde.decode_many(chunk)
        for _i, rec in good:
            validate(rec, now_ms)
    return 1e6 * (time.perf_counter() - t0) / len(records)


def features_us(
    settings: Settings, records: list[dict[str, Any]], namespace: str
) -> tuple[float, np.ndarray]:
    """µs/tx of the online store and the feature matrix (state before each record)."""
    url = settings.redis.url.get_secret_value()
    store = OnlineStore(url, namespace=namespace)
    parts = []
    t0 = time.perf_counter()
    for chunk in _chunks(records, settings.consumer.batch_size):
        parts.append(store.update_and_compute(list(chunk)))
    us = 1e6 * (time.perf_counter() - t0) / len(records)
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    for i in range(0, len(keys), 1000):
        client.delete(*keys[i : i + 1000])
    client.close()
    return us, np.concatenate(parts)


def models_us(settings: Settings, matrix: np.ndarray, *, quick: bool) -> dict[str, dict[str, float]]:
    """µs/tx of each member deployment and of the Ensemble per batch size (Serve handle calls)."""
    from ray import serve

    from core.families import DEPLOYMENT_NAMES, SCORER_DEPLOYMENT

    app = settings.serve.app_name
    live = set(serve.status().applications[app].deployments)
    names = [n for n in DEPLOYMENT_NAMES.values() if n in live] + [SCORER_DEPLOYMENT]
    out: dict[str, dict[str, float]] = {}
    for name in names:
        handle = serve.get_deployment_handle(name, app_name=app)
        out[name] = {}
        for b in sorted({*MODEL_BATCHES, settings.consumer.batch_size}):
            x = np.resize(matrix, (b, matrix.shape[1])).astype(np.float32)

            def call(h: Any = handle, x: np.ndarray = x) -> Any:
                return h.score.remote(x).result()

            us = _timed(call, b, min_s=0.3 if quick else 1.0, max_reps=20 if quick else 200)
            out[name][str(b)] = round(us, 1)
    return out


def sinks_us(settings: Settings, records: list[dict[str, Any]], scores: np.ndarray) -> dict[str, float]:
    """µs/tx of the PostgreSQL sink (rows deleted afterwards) and of the Kafka decisions sink."""
    dsn = settings.postgres.dsn.get_secret_value()
    tx_rows = [
        TxRow(
            r["transaction_id"],
            r["user_id"],
            r["merchant_id"],
            r["amount"],
            r["currency"],
            r["event_time"],
            r["country"],
            r.get("device_id"),
            r.get("channel"),
            r.get("merchant_category"),
            r.get("lat"),
            r.get("lon"),
            r.get("ip"),
            0,
            i,
        )
        for i, r in enumerate(records)
    ]
    decision_rows = [
        DecisionRow(
            r["transaction_id"],
            r["user_id"],
            json.dumps({"if": float(s)}),
            float(s),
            bool(s > 0.5),
            "bench",
            latency_ms=1.0,
            event_latency_ms=None,
        )
        for r, s in zip(records, scores, strict=True)
    ]
    batch = settings.consumer.batch_size
    sink = PostgresSink(dsn)
    sink.write([], [])  # connected, staging tables made: as in a running consumer
    t0 = time.perf_counter()
    for tx, dec in zip(_chunks(tx_rows, batch), _chunks(decision_rows, batch), strict=True):
        sink.write(tx, dec)
    pg = 1e6 * (time.perf_counter() - t0) / len(records)
    sink.close()
    delete_rows(settings, [r["transaction_id"] for r in records])
    kafka = KafkaSink(producer_config(settings, **{"linger.ms": 5}))
    topic = settings.kafka.decisions_topic

    def send(rows: Sequence[Any]) -> None:
        for row in rows:
            payload = {
                "transaction_id": row[0],
                "user_id": row[1],
                "score": row[3],
                "is_fraud": row[4],
                "model_version": row[5],
                "scores": {"if": row[3]},
            }
            kafka.send_json(topic, row[1], payload)
        kafka.flush()

    send(decision_rows[:1])  # connected, the topic's metadata known: as in a running consumer
    t0 = time.perf_counter()
    for chunk in _chunks(decision_rows, batch):
        send(chunk)
    return {"sink_pg": round(pg, 1), "sink_kafka": round(1e6 * (time.perf_counter() - t0) / len(records), 1)}


def delete_rows(settings: Settings, ids: list[str]) -> None:
    """Remove benchmark rows (decisions first: they reference transactions)."""
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute("DELETE FROM decisions WHERE transaction_id = ANY(%s)", (ids,))
        cur.execute("DELETE FROM transactions WHERE transaction_id = ANY(%s)", (ids,))


def vacuum(settings: Settings) -> float:
    """VACUUM (ANALYZE) the pipeline's tables; returns the seconds it took. Every run deletes
    its rows at the end, so the next one found ~100,000 dead tuples per table and autovacuum
    cleaned them in the middle of a measured step (docs/benchmarks.md): done first instead."""
    t0 = time.perf_counter()
    conn = db.connect(settings.postgres.dsn.get_secret_value())
    try:
        conn.autocommit = True  # VACUUM cannot run inside a transaction block
        with conn.cursor() as cur:
            cur.execute("VACUUM (ANALYZE) transactions, decisions, labels")
    finally:
        conn.close()
    return time.perf_counter() - t0


def measure(
    settings: Settings, records: list[dict[str, Any]], namespace: str, *, quick: bool
) -> dict[str, Any]:
    """Every stage alone; ``limit_tx_per_s`` = 1e6 / the serial sum of one consumer's stages."""
    from core.families import SCORER_DEPLOYMENT

    decode = decode_us(records, settings.consumer.batch_size)
    feats, matrix = features_us(settings, records, namespace)
    models = models_us(settings, matrix, quick=quick)
    sinks = sinks_us(settings, records, np.resize(matrix[:, 0], len(records)))
    serial = {
        "decode": round(decode, 1),
        "features": round(feats, 1),
        "score": models[SCORER_DEPLOYMENT][str(settings.consumer.batch_size)],
        **sinks,
    }
    total = sum(serial.values())
    return {
        "records": len(records),
        "us_per_tx": serial,
        "models_us_per_tx": models,
        "sum_us_per_tx": round(total, 1),
        "limit_tx_per_s": round(1e6 / total),
        "slowest": max(serial, key=lambda k: serial[k]),
    }
