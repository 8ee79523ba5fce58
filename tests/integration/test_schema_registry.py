"""The Schema Registry path on real Kafka and the local stack's real Schema Registry (Apicurio
2.4.2 through its Confluent API, built by cluster/setup.sh): the producer registers under
``<topic>-value``, the consumer's decode path (ScoringLoop, with Redis and PostgreSQL) reads
what it wrote, an incompatible schema is refused (BACKWARD), a newer compatible writer schema is
read by resolution, and a record whose schema id the registry does not know goes to the DLQ
with its reason in the headers. Only the scorer is a stub (no Serve here)."""

from __future__ import annotations

import asyncio
import io
import json
import struct
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest
from confluent_kafka import Consumer

from cluster import stack
from core.settings import Settings
from ingest.consumer import ScoringLoop
from ingest.producer import TransactionProducer
from ingest.serde import (
    TRANSACTION_SCHEMA,
    ConfluentSchemaRegistry,
    IncompatibleSchema,
    TransactionSerde,
)
from tests.helpers import count_rows, fresh_transactions, with_topics

pytestmark = pytest.mark.integration


class _StubScorer:
    """Stands in for the Serve Ensemble handle: ``score.remote(matrix)`` answers every row 0.1."""

    class _Score:
        async def _reply(self, n: int) -> dict[str, Any]:
            return {"scores": np.full(n, 0.1), "is_fraud": np.zeros(n, dtype=bool), "model_version": "stub",
                    "model_scores": {"stub": np.full(n, 0.1)}, "threshold": 0.5,
                    "model_versions": {"stub": "stub"}}  # fmt: skip

        def remote(self, matrix: np.ndarray) -> Any:
            return self._reply(len(matrix))

    score = _Score()


@pytest.fixture
def sr(local_stack: Settings, new_topic: Callable[..., str]) -> Settings:
    """Settings on fresh topics, pointed at the local stack's Schema Registry."""
    stack.up(local_stack, ["schema-registry"])
    registry = stack.services(local_stack)["schema-registry"]
    assert isinstance(registry, stack.SchemaRegistry)
    s = with_topics(local_stack, transactions_topic=new_topic("sr-tx", partitions=2),
                    labels_topic=new_topic("sr-labels", partitions=1),
                    dlq_topic=new_topic("sr-dlq", partitions=1),
                    decisions_topic=new_topic("sr-decisions", partitions=1),
                    alerts_topic=new_topic("sr-alerts", partitions=1))  # fmt: skip
    return with_topics(s, schema_registry_url=registry.url)


def _registry(s: Settings, schema_file: Path = TRANSACTION_SCHEMA) -> ConfluentSchemaRegistry:
    k = s.kafka
    return ConfluentSchemaRegistry(k.schema_registry_config(), k.schema_registry_compatibility, schema_file)


def _consume_all(s: Settings, expected: int, timeout: float = 90.0) -> ScoringLoop:
    loop = ScoringLoop(s, _StubScorer(), group_id=f"sr-{uuid.uuid4().hex[:8]}")
    deadline = time.monotonic() + timeout

    async def run() -> None:
        while loop.stats.polled < expected:
            assert time.monotonic() < deadline, f"polled {loop.stats.polled} of {expected}"
            msgs = await loop.poll()
            if msgs:
                await loop.handle(msgs)

    asyncio.run(run())
    return loop


def _dlq(s: Settings, expected: int, timeout: float = 60.0) -> list[Any]:
    c = Consumer({"bootstrap.servers": s.kafka.bootstrap, "group.id": f"sr-dlq-{uuid.uuid4().hex[:8]}",
                  "auto.offset.reset": "earliest"})  # fmt: skip
    c.subscribe([s.kafka.dlq_topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(out) < expected and time.monotonic() < deadline:
        out += [m for m in c.consume(expected, 1.0) if m.error() is None]
    c.close()
    return out


def _schema_with(tmp_path: Path, field: dict[str, Any]) -> Path:
    schema = json.loads(TRANSACTION_SCHEMA.read_text())
    schema["fields"].append(field)
    path = tmp_path / f"{field['name']}.avsc"
    path.write_text(json.dumps(schema))
    return path


def test_produce_and_consume_through_the_registry(sr: Settings) -> None:
    records = fresh_transactions(200)
    producer = TransactionProducer(sr)
    producer.send_many(records)
    producer.flush()
    subject = f"{sr.kafka.transactions_topic}-value"
    client = _registry(sr)._client
    assert client.get_subjects().count(subject) == 1
    assert client.get_compatibility(subject) == "BACKWARD"
    registered = client.get_latest_version(subject)
    assert registered.schema_id == producer.serde.schema_id
    loop = _consume_all(sr, 200)
    assert loop.serde.schema_id == producer.serde.schema_id  # the reader found it without registering
    assert loop.stats.scored == 200 and loop.stats.dead_lettered == 0
    ids = [r["transaction_id"] for r in records]
    assert count_rows(sr.postgres.dsn.get_secret_value(), "transactions", ids) == 200


def test_incompatible_schema_refused_compatible_one_read_by_resolution(sr: Settings, tmp_path: Path) -> None:
    v1 = TransactionSerde(_registry(sr), sr.kafka.transactions_topic)
    # A new required field without a default cannot read v1's data: BACKWARD refuses it.
    with pytest.raises(IncompatibleSchema, match="BACKWARD"):
        TransactionSerde(_registry(sr, _schema_with(tmp_path, {"name": "mcc", "type": "string"})),
                         sr.kafka.transactions_topic)  # fmt: skip
    # An optional one with a default can: registered as a new id, and our reader reads it.
    v2_file = _schema_with(tmp_path, {"name": "risk_hint", "type": ["null", "string"], "default": None})
    v2 = TransactionSerde(_registry(sr, v2_file), sr.kafka.transactions_topic)
    assert v2.schema_id != v1.schema_id
    reader = TransactionSerde(_registry(sr), sr.kafka.transactions_topic, role="consumer")
    record = {**fresh_transactions(1)[0], "risk_hint": "x"}
    decoded = reader.decode(v2.encode(record))
    assert decoded["transaction_id"] == record["transaction_id"] and "risk_hint" not in decoded


def test_unknown_schema_id_goes_to_the_dlq_with_its_reason(sr: Settings) -> None:
    good = fresh_transactions(3)
    producer = TransactionProducer(sr)
    producer.send_many(good)
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, 987_654))  # an id this registry never gave out
    fastavro.schemaless_writer(buf, producer.serde.schema, fresh_transactions(1)[0])
    producer.send_raw("u-unknown", buf.getvalue())
    producer.flush()
    loop = _consume_all(sr, 4)
    assert loop.stats.scored == 3 and loop.stats.dead_lettered == 1
    (msg,) = _dlq(sr, 1)
    headers = {k: v.decode() for k, v in msg.headers()}
    assert headers["error.class"] == "DecodeError"
    assert "unknown schema id 987654" in headers["error.message"]
    assert headers["source.topic"] == sr.kafka.transactions_topic
    assert msg.value() == buf.getvalue()
