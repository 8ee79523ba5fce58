"""Idempotent sinks: PostgreSQL via binary COPY straight into the tables, or, when a row is
already there, COPY into a staging table + ``INSERT … ON CONFLICT DO NOTHING`` (a redelivered
batch never duplicates a row), and Kafka topics for decisions, alerts and dead letters."""

from __future__ import annotations

import functools
import io
import itertools
import json
import math
import struct
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2
import psycopg2.errors
from confluent_kafka import KafkaError, KafkaException, Producer

from core.contracts import DECISION_COLUMNS, LABEL_COLUMNS, TX_COLUMNS

_PURGED = frozenset({KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT})
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _copy_field(value: Any) -> str:
    """One field in PostgreSQL COPY text format."""
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, float):
        return repr(float(value)) if math.isfinite(value) else "\\N"
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value).translate(_ESCAPES)


def copy_text(rows: Iterable[Sequence[Any]]) -> io.StringIO:
    buf = io.StringIO()
    for row in rows:
        buf.write("\t".join(_copy_field(v) for v in row))
        buf.write("\n")
    buf.seek(0)
    return buf


# COPY binary (https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4): a header,
# per row the field count then each field as its length (-1: NULL) and its bytes in the type's
# send format, and a -1 trailer. Built with struct, no per-value text formatting: a third of
# the client's time of the text format (docs/benchmarks.md, 2026-12-05).
_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0)
_BINARY_TRAILER = struct.pack(">h", -1)
_NULL = struct.pack(">i", -1)
_TRUE, _FALSE = struct.pack(">ib", 1, 1), struct.pack(">ib", 1, 0)
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_length = struct.Struct(">i").pack
_float8 = struct.Struct(">id").pack
_int4 = struct.Struct(">ii").pack
_int8 = struct.Struct(">iq").pack


def _col_text(values: Iterable[Any], version: bytes = b"") -> list[bytes]:
    """text; with ``version`` b"\\x01", jsonb (its binary format: that version byte, then the text)."""
    out: list[bytes] = []
    put = out.append
    extra = len(version)
    for value in values:
        if value is None:
            put(_NULL)
        else:
            data = (value if type(value) is str else str(value)).encode()
            put(_length(len(data) + extra) + version + data)
    return out


def _col_float8(values: Iterable[Any]) -> list[bytes]:
    # NaN and ±inf are NULL, as in the text format (an unknown latency, not a number).
    finite = math.isfinite
    return [_NULL if v is None or not finite(v) else _float8(8, v) for v in values]


def _col_bool(values: Iterable[Any]) -> list[bytes]:
    return [_NULL if v is None else _TRUE if v else _FALSE for v in values]


def _col_int4(values: Iterable[Any]) -> list[bytes]:
    return [_NULL if v is None else _int4(4, v) for v in values]


def _col_int8(values: Iterable[Any]) -> list[bytes]:
    return [_NULL if v is None else _int8(8, v) for v in values]


