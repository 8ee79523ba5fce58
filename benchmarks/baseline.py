"""The original pipeline's design, rebuilt honestly as the benchmark's baseline.

One message at a time, every step a round trip: poll 1 record → decode it → query that
user's last 24 h in PostgreSQL (the original computed features per message with SQL) →
``POST /score`` of the one transaction to the Serve app → single-row INSERTs of the
transaction and its decision → database commit → synchronous Kafka offset commit. Same
services, same workload records, same Serve app as the end-to-end run; only the shape differs.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import httpx
import psycopg2
from confluent_kafka import Consumer

from core.settings import Settings
from features.validation import validate
from ingest.serde import TransactionSerde, event_time_ms

STEPS = ("poll", "decode", "features", "score", "insert", "commit")

_HISTORY_SQL = """
SELECT count(*), coalesce(avg(amount), 0), coalesce(max(amount), 0), count(DISTINCT country)
FROM transactions WHERE user_id = %s AND event_time > %s - interval '24 hours' AND event_time <= %s
"""
_TX_SQL = """
INSERT INTO transactions (transaction_id, user_id, merchant_id, amount, currency, event_time, country,
  device_id, channel, merchant_category, lat, lon, ip, kafka_partition, kafka_offset)
VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""
_DECISION_SQL = """
INSERT INTO decisions (transaction_id, user_id, scores, ensemble_score, is_fraud, model_version, latency_ms)
VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING
"""
_FIELDS = (
    "transaction_id",
    "user_id",
    "merchant_id",
    "amount",
    "currency",
    "country",
    "device_id",
    "channel",
    "merchant_category",
    "lat",
    "lon",
    "ip",
)


def _json(rec: dict[str, Any]) -> dict[str, Any]:
    body = {k: rec.get(k) for k in _FIELDS}
    body["event_time"] = rec["event_time"].isoformat()
    return {k: v for k, v in body.items() if v is not None}


def run(
    settings: Settings, url: str, api_key: str, expected: int, *, timeout_s: float = 120.0
) -> dict[str, Any]:
    """Consume ``expected`` records of the settings' transactions topic the per-message way.

    Returns tx/s (first record → last commit), the mean µs/tx of each step and counts; stops
    early (``complete`` false) after ``timeout_s``.
    """
    consumer = Consumer(
        settings.kafka.client_config("consumer", **{"group.id": f"bench-base-{uuid.uuid4().hex[:8]}"})
    )
    consumer.subscribe([settings.kafka.transactions_topic])
    serde = TransactionSerde()
    conn = psycopg2.connect(settings.postgres.dsn.get_secret_value())
    client = httpx.Client(base_url=url, headers={"X-API-Key": api_key}, timeout=30)
    spent = dict.fromkeys(STEPS, 0.0)
    done = errors = 0
    first = last = 0.0
    deadline = time.monotonic() + timeout_s
    try:
        while done < expected and time.monotonic() < deadline:
            t = time.perf_counter()
            msg = consumer.poll(1.0)
            if msg is None or msg.error() is not None:
                continue
            first = first or time.time()
            t1 = time.perf_counter()
            rec = serde.decode(msg.value())
            if validate(rec, int(time.time() * 1000)) is not None:
                errors += 1
            t2 = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute(_HISTORY_SQL, (rec["user_id"], rec["event_time"], rec["event_time"]))
                cur.fetchone()
            t3 = time.perf_counter()
            resp = client.post("/score", json=_json(rec))
            resp.raise_for_status()
            scored = resp.json()[0]
            t4 = time.perf_counter()
            with conn.cursor() as cur:
                cur.execute(
                    _TX_SQL,
                    (
                        *(rec.get(k) for k in _FIELDS[:5]),
                        rec["event_time"],
                        *(rec.get(k) for k in _FIELDS[5:]),
                        msg.partition(),
                        msg.offset(),
                    ),
                )
                cur.execute(
                    _DECISION_SQL,
                    (
                        rec["transaction_id"],
                        rec["user_id"],
                        json.dumps(scored["model_scores"]),
                        scored["anomaly_score"],
                        scored["is_fraud"],
                        scored["model_version"],
                        time.time() * 1000 - event_time_ms(rec),
                    ),
                )
            conn.commit()
            t5 = time.perf_counter()
            consumer.commit(message=msg, asynchronous=False)
            t6 = time.perf_counter()
            for step, dt in zip(STEPS, (t1 - t, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5), strict=True):
                spent[step] += dt
            done += 1
            last = time.time()
    finally:
        client.close()
        conn.close()
        consumer.close()
    seconds = max(last - first, 1e-9)
    return {
        "count": done,
        "complete": done == expected,
        "invalid": errors,
        "seconds": round(seconds, 3),
        "tx_per_s": round(done / seconds, 1) if done else 0.0,
        "us_per_tx": {k: round(1e6 * v / max(done, 1)) for k, v in spent.items()},
    }
