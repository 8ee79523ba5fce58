"""Ray consumer actors: poll a micro-batch, decode, validate, featurize, score with one
Serve call, write the sinks, and only then commit the offsets (at-least-once delivery with
idempotent sinks = exactly-once effect).

The confluent-kafka Consumer is built inside the actor (librdkafka threads do not survive
pickling) and the actor is async so that polling continues while it awaits Serve.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import ray
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from cluster.settings import Settings
from features.online import OnlineStore, records_features
from ingest.producer import producer_config
from ingest.serde import TransactionSerde, event_time_ms
from ingest.sinks import KafkaSink, PostgresSink

log = logging.getLogger(__name__)

_REBALANCE_CODES = frozenset(
    {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS}
)
_MIN_EVENT_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
_MAX_FUTURE_MS = 24 * 3600 * 1000


def validate(record: dict[str, Any], now_ms: int) -> str | None:
    """The business rules a decodable record must also pass; returns the reason it fails."""
    amount = record["amount"]
    if not math.isfinite(amount) or amount <= 0:
        return f"amount must be positive and finite, got {amount!r}"
    if len(record["currency"]) != 3 or not record["currency"].isalpha():
        return f"currency must be an ISO-4217 code, got {record['currency']!r}"
    if len(record["country"]) != 2 or not record["country"].isalpha():
        return f"country must be an ISO-3166 alpha-2 code, got {record['country']!r}"
    t = event_time_ms(record)
    if t < _MIN_EVENT_MS or t > now_ms + _MAX_FUTURE_MS:
        return f"event_time {t} ms is outside [2000-01-01, now + 1 day]"
    return None


@dataclass
class ConsumerStats:
    polled: int = 0
    scored: int = 0
    new_decisions: int = 0
    dead_lettered: int = 0
    alerts: int = 0
    batches: int = 0
    commits: int = 0
    commit_conflicts: int = 0  # commit refused by a rebalance: the new owner redelivers
    retries: int = 0  # batches rewound after a failed stage (Serve, PostgreSQL, Redis, Kafka)


class ScoringLoop:
    """The per-batch pipeline, independent of Ray so it can be driven from any process."""

    def __init__(self, settings: Settings, scorer: Any, group_id: str | None = None) -> None:
        from confluent_kafka import Consumer

        k = settings.kafka
        self.settings = settings
        self.scorer = scorer
        self.serde = TransactionSerde()
        self.consumer = Consumer(
            {
                "bootstrap.servers": k.bootstrap,
                "group.id": group_id or k.consumer_group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "partition.assignment.strategy": "cooperative-sticky",
                "max.poll.interval.ms": 300_000,
                "fetch.wait.max.ms": 100,
            }
        )
        self.consumer.subscribe([k.transactions_topic])
        self.pg = PostgresSink(settings.postgres.dsn.get_secret_value())
        self.kafka_out = KafkaSink(producer_config(settings, **{"linger.ms": 5}))
        self.store = OnlineStore(settings.redis.url.get_secret_value())
        self.stats = ConsumerStats()

    def _dead_letter(self, msg: Any, error: str, reason: str) -> None:
        headers: list[tuple[str, str | bytes | None]] = [
            ("error.class", error.encode()),
            ("error.message", reason.encode()[:1000]),
            ("source.topic", str(msg.topic()).encode()),
            ("source.partition", str(msg.partition()).encode()),
            ("source.offset", str(msg.offset()).encode()),
        ]
        self.kafka_out.send(self.settings.kafka.dlq_topic, msg.key(), msg.value(), headers)
        self.stats.dead_lettered += 1

    async def process(self, msgs: list[Any], *, commit: bool = True) -> None:
        """Run one polled batch through every stage; commit only when all sinks succeeded."""
        k = self.settings.kafka
        msgs = [m for m in msgs if m.error() is None]
        if not msgs:
            return
        self.stats.polled += len(msgs)
        decoded, failures = self.serde.decode_many([m.value() for m in msgs])
        for f in failures:
            self._dead_letter(msgs[f.index], f.error, f.message)
        now_ms = int(time.time() * 1000)
        records: list[dict[str, Any]] = []
        sources: list[Any] = []
        for i, rec in decoded:
            reason = validate(rec, now_ms)
            if reason is None:
                records.append(rec)
                sources.append(msgs[i])
            else:
                self._dead_letter(msgs[i], "ValidationError", reason)

        if records:
            event_ms = np.fromiter((event_time_ms(r) for r in records), dtype=np.int64, count=len(records))
            matrix = records_features(records, event_ms)
            result = await self.scorer.score.remote(matrix)
            scores, flags, version = result["scores"], result["is_fraud"], result["model_version"]
            done_ms = time.time() * 1000
            tx_rows = [
                (r["transaction_id"], r["user_id"], r["merchant_id"], r["amount"], r["currency"],
                 r["event_time"], r["country"], r["device_id"], r["channel"], r["merchant_category"],
                 r["lat"], r["lon"], r["ip"], m.partition(), m.offset())
                for r, m in zip(records, sources, strict=True)
            ]  # fmt: skip
            decision_rows = [
                (r["transaction_id"], r["user_id"], f'{{"if": {float(s)!r}}}', float(s), bool(f),
                 version, done_ms - t)
                for r, s, f, t in zip(records, scores, flags, event_ms, strict=True)
            ]  # fmt: skip
            self.stats.new_decisions += await asyncio.to_thread(self.pg.write, tx_rows, decision_rows)
            self.store.write_latest(
                [r["user_id"] for r in records], [r["transaction_id"] for r in records], event_ms, matrix
            )
            for r, s, f in zip(records, scores, flags, strict=True):
                payload = {"transaction_id": r["transaction_id"], "user_id": r["user_id"],
                           "score": float(s), "is_fraud": bool(f), "model_version": version}  # fmt: skip
                self.kafka_out.send_json(k.decisions_topic, r["user_id"], payload)
                if f:
                    self.kafka_out.send_json(k.alerts_topic, r["user_id"], payload)
                    self.stats.alerts += 1
            self.stats.scored += len(records)
        await asyncio.to_thread(self.kafka_out.flush)
        self.stats.batches += 1
        if commit:
            await asyncio.to_thread(self._commit, msgs)

    def _commit(self, msgs: list[Any]) -> None:
        """Commit exactly this batch's offsets (next offset per partition)."""
        nxt: dict[tuple[str, int], int] = {}
        for m in msgs:
            key = (m.topic(), m.partition())
            nxt[key] = max(nxt.get(key, 0), m.offset() + 1)
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in nxt.items()], asynchronous=False
            )
            self.stats.commits += 1
        except KafkaException as exc:
            code = exc.args[0].code() if exc.args else None
            if code not in _REBALANCE_CODES:
                raise
            # The partitions moved during this batch; their new owner re-reads from the last
            # committed offset and the idempotent sinks absorb the repeat.
            log.warning("commit refused by a rebalance (%s); batch will be redelivered", exc)
            self.stats.commit_conflicts += 1

    def rewind(self, msgs: list[Any]) -> None:
        """Seek back to the first offset of each partition in a failed batch."""
        first: dict[tuple[str, int], int] = {}
        for m in msgs:
            key = (m.topic(), m.partition())
            first[key] = min(first.get(key, m.offset()), m.offset())
        assigned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        for (t, p), o in first.items():
            if (t, p) in assigned:
                self.consumer.seek(TopicPartition(t, p, o))
        self.stats.retries += 1

    async def poll(self) -> list[Any]:
        c = self.settings.consumer
        return await asyncio.to_thread(self.consumer.consume, c.batch_size, c.poll_timeout_s)

    def close(self) -> None:
        self.consumer.close()
        self.pg.close()


