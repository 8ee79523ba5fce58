"""Idempotent sinks: PostgreSQL via COPY into a staging table + ``INSERT … ON CONFLICT DO
NOTHING`` (a redelivered batch never duplicates a row), and Kafka topics for decisions,
alerts and dead letters."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable, Sequence
from typing import Any

import psycopg2
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


class PostgresSink:
    """Writes transactions and their decisions for one batch in one database transaction."""

    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._conn: Any = None

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
        were new (0 for a pure redelivery). The first label of a transaction wins."""
        try:
            conn = self._connection()
            with conn, conn.cursor() as cur:
                self._merge(cur, "transactions", TX_COLUMNS, transactions)
                self._merge(cur, "labels", LABEL_COLUMNS, labels)
                return self._merge(cur, "decisions", DECISION_COLUMNS, decisions)
        except psycopg2.Error:
            self.close()  # reconnect on the next batch
            raise

    @staticmethod
    def _merge(cur: Any, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> int:
        if not rows:
            return 0
        cols = ", ".join(columns)
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
