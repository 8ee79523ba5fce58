"""The producer's wire format: the compiled Avro writer is byte-identical to fastavro (and
defers to it for anything unusual), label JSON, the file registry's subjects, and how the
Schema Registry client fails when the registry is unreachable.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from core.errors import DecodeError
from core.settings import KafkaSettings, Settings
from ingest.labels import Label, encode_labels
from ingest.serde import (
    ConfluentSchemaRegistry,
    FastRecordEncoder,
    FileSchemaRegistry,
    SchemaRegistryError,
    TransactionSerde,
    registry_from_settings,
)
from ingest.simulator import SimConfig, Simulator

START = datetime(2026, 3, 2, tzinfo=UTC)


@pytest.fixture(scope="module")
def serde() -> TransactionSerde:
    return TransactionSerde()


def test_fast_encoder_is_byte_identical_to_fastavro(serde: TransactionSerde) -> None:
    fast = FastRecordEncoder.for_serde(serde)
    sim = Simulator(SimConfig(seed=13, users=5_000, fraud_rate=0.05, start=START))
    records = list(itertools.islice(sim.records(), 20_000))
    assert [fast.encode(r) for r in records] == [serde.encode(r) for r in records]


@pytest.mark.parametrize(
    "change",
    [
        {"merchant_id": "caf\u00e9 \U0001f600 " * 20},  # non-ASCII, long (multi-byte length)
        {"amount": 12},  # int for a double
        {"event_time": 1_772_458_971_774},  # epoch ms instead of a datetime
        {"event_time": datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC)},  # before the epoch
        {"event_time": datetime(2026, 3, 2, 12, 0)},  # naive: fastavro's own rule
        {"lat": None, "lon": None, "ip": None, "device_id": None, "channel": None},
        {"lat": -0.0, "lon": float("inf")},
    ],
)
def test_fast_encoder_edge_cases_match_fastavro(serde: TransactionSerde, change: dict[str, Any]) -> None:
    record = {**next(Simulator(SimConfig(seed=1, users=1_000, start=START)).records()), **change}
    assert FastRecordEncoder.for_serde(serde).encode(record) == serde.encode(record)


def test_fast_encoder_accepts_and_rejects_what_fastavro_does(serde: TransactionSerde) -> None:
    fast = FastRecordEncoder.for_serde(serde)
    record = next(Simulator(SimConfig(seed=1, users=1_000, start=START)).records())
    lenient = {**record, "amount": "12"}  # fastavro coerces a numeric string; so do we, via fastavro
    assert fast.encode(lenient) == serde.encode(lenient)
    for bad in ({"user_id": 7}, {"lat": "north"}, {"transaction_id": None}):
        with pytest.raises((ValueError, TypeError)):
            serde.encode({**record, **bad})
        with pytest.raises((ValueError, TypeError)):
            fast.encode({**record, **bad})
    minimal = {k: record[k] for k in ("transaction_id", "user_id", "merchant_id", "amount", "currency",
                                      "event_time", "country")}  # fmt: skip
    assert fast.encode(minimal) == serde.encode(minimal)  # absent optional fields are null


def test_encode_labels_matches_to_json() -> None:
    labels = [Label(f'tx"{i}\u00e9', i % 3 == 0, None if i % 2 else "card_testing", 1_772_458_971_000 + i)
              for i in range(1000)]  # fmt: skip
    assert encode_labels(labels) == [lab.to_json() for lab in labels]
    assert [Label.from_json(v) for v in encode_labels(labels)] == labels


# -- schema registries --------------------------------------------------------------------------
# The Confluent client against a real registry: tests/integration/test_schema_registry.py.


def test_file_registry_gives_every_topic_the_transaction_schema() -> None:
    registry = FileSchemaRegistry()
    a, b = TransactionSerde(registry, "transactions"), TransactionSerde(registry, "tx-3f2a", role="consumer")
    assert (a.subject, b.subject) == ("transactions-value", "tx-3f2a-value")  # TopicNameStrategy
    assert a.schema_id == b.schema_id == 1
    record = next(Simulator(SimConfig(seed=1, users=1_000, start=START)).records())
    assert b.decode(a.encode(record))["transaction_id"] == record["transaction_id"]
    with pytest.raises(DecodeError, match="unknown schema id 7"):
        b.decode(b"\x00\x00\x00\x00\x07" + a.encode(record)[5:])


def test_unreachable_registry_is_a_clear_error() -> None:
    registry = ConfluentSchemaRegistry({"url": "http://127.0.0.1:9", "timeout": 1})
    with pytest.raises(SchemaRegistryError, match=r"schema registry http://127\.0\.0\.1:9"):
        TransactionSerde(registry)
    with pytest.raises(SchemaRegistryError, match=r"schema registry http://127\.0\.0\.1:9"):
        TransactionSerde(registry, role="consumer")


def test_registry_from_settings() -> None:
    assert isinstance(registry_from_settings(Settings()), FileSchemaRegistry)
    configured = Settings(kafka=KafkaSettings(schema_registry_url="http://127.0.0.1:9"))
    assert isinstance(registry_from_settings(configured), ConfluentSchemaRegistry)
