"""COPY encodings, text and binary: NULLs, escapes and non-finite floats survive the trip into
PostgreSQL (the round trip itself: tests/integration/test_pg_sink.py)."""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from ingest.sinks import copy_binary, copy_text


def test_copy_text_escapes_and_nulls() -> None:
    row = ("a\tb\nc\\d", None, True, np.float64(1.5), float("nan"), datetime(2026, 1, 1, tzinfo=UTC), 7)
    line = copy_text([row]).read()
    assert line == "a\\tb\\nc\\\\d\t\\N\tt\t1.5\t\\N\t2026-01-01T00:00:00+00:00\t7\n"


def test_copy_binary_fields() -> None:
    """Header, field count, then each field as length + send format; NULL and non-finite -1."""
    when = datetime(2000, 1, 2, tzinfo=timezone(timedelta(hours=1)))  # 23 h after PostgreSQL's epoch
    row = ("ü", None, 1.5, float("inf"), True, when, 7, 2**40, '{"a": 1}')
    cols = ("user_id", "device_id", "amount", "lat", "is_fraud", "event_time", "kafka_partition",
            "kafka_offset", "scores")  # fmt: skip
    data = copy_binary(cols, [row])
    header = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
    fields = [
        struct.pack(">i", 2) + "ü".encode(),
        struct.pack(">i", -1),
        struct.pack(">id", 8, 1.5),
        struct.pack(">i", -1),
        struct.pack(">ib", 1, 1),
        struct.pack(">iq", 8, 23 * 3600 * 10**6),
        struct.pack(">ii", 4, 7),
        struct.pack(">iq", 8, 2**40),
        struct.pack(">ib", 9, 1) + b'{"a": 1}',
    ]
    assert data == header + struct.pack(">h", 9) + b"".join(fields) + struct.pack(">h", -1)


def test_copy_binary_refuses_naive_datetimes() -> None:
    with pytest.raises(TypeError, match="naive"):
        copy_binary(("event_time",), [(datetime(2026, 1, 1),)])


def test_copy_binary_of_many_rows_is_each_rows_fields_in_turn() -> None:
    """Encoded column by column, the stream is still row after row: each row's field count and
    fields exactly as that row alone would give them; no rows is a header and a trailer."""
    cols = (
        "transaction_id",
        "amount",
        "event_time",
        "lat",
        "is_fraud",
        "kafka_offset",
        "scores",
        "device_id",
    )
    when = datetime(2026, 3, 1, 12, tzinfo=UTC)
    rows = [
        (f"t{i}", i * 1.25, when + timedelta(milliseconds=i), None if i % 2 else float(i), i % 3 == 0,
         10**12 + i, '{"if": 0.5}' if i % 4 else None, None if i % 5 else "ü-dev")
        for i in range(40)
    ]  # fmt: skip
    header, trailer = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0), struct.pack(">h", -1)
    alone = [copy_binary(cols, [row])[len(header) : -len(trailer)] for row in rows]
    assert copy_binary(cols, rows) == header + b"".join(alone) + trailer
    assert copy_binary(cols, iter(rows)) == copy_binary(cols, rows)
    assert copy_binary(cols, []) == header + trailer
    with pytest.raises(ValueError, match="exactly the 8 values"):
        copy_binary(cols, [*rows[:3], rows[3][:7]])
