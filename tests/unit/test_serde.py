"""Avro serde: Confluent framing round-trips; every kind of bad value becomes a DecodeFailure."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from core.errors import DecodeError
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
