"""Kafka producer for transactions: Avro (Confluent framing), key = user_id, idempotent,
batched by librdkafka (linger + compression)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaException, Producer

from cluster.settings import Settings
from ingest.serde import FastRecordEncoder, TransactionSerde, registry_from_settings


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.kafka.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 10,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
    }
    conf.update(overrides)
    return conf


class TransactionProducer:
    """Sends transaction dicts to the ``transactions`` topic; ``flush`` raises on any failed delivery."""

    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        self.topic = topic or settings.kafka.transactions_topic
        self.serde = TransactionSerde(registry_from_settings(settings))
        self._producer = Producer(producer_config(settings))
        self._errors: list[str] = []
        self.sent = 0

    def _on_delivery(self, err: Any, _msg: Any) -> None:
        if err is not None:
            self._errors.append(str(err))

    def send_raw(self, key: str | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
                break
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let librdkafka drain it
        self.sent += 1

    def send_many(self, records: Iterable[dict[str, Any]]) -> int:
        n = 0
        for record in records:
            self.send_raw(record["user_id"], self.serde.encode(record))
            n += 1
            if n % 1000 == 0:
                self._producer.poll(0)
        self._producer.poll(0)
        return n

    def flush(self, timeout: float = 60.0) -> None:
        remaining = self._producer.flush(timeout)
        if remaining:
            raise KafkaException(f"{remaining} messages still undelivered after {timeout} s")
        if self._errors:
            errors, self._errors = self._errors, []
            raise KafkaException(f"{len(errors)} deliveries failed, first: {errors[0]}")


def send_paced(
    producer: TransactionProducer,
    records: Iterator[dict[str, Any]],
    *,
    rate: float | None,
    count: int | None = None,
    duration: float | None = None,
    stop: Callable[[], bool] = lambda: False,
    on_progress: Callable[[int, float], None] | None = None,
    restamp: bool = False,
) -> tuple[int, float]:
    """Send ``records`` at ``rate`` tx/s (token bucket; ``None`` = as fast as possible) until
    ``count`` records, ``duration`` seconds or ``stop()``. ``restamp`` sets each record's
    event_time to the send time. Returns (sent, seconds)."""
    t0 = time.monotonic()
    sent = 0
    last_report = t0
    while not stop():
        now = time.monotonic()
        elapsed = now - t0
        if duration is not None and elapsed >= duration:
            break
        if count is not None and sent >= count:
            break
        due = 1000 if rate is None else int(elapsed * rate) - sent
        if count is not None:
            due = min(due, count - sent)
        if due <= 0:
            time.sleep(min(0.01, 1 / rate) if rate else 0)
            continue
        batch = list(itertools.islice(records, min(due, 5000)))
        if not batch:
            break
        if restamp:
            stamp = datetime.now(UTC)
            for r in batch:
                r["event_time"] = stamp
        sent += producer.send_many(batch)
        if on_progress is not None and now - last_report >= 1.0:
            on_progress(sent, elapsed)
            last_report = now
    producer.flush()
    return sent, time.monotonic() - t0


class FastTransactionProducer(TransactionProducer):
    """A :class:`TransactionProducer` that encodes with the compiled Avro writer
    (:class:`ingest.serde.FastRecordEncoder`): the same bytes, a third of the CPU per record."""

    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        super().__init__(settings, topic)
        self._encoder = FastRecordEncoder.for_serde(self.serde)

    def send_many(self, records: Iterable[dict[str, Any]]) -> int:
        encode = self._encoder.encode
        n = 0
        for record in records:
            self.send_raw(record["user_id"], encode(record))
            n += 1
            if n % 1000 == 0:
                self._producer.poll(0)
        self._producer.poll(0)
        return n
