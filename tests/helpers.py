"""Helpers shared by integration tests (fixtures live in conftest.py)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import psycopg2

from cluster.settings import Settings
from ingest.producer import TransactionProducer
from ingest.simulator import demo_transactions

API_KEY = "test-key-for-the-suite"


def with_topics(settings: Settings, **topics: str) -> Settings:
    """``settings`` with some Kafka topics replaced, e.g. ``transactions_topic=…``."""
    kafka = settings.kafka.model_copy(update=topics)
    return settings.model_copy(update={"kafka": kafka})


def produce(settings: Settings, n: int, users: int = 200) -> list[dict[str, Any]]:
    """``n`` fresh demo transactions (random seed, so ids never repeat across runs)."""
    records = list(demo_transactions(n, seed=random.randrange(2**31), users=users))
    producer = TransactionProducer(settings)
    producer.send_many(records)
    producer.flush()
    return records


def count_rows(dsn: str, table: str, tx_ids: Sequence[str]) -> int:
    assert table in {"decisions", "transactions"}
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE transaction_id = ANY(%s)", (list(tx_ids),))
        (count,) = cur.fetchone()
    conn.close()
    return int(count)
