"""Kafka producer for transactions: Avro (Confluent framing), key = user_id, idempotent,
batched by librdkafka (linger + compression)."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from core.settings import Settings
from ingest.serde import FastRecordEncoder, TransactionSerde, registry_from_settings

log = logging.getLogger(__name__)

# A delivery not acknowledged within this is reported as timed out (librdkafka's default is
# 300 s). Timed-out records are sent again through a new client (TopicProducer.flush;
# the consumer's KafkaSink retries its batch on a new one): after a single-broker restart a
# librdkafka client can keep a partition's leader as "-1 not found in cache" and stop
# delivering (the fault suite's stream producer timed out 33,636 records after 300 s while
# consumers' clients recovered; cf. vectordotdev/vector#25375).
MESSAGE_TIMEOUT_MS = 30_000


def producer_config(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The settings' producer config (core.settings.KafkaSettings.client_config) with our
    delivery timeout."""
    return settings.kafka.client_config("producer", **{"message.timeout.ms": MESSAGE_TIMEOUT_MS, **overrides})


class TopicProducer:
    """Sends to one topic; ``flush`` re-sends timed-out records through a new client until its
    deadline and raises on any other failed delivery.

    A re-sent record may already be in the topic (its acknowledgement was what got lost): the
    consumers apply a transaction id (and a label) once, so a duplicate changes no outcome."""

    what = "messages"  # in error messages

    def __init__(self, settings: Settings, topic: str, **overrides: Any) -> None:
        self.topic = topic
        self._config = producer_config(settings, **overrides)
        self._producer = Producer(self._config)
        self._errors: list[str] = []
        self._timed_out: list[tuple[bytes | None, bytes]] = []
        self.sent = 0
        self.resent = 0

    def _on_delivery(self, err: Any, msg: Any) -> None:
        if err is None:
            return
        if err.code() == KafkaError._MSG_TIMED_OUT:
            self._timed_out.append((msg.key(), msg.value()))
        else:
            self._errors.append(str(err))

    def _produce(self, key: str | bytes | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, on_delivery=self._on_delivery)
                return
            except BufferError:
                self._producer.poll(0.05)  # local queue full: let librdkafka drain it

    def flush(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
            if remaining:
                raise KafkaException(f"{remaining} {self.what} still undelivered after {timeout} s")
            if self._errors:
                errors, self._errors = self._errors, []
                raise KafkaException(f"{len(errors)} deliveries of {self.what} failed, first: {errors[0]}")
            if not self._timed_out:
                return
            pending, self._timed_out = self._timed_out, []
            if time.monotonic() >= deadline:
                raise KafkaException(f"{len(pending)} {self.what} timed out; the {timeout} s flush is over")
            log.warning("%d %s timed out; sending them again on a new Kafka client", len(pending), self.what)
            self._producer = Producer(self._config)  # nothing is queued in the old one any more
            for key, value in pending:
                self._produce(key, value)
            self.resent += len(pending)


class TransactionProducer(TopicProducer):
    """Sends transaction dicts (Avro) to the ``transactions`` topic, key = user id."""

    what = "transactions"

    def __init__(self, settings: Settings, topic: str | None = None, **overrides: Any) -> None:
        super().__init__(settings, topic or settings.kafka.transactions_topic, **overrides)
        self.serde = TransactionSerde(registry_from_settings(settings), self.topic)

    def send_raw(self, key: str | None, value: bytes) -> None:
        self._produce(key, value)
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