def _col_timestamptz(values: Iterable[Any]) -> list[bytes]:
    out: list[bytes] = []
    for value in values:
        if value is None:
            out.append(_NULL)
            continue
        if value.tzinfo is None:  # the text format would read it in the session's time zone
            raise TypeError(f"a naive datetime cannot go to a timestamptz column: {value!r}")
        out.append(_int8(8, (value - _PG_EPOCH) // _MICROSECOND))  # µs since 2000-01-01 UTC, exact
    return out


# The PostgreSQL type of every column written in binary (core/db; checked against the database
# by tests/integration/test_pg_sink.py). char(n) is sent as text: the server pads and checks it.
COLUMN_TYPES: dict[str, str] = {
    "transaction_id": "text", "user_id": "text", "merchant_id": "text", "amount": "float8",
    "currency": "text", "event_time": "timestamptz", "country": "text", "device_id": "text",
    "channel": "text", "merchant_category": "text", "lat": "float8", "lon": "float8", "ip": "text",
    "kafka_partition": "int4", "kafka_offset": "int8", "scores": "jsonb", "ensemble_score": "float8",
    "is_fraud": "bool", "model_version": "text", "latency_ms": "float8", "event_latency_ms": "float8",
    "shadow_score": "float8", "shadow_version": "text",
}  # fmt: skip
# Column by column: a loop per column instead of a function call per value (a third less of
# the client's time: docs/benchmarks.md, "2026-12-07 (sixth session)").
_COLUMN_ENCODERS: dict[str, Callable[[Iterable[Any]], list[bytes]]] = {
    "text": _col_text, "jsonb": functools.partial(_col_text, version=b"\x01"), "float8": _col_float8,
    "bool": _col_bool, "int4": _col_int4, "int8": _col_int8, "timestamptz": _col_timestamptz,
}  # fmt: skip


def copy_binary(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """``rows`` (values in ``columns`` order) as a PostgreSQL COPY binary stream."""
    rows = rows if isinstance(rows, list | tuple) else list(rows)
    if not rows:
        return _BINARY_HEADER + _BINARY_TRAILER
    if any(len(row) != len(columns) for row in rows):
        raise ValueError(f"a row without exactly the {len(columns)} values of {', '.join(columns)}")
    encoded = [
        _COLUMN_ENCODERS[COLUMN_TYPES[c]](values)
        for c, values in zip(columns, zip(*rows, strict=True), strict=True)
    ]
    count = struct.pack(">h", len(columns))
    # per row: the field count, then its fields
    fields = itertools.chain.from_iterable(zip(itertools.repeat(count, len(rows)), *encoded, strict=True))
    return b"".join([_BINARY_HEADER, *fields, _BINARY_TRAILER])


class PostgresSink:
    """Writes transactions and their decisions for one batch in one database transaction."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None

    def connect(self) -> None:
        """Open the session now (otherwise the first ``write`` does)."""
        self._connection()

    def _connection(self) -> Any:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self._dsn, connect_timeout=5)
            with self._conn, self._conn.cursor() as cur:
                for table in ("transactions", "decisions", "labels"):
                    cur.execute(
                        f"CREATE TEMP TABLE IF NOT EXISTS stage_{table} "
                        f"(LIKE {table} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
                    )
        return self._conn

    def write(
        self,
        transactions: Sequence[Sequence[Any]],
        decisions: Sequence[Sequence[Any]],
        labels: Sequence[Sequence[Any]] = (),
    ) -> int:
        """Insert the batch's rows in one database transaction; returns how many decisions
        were new (0 for a pure redelivery). The first label of a transaction wins.

        A new batch is copied straight into the tables. When one of its transactions or
        decisions is already there (a redelivery, a batch partly written by an earlier
        attempt), that transaction is rolled back and the batch is merged through the staging
        tables instead, which inserts exactly the missing rows."""
        try:
            conn = self._connection()
            try:
                with conn, conn.cursor() as cur:
                    self._copy(cur, "transactions", TX_COLUMNS, transactions)
                    # Labels always merge (a label may come twice: the first wins), as text:
                    # the consumer gives labelled_at as ISO text.
                    self._merge(cur, "labels", LABEL_COLUMNS, labels, binary=False)
                    return self._copy(cur, "decisions", DECISION_COLUMNS, decisions)
            except psycopg2.errors.UniqueViolation:
                with conn, conn.cursor() as cur:
                    self._merge(cur, "transactions", TX_COLUMNS, transactions)
                    self._merge(cur, "labels", LABEL_COLUMNS, labels, binary=False)
                    return self._merge(cur, "decisions", DECISION_COLUMNS, decisions)
        except psycopg2.Error:
            self.close()  # reconnect on the next batch
            raise

    @staticmethod
    def _copy(cur: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        cur.copy_expert(
            f"COPY {table} ({', '.join(columns)}) FROM STDIN (FORMAT binary)",
            io.BytesIO(copy_binary(columns, rows)),
        )
        return int(cur.rowcount)

    @staticmethod
    def _merge(
        cur: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], *, binary: bool = True
    ) -> int:
        """Rows through ``stage_{table}``: whichever of them are already in ``table`` are
        skipped, and of two with one key the first wins."""
        if not rows:
            return 0
        cols = ", ".join(columns)
        if binary:
            data: Any = io.BytesIO(copy_binary(columns, rows))
            cur.copy_expert(f"COPY stage_{table} ({cols}) FROM STDIN (FORMAT binary)", data)
        else:
            cur.copy_expert(f"COPY stage_{table} ({cols}) FROM STDIN", copy_text(rows))
        cur.execute(
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM stage_{table} ON CONFLICT DO NOTHING"  # noqa: S608
        )
        return int(cur.rowcount)

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            finally:
                self._conn = None


class KafkaSink:
    """Produces JSON decisions/alerts and raw dead letters; ``flush`` raises on failures."""

    def __init__(self, config: dict[str, Any]) -> None:
        self._config = dict(config)
        self._producer = Producer(self._config)
        self._errors: list[str] = []

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None and err.code() not in _PURGED:
            self._errors.append(str(err))

    def send(
        self,
        topic: str,
        key: str | bytes | None,
        value: bytes | None,
        headers: list[tuple[str, str | bytes | None]] | None = None,
    ) -> None:
        while True:
            try:
                self._producer.produce(
                    topic, value=value, key=key, headers=headers, on_delivery=self._on_delivery
                )
                return
            except BufferError:
                self._producer.poll(0.05)

    def send_json(self, topic: str, key: str, payload: dict[str, Any]) -> None:
        self.send(topic, key, json.dumps(payload, separators=(",", ":")).encode())

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for every delivery; on any failure drop what is still queued, start a new client
        and raise: the caller retries its whole batch, which sends everything again, on a client
        with fresh metadata (an old one can stay stuck after a broker restart, see
        ingest/producer.py)."""
        remaining = self._producer.flush(timeout)
        if remaining or self._errors:
            errors, self._errors = self._errors, []
            self._producer.purge()
            self._producer.poll(0)  # the purged records' reports, ignored
            self._producer = Producer(self._config)
            raise KafkaException(f"{remaining} undelivered, {len(errors)} failed: {errors[:1]}")
