"""Avro serde: Confluent framing round-trips; every kind of bad value becomes a DecodeFailure."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import Any

import fastavro
import pytest

from core.errors import DecodeError
from ingest.avro_flat import compile_reader
from ingest.serde import TransactionSerde, event_time_ms
from ingest.simulator import demo_transactions


@pytest.fixture(scope="module")
def serde() -> TransactionSerde:
    return TransactionSerde()


def test_round_trip_keeps_every_field(serde: TransactionSerde) -> None:
    record = next(demo_transactions(1, seed=5))
    value = serde.encode(record)
    assert value[0] == 0 and int.from_bytes(value[1:5], "big") == serde.schema_id
    decoded = serde.decode(value)
    assert {k: v for k, v in decoded.items() if k != "event_time"} == {
        k: v for k, v in record.items() if k != "event_time"
    }
    assert event_time_ms(decoded) == int(record["event_time"].timestamp() * 1000)


def test_optional_fields_default_to_null(serde: TransactionSerde) -> None:
    minimal = {
        "transaction_id": "t", "user_id": "u", "merchant_id": "m", "amount": 1.0, "currency": "EUR",
        "event_time": datetime(2026, 1, 1, tzinfo=UTC), "country": "FR",
    }  # fmt: skip
    decoded = serde.decode(serde.encode(minimal))
    assert decoded["device_id"] is None and decoded["lat"] is None


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "shorter than"),
        (b"\x00\x00", "shorter than"),
        (b"\x01\x00\x00\x00\x01abc", "bad magic byte"),
        (b"\x00\x00\x00\x03\xe7abc", "unknown schema id"),
        (b"\x00\x00\x00\x00\x01\x04t1", "does not match schema"),
    ],
)
def test_bad_values_raise_decode_error(serde: TransactionSerde, value: bytes | None, fragment: str) -> None:
    with pytest.raises(DecodeError, match=fragment):
        serde.decode(value)


def test_decode_many_separates_good_and_bad(serde: TransactionSerde) -> None:
    good = serde.encode(next(demo_transactions(1, seed=1)))
    ok, bad = serde.decode_many([good, b"junk", good + b"\x00"])
    assert [i for i, _ in ok] == [0]
    assert [(f.index, f.error) for f in bad] == [(1, "DecodeError"), (2, "DecodeError")]
    assert "trailing bytes" in bad[1].message


_EDGE_TIMES = (
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1969, 7, 20, 20, 17, 40, 123000, tzinfo=UTC),  # before the epoch: a negative long
    datetime(9999, 12, 31, 23, 59, 59, 999000, tzinfo=UTC),
)


def _fastavro_only() -> TransactionSerde:
    plain = TransactionSerde()
    plain._read_own = None  # every value through fastavro.schemaless_reader
    return plain


def _outcome(serde: TransactionSerde, value: bytes) -> Any:
    try:
        record = serde.decode(value)
    except DecodeError as exc:
        return ("DecodeError", str(exc))
    return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in record.items()}


def test_the_compiled_reader_reads_our_schema_as_fastavro_does(serde: TransactionSerde) -> None:
    """Every field kind, None in every optional field, non-ASCII text, extreme numbers: the
    compiled reader's dict is fastavro's, key order included."""
    assert serde._read_own is not None
    rnd = random.Random(11)
    records = list(demo_transactions(300, seed=11))
    for i, r in enumerate(records):
        r["ip"] = None if i % 2 else f"10.0.{i % 250}.{i % 7}"
        r["user_id"] = "ünïcødé-😀-" + r["user_id"] if i % 5 == 0 else r["user_id"]
        r["amount"] = [0.0, -0.0, 1e308, -5e-324, math.inf, math.nan, rnd.uniform(-1e9, 1e9)][i % 7]
        r["event_time"] = [*_EDGE_TIMES, r["event_time"]][i % 4]
        for name in ("device_id", "channel", "merchant_category", "lat", "lon"):
            if rnd.random() < 0.3:
                r[name] = None
        if i % 9 == 0:
            r["transaction_id"] = "x" * 5000  # a length beyond one varint byte
    plain = _fastavro_only()
    for r in records:
        value = serde.encode(r)
        got, want = _outcome(serde, value), _outcome(plain, value)
        assert got == want and list(got) == list(want)


def test_a_value_the_compiled_reader_refuses_fails_with_fastavros_reason(serde: TransactionSerde) -> None:
    """Truncated at every length, trailing bytes, flipped bytes (a bad union index, invalid
    UTF-8, a runaway varint): the same record or the same DecodeError as fastavro alone."""
    plain = _fastavro_only()
    value = serde.encode(dict(next(demo_transactions(1, seed=3)), ip="1.2.3.4"))
    cases = [value[:n] for n in range(5, len(value))] + [value + b"\x00", value + b"\x02ab"]
    rnd = random.Random(5)
    for _ in range(600):
        flipped = bytearray(value)
        flipped[rnd.randrange(5, len(value))] = rnd.randrange(256)
        cases.append(bytes(flipped))
    cases.append(value[:5] + b"\xff" * 12 + value[5:])  # a varint of more than 64 bits
    for case in cases:
        assert _outcome(serde, case) == _outcome(plain, case), case


@pytest.mark.parametrize(
    "field_type",
    ["int", "float", "boolean", {"type": "enum", "name": "E", "symbols": ["A"]},
     {"type": "array", "items": "string"}, ["null", "string", "long"], ["string", "long"],
     {"type": "long", "logicalType": "timestamp-micros"}],
)  # fmt: skip
def test_a_schema_beyond_the_flat_kinds_stays_with_fastavro(field_type: Any) -> None:
    schema = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "string"},
                                                        {"name": "b", "type": field_type}]}  # fmt: skip
    assert compile_reader(fastavro.parse_schema(schema)) is None
    assert compile_reader(
        fastavro.parse_schema({"type": "record", "name": "S", "fields": [{"name": "a", "type": "string"}]})
    )