@ray.remote(num_cpus=0.25, max_restarts=0)
class ConsumerActor:
    """One member of the scoring consumer group."""

    def __init__(
        self, settings: Settings, app_name: str, scorer_name: str, group_id: str | None = None
    ) -> None:
        from ray import serve

        logging.basicConfig(level=logging.INFO)
        scorer = serve.get_deployment_handle(scorer_name, app_name=app_name)
        self.loop = ScoringLoop(settings, scorer, group_id)
        self._stop = False

    async def run(
        self, *, max_batches: int | None = None, stop_after_idle_s: float | None = None, commit: bool = True
    ) -> dict[str, int]:
        """Consume until ``stop()``, ``max_batches`` batches, or ``stop_after_idle_s`` with no data."""
        idle_since = time.monotonic()
        backoff = 0.1
        while not self._stop:
            msgs = await self.loop.poll()
            if msgs:
                idle_since = time.monotonic()
                try:
                    await self.loop.process(msgs, commit=commit)
                    backoff = 0.1
                except Exception:
                    # A stage is down or slow: nothing of this batch was committed, so re-read
                    # it after a pause instead of skipping it (no loss; sinks are idempotent).
                    log.exception("batch failed; rewinding and retrying in %.1f s", backoff)
                    self.loop.rewind(msgs)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 10.0)
                    continue
                if max_batches is not None and self.loop.stats.batches >= max_batches:
                    break
            elif not self.loop.consumer.assignment():
                idle_since = time.monotonic()  # still joining the group: not idle yet
            elif stop_after_idle_s is not None and time.monotonic() - idle_since > stop_after_idle_s:
                break
        return self.stats()

    def stop(self) -> None:
        self._stop = True

    def stats(self) -> dict[str, int]:
        return asdict(self.loop.stats)

    def close(self) -> None:
        self.loop.close()


class ConsumerPool:
    """``n`` consumer actors in one group, each running its loop until ``stop``."""

    def __init__(self, settings: Settings, n: int, group_id: str | None = None, **run_kwargs: Any) -> None:
        from serve_deployments.app import SCORER_NAME

        self.actors = [
            ConsumerActor.remote(settings, settings.serve.app_name, SCORER_NAME, group_id)  # type: ignore[attr-defined]
            for _ in range(n)
        ]
        self.runs = [a.run.remote(**run_kwargs) for a in self.actors]

    def stats(self) -> list[dict[str, int]]:
        return list(ray.get([a.stats.remote() for a in self.actors]))

    def wait(self, timeout: float | None = None) -> list[dict[str, int]]:
        """Wait for every loop to end by itself (``max_batches`` / ``stop_after_idle_s``)."""
        return list(ray.get(self.runs, timeout=timeout))

    def stop(self, timeout: float = 60.0) -> list[dict[str, int]]:
        """Let each actor finish and commit its current batch, leave the group, and exit."""
        if not self.actors:
            return []
        ray.get([a.stop.remote() for a in self.actors], timeout=timeout)
        final = self.wait(timeout)
        ray.get([a.close.remote() for a in self.actors], timeout=timeout)
        for a in self.actors:
            ray.kill(a)
        self.actors, self.runs = [], []
        return final
