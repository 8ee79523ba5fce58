"""The producer's wire format: the compiled Avro writer is byte-identical to fastavro (and
defers to it for anything unusual), label JSON, and the HTTP schema registry client.

There is no Schema Registry in the local stack, so the HTTP client is exercised against a
minimal in-process server speaking the two Confluent REST calls it uses.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, ClassVar

import pytest

from core.errors import DecodeError
from core.settings import KafkaSettings, Settings
from ingest.labels import Label, encode_labels
from ingest.serde import (
    FastRecordEncoder,
    FileSchemaRegistry,
    HttpSchemaRegistry,
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


# -- HTTP schema registry ----------------------------------------------------------------------


class _Registry(BaseHTTPRequestHandler):
    schemas: ClassVar[dict[int, str]] = {}
    subjects: ClassVar[dict[str, int]] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def _reply(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        subject = self.path.split("/")[2]
        text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["schema"]
        known = [sid for sid, schema in self.schemas.items() if json.loads(schema) == json.loads(text)]
        sid = known[0] if known else 100 + len(self.schemas)
        self.schemas[sid] = text
        self.subjects[subject] = sid
        self._reply(200, {"id": sid})

    def do_GET(self) -> None:
        sid = int(self.path.rsplit("/", 1)[-1])
        if sid in self.schemas:
            self._reply(200, {"schema": self.schemas[sid]})
        else:
            self._reply(404, {"error_code": 40403, "message": "Schema not found"})


@pytest.fixture
def registry_url() -> Iterator[str]:
    server = HTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_registry_registers_and_resolves_ids(registry_url: str) -> None:
    registry = HttpSchemaRegistry(registry_url)
    writer = TransactionSerde(registry)
    assert writer.schema_id == 100 and _Registry.subjects["transactions-value"] == 100
    record = next(Simulator(SimConfig(seed=1, users=1_000, start=START)).records())
    value = writer.encode(record)
    assert int.from_bytes(value[1:5], "big") == 100
    reader = TransactionSerde(HttpSchemaRegistry(registry_url))  # a fresh client fetches id 100
    assert reader.decode(value)["transaction_id"] == record["transaction_id"]
    with pytest.raises(DecodeError, match="unknown schema id 7"):
        reader.decode(b"\x00\x00\x00\x00\x07" + value[5:])


def test_http_registry_unreachable_is_a_clear_error() -> None:
    with pytest.raises(SchemaRegistryError, match=r"schema registry http://127\.0\.0\.1:9"):
        TransactionSerde(HttpSchemaRegistry("http://127.0.0.1:9", timeout=0.5))


def test_registry_from_settings() -> None:
    assert isinstance(registry_from_settings(Settings()), FileSchemaRegistry)
    configured = Settings(kafka=KafkaSettings(schema_registry_url="http://127.0.0.1:9"))
    assert isinstance(registry_from_settings(configured), HttpSchemaRegistry)
