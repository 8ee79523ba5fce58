"""Ray consumer actors: poll a micro-batch, decode, validate, featurize, score with one
Serve call, write the sinks, and only then commit the offsets (at-least-once delivery with
idempotent sinks = exactly-once effect).

The confluent-kafka Consumer is built inside the actor (librdkafka threads do not survive
pickling) and the actor is async so that the group stays alive while it awaits Serve.

Failure policy, per batch:
- a record that cannot be decoded or validated goes to the dead-letter topic (the batch goes on);
- a *transient* failure (PostgreSQL/Redis/Kafka/Serve down or slow) pauses the partitions,
  retries the same batch with bounded back-off while still polling (so the group keeps the
  member), then resumes; records of partitions revoked meanwhile are dropped uncommitted;
- a *deterministic* failure (the data itself breaks a stage) splits the batch in halves until
  the one poison record is isolated and dead-lettered with the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psycopg2
import ray
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from core.contracts import (
    DecisionRow,
    TxRow,
    decision_json,
    decision_messages,
    decision_tail,
    model_scores_jsons,
)
from core.errors import FraudrayError, StoreUnavailable
from core.families import SCORER_DEPLOYMENT
from core.settings import Settings
from features.catalogue import FEATURE_NAMES
from features.online import OnlineStore
from features.online.decisions import DecisionWriter
from features.validation import validate
from ingest.labels import Label, LabelError, iso_ms, parse_label
from ingest.producer import producer_config
from ingest.serde import TransactionSerde, event_time_ms, registry_from_settings
from ingest.sinks import KafkaSink, PostgresSink
from monitoring.drift import DriftWindow
from monitoring.latency import decision_latencies_ms, kafka_timestamps_ms
from monitoring.metrics import PipelineMetrics

log = logging.getLogger(__name__)

_REBALANCE_CODES = frozenset(
    {KafkaError.ILLEGAL_GENERATION, KafkaError.UNKNOWN_MEMBER_ID, KafkaError.REBALANCE_IN_PROGRESS}
)
STAGES = ("poll", "decode", "features", "score", "sink_pg", "sink_kafka", "commit")
# A batch's own stages: the poll's seconds are recorded per poll that brought records, the
# commit's when it finishes, behind the next batch.
_BATCH_STAGES = STAGES[1:-1]
SCORE_TIMEOUT_S = 30.0
# An owned partition with records after its committed offset that the client has not delivered
# one record of for this long is stuck (librdkafka #5586: an offset lookup refused by a moving
# coordinator is never retried) and the client is replaced. A working client delivers a
# partition's first records within a fetch round; a batch under backlog takes seconds.
UNSTARTED_S = 30.0
UNSTARTED_CHECK_EVERY_S = 5.0
LAG_EVERY_S = 5.0
DRIFT_EVERY_S = 10.0
# Given the settings, the production models' training-window sample per feature (or None):
# injected by the composition root (cluster/), which may read the registry.
DriftReference = Callable[[Settings], Mapping[str, np.ndarray] | None]
MAX_BACKOFF_S = 5.0
PARTITION_FETCH_BYTES = 128 * 1024  # ~600 transactions of ~200 B: a batch spans the partitions


def is_transient(exc: BaseException) -> bool:
    """True when retrying the same batch later can succeed (a service is down or slow)."""
    from ray.exceptions import RayActorError, RayTaskError

    if isinstance(exc, RayTaskError):  # raised inside the replica: judge the cause
        cause = exc.cause if isinstance(exc.cause, BaseException) else None
        return cause is not None and is_transient(cause)
    transient = (
        psycopg2.OperationalError,
        psycopg2.InterfaceError,
        StoreUnavailable,
        KafkaException,
        RayActorError,
        TimeoutError,
        ConnectionError,
        OSError,
    )
    if isinstance(exc, transient):
        return True
    # Serve's own "no replica can take it now" errors live in private modules; match by name.
    return type(exc).__name__ in {"BackPressureError", "DeploymentUnavailableError", "ActorUnavailableError"}


@dataclass
class ConsumerStats:
    polled: int = 0
    scored: int = 0
    new_decisions: int = 0
    dead_lettered: int = 0
    alerts: int = 0
    labels: int = 0  # labels written to PostgreSQL and counted in the online store
    batches: int = 0
    commits: int = 0
    commit_conflicts: int = 0  # commit refused by a rebalance: the new owner redelivers
    retries: int = 0  # transient failures survived by pausing and retrying
    splits: int = 0  # deterministic failures isolated by splitting a batch
    client_restarts: int = 0  # Kafka clients replaced because an owned partition never started
    store_reapplied: int = 0  # batches applied again: the online store lost state under them
    state_cache_hits: int = 0  # user states the online store read from this consumer's cache
    first_record_at: float = 0.0  # wall clock (s) of the first record polled
    last_batch_at: float = 0.0  # wall clock (s) of the last committed batch
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    lag: dict[int, int] = field(default_factory=dict)  # partition -> records behind


@dataclass
class _Decoded:
    """One polled batch on its way through the stages."""

    records: list[dict[str, Any]] = field(default_factory=list)  # valid transactions
    sources: list[Any] = field(default_factory=list)  # their Kafka messages
    labels: list[Label] = field(default_factory=list)
    rejects: list[tuple[Any, str, str]] = field(default_factory=list)  # (message, error, reason)
    tx_rows: list[TxRow] = field(default_factory=list)
    decision_rows: list[DecisionRow] = field(default_factory=list)
    # per decision: (user id, is fraud, the decisions topic's message, also the alert's)
    decisions: list[tuple[str, bool, bytes]] = field(default_factory=list)
    # per user, the decision of its latest transaction in the batch: (tx id, JSON) for /predict
    latest: dict[str, tuple[str, str]] = field(default_factory=dict)
    matrix: np.ndarray | None = None  # the records' features, from the online store
    # the online store's instance at the last check before the batch was applied (_keep_in_store)
    store_before: tuple[str, ...] | None = None
    stage_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(_BATCH_STAGES, 0.0))
    # the scored records' pipeline and event-to-decision seconds (monitoring/latency.py)
    latencies_s: np.ndarray = field(default_factory=lambda: np.empty(0))
    event_latencies_s: np.ndarray = field(default_factory=lambda: np.empty(0))


class _Timer:
    def __init__(self, stats: ConsumerStats) -> None:
        self._stats = stats

    def __call__(self, stage: str, batch: _Decoded | None = None) -> _Stage:
        """Seconds of ``stage`` added to the consumer's totals, and to ``batch``'s own."""
        return _Stage(self._stats.stage_s, stage, None if batch is None else batch.stage_s)


class _Stage:
    def __init__(self, sink: dict[str, float], stage: str, batch_sink: dict[str, float] | None) -> None:
        self._sink, self._stage, self._batch_sink = sink, stage, batch_sink

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()

    def __exit__(self, *_: object) -> None:
        seconds = time.perf_counter() - self._t0
        self._sink[self._stage] += seconds
        if self._batch_sink is not None:
            self._batch_sink[self._stage] += seconds


def consumer_config(settings: Settings, group_id: str | None = None) -> dict[str, Any]:
    """The scoring consumer's librdkafka configuration (a member of ``group_id``, or of the
    configured group)."""
    k = settings.kafka
    return k.client_config(
        "consumer",
        **{
            "group.id": group_id or k.consumer_group,
            # KIP-848 (Kafka 4): incremental rebalances driven by the broker. The classic
            # protocol's cooperative-sticky assignor left retained partitions unfetched
            # after a commit refused with ILLEGAL_GENERATION (librdkafka #4059).
            "group.protocol": "consumer",
            # Range, per topic: each member gets its share of `transactions` AND of
            # `labels`. The broker's default (uniform) balances the total count only, and
            # gave one of two actors all six label partitions and the other all the work.
            "group.remote.assignor": "range",
            "max.poll.interval.ms": 300_000,
            # A fetch waits for this much or this long (ConsumerSettings): fewer, fuller
            # fetches below capacity, where the broker's CPU went on near-empty ones.
            "fetch.min.bytes": settings.consumer.fetch_min_bytes,
            "fetch.wait.max.ms": settings.consumer.fetch_wait_max_ms,
            # At most ~one batch of records per partition per fetch (default 1 MiB, ~5,000):
            # the local queue then interleaves an actor's partitions, so every partition's
            # offset moves every few batches. With 1 MiB a backlog was worked off one
            # partition at a time and the last one waited ~12 s per partition ahead of it
            # (fault suite: partitions first committed 0.1 / 11 / 24 / 36 s after a kill).
            "max.partition.fetch.bytes": PARTITION_FETCH_BYTES,
        },
    )


class ScoringLoop:
    """The per-batch pipeline, independent of Ray so it can be driven from any process."""

    def __init__(
        self,
        settings: Settings,
        scorer: Any,
        group_id: str | None = None,
        metrics: PipelineMetrics | None = None,
        drift_reference: DriftReference | None = None,
    ) -> None:
        k = settings.kafka
        self.settings = settings
        self.scorer = scorer
        # The reader side of the Schema Registry: checks the subject, registers nothing.
        self.serde = TransactionSerde(registry_from_settings(settings), k.transactions_topic, role="consumer")
        self.group_id = group_id
        self.consumer = self._subscribed_client()
        self.pg = PostgresSink(settings.postgres.dsn.get_secret_value())
        self.kafka_out = KafkaSink(producer_config(settings, **{"linger.ms": 5}))
        self.store = OnlineStore(settings.redis.urls(), cache_bytes=settings.consumer.state_cache_mb << 20)
        self.decisions = DecisionWriter(settings.redis.urls())
        self.stats = ConsumerStats()
        self.timed = _Timer(self.stats)
        self._lag_checked = 0.0
        self.metrics = metrics
        self._drift_reference = drift_reference
        self._drift: DriftWindow | None = None
        self._drift_version: str | None = None
        self._drift_checked = 0.0
        # Offsets are committed behind the next batch (see _commit): one thread, so a
        # partition's commits stay in order; what was processed and is not committed yet.
        self._committer = ThreadPoolExecutor(1, thread_name_prefix="commit")
        self._in_flight: Future[tuple[dict[tuple[str, int], int], float]] | None = None
        self._unsettled: dict[tuple[str, int], int] = {}
        self._commit_started = -math.inf  # time.monotonic() of the last commit started
        # owned partition -> time.monotonic() it was first seen without a position (see unstarted)
        self._unstarted_since: dict[tuple[str, int], float] = {}
        self._unstarted_checked = 0.0
        self._unstarted_check: asyncio.Future[list[TopicPartition]] | None = None
        self._retries_seen = 0
        self._store_instance: tuple[str, ...] | None = None  # the online store's, at the last check
        # The online store's writers take turns: a batch's first half and a second half that
        # applies its batch again (_keep_in_store).
        self._store_lock = asyncio.Lock()
        # The second half of the last batch (see _overlapped) while it runs, and its messages.
        self._tail: tuple[asyncio.Future[None], list[Any]] | None = None

    def _subscribed_client(self) -> Consumer:
        k = self.settings.kafka
        consumer = Consumer(consumer_config(self.settings, self.group_id))
        # Labels ride in the same group: their rows land in PostgreSQL and their counts in the
        # online store's merchant risk, committed with the batch like everything else.
        consumer.subscribe([k.transactions_topic, k.labels_topic])
        return consumer

    async def warm_up(self) -> None:
        """Open what the first batch would otherwise open while its records wait: the Serve
        handle's router (an empty matrix through the Ensemble and its members: no model runs,
        nothing is counted), the PostgreSQL session, the online store's Redis connections. A
        failure is only logged: the first batch meets it again under the retry policy."""
        try:
            empty = np.empty((0, len(FEATURE_NAMES)), dtype=np.float32)
            await asyncio.wait_for(self.scorer.score.remote(empty, False), SCORE_TIMEOUT_S)
            await asyncio.to_thread(self.pg.connect)
            await asyncio.to_thread(self.store.ping)
            self._store_instance = await asyncio.to_thread(self.store.instance)
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation, never a reason to stop
            log.warning("consumer warm-up incomplete: %r", exc)

    # -- polling -------------------------------------------------------------------
    async def poll(self) -> list[Any]:
        c = self.settings.consumer
        t0 = time.perf_counter()
        msgs = await asyncio.to_thread(self._consume, c.batch_size, c.poll_timeout_s)
        seconds = time.perf_counter() - t0
        self.stats.stage_s["poll"] += seconds
        if msgs and self.metrics is not None:  # an idle poll's wait is not a stage of any batch
            self.metrics.observe_stage("poll", seconds)
        for m in msgs:
            err = m.error()
            if err is not None and err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error: %s", err)
        good = [m for m in msgs if m.error() is None]
        if good and not self.stats.first_record_at:
            self.stats.first_record_at = time.time()
        self.stats.polled += len(good)
        return good

    def _consume(self, n: int, timeout_s: float) -> list[Any]:
        """What the client has already fetched (up to ``n``) at once; only when that is nothing,
        the first records to arrive within ``timeout_s`` and whatever came with them. A batch is
        then what accumulated while the previous one was processed: under a backlog that is ``n``,
        at a low rate a record waits for no timer (waiting for a full ``n`` kept each one up to
        ``timeout_s`` in the client's queue)."""
        msgs = self.consumer.consume(n, 0)
        if msgs:
            return msgs
        msgs = self.consumer.consume(1, timeout_s)
        return msgs + self.consumer.consume(n - 1, 0) if msgs and n > 1 else msgs

    # -- one batch, with the failure policy ------------------------------------------
    async def handle(self, msgs: list[Any], *, commit: bool = True, failed: Exception | None = None) -> None:
        """Process ``msgs`` until done: retry transient failures, split deterministic ones.
        ``failed``: what a first attempt made elsewhere raised (the policy starts from it)."""
        backoff = 0.1
        paused: list[TopicPartition] = []
        try:
            while msgs:
                if failed is None:
                    try:
                        await self._process(msgs, commit=commit)
                        return
                    except Exception as exc:  # noqa: BLE001 - classified just below
                        failed = exc
                error, failed = failed, None
                if not is_transient(error):
                    await self._split(msgs, error, commit=commit)
                    return
                self.stats.retries += 1
                if self.metrics is not None:
                    self.metrics.retry()
                log.warning("batch of %d hit %r; pausing, retry in %.1f s", len(msgs), error, backoff)
                if not paused:
                    paused = list(self.consumer.assignment())
                    self.consumer.pause(paused)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_S)
                # Poll while paused (returns nothing) so rebalances are served, then drop
                # what we no longer own: its new owner re-reads it from the committed offset.
                await asyncio.to_thread(self.consumer.consume, 1, 0)
                owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
                msgs = [m for m in msgs if (m.topic(), m.partition()) in owned]
        finally:
            if paused:
                owned_now = set(self.consumer.assignment())
                self.consumer.resume([tp for tp in paused if tp in owned_now])

    async def _split(self, msgs: list[Any], exc: Exception, *, commit: bool) -> None:
        if len(msgs) == 1:
            log.warning("poison record at %s[%d]@%d: %r", msgs[0].topic(), msgs[0].partition(),
                        msgs[0].offset(), exc)  # fmt: skip
            self._dead_letter(msgs[0], type(exc).__name__, f"processing failed: {exc}")
            with self.timed("sink_kafka"):
                await asyncio.to_thread(self.kafka_out.flush)
            if commit:
                await self._commit(msgs)
            return
        self.stats.splits += 1
        half = len(msgs) // 2
        # Halves keep offset order within each partition, so committing them in turn is safe.
        await self.handle(msgs[:half], commit=commit)
        await self.handle(msgs[half:], commit=commit)

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

    def _decode(self, msgs: list[Any]) -> _Decoded:
        """Transactions decoded and validated, labels parsed, the rest marked for the DLQ."""
        k = self.settings.kafka
        now_ms = int(time.time() * 1000)
        out = _Decoded()
        tx_msgs = [m for m in msgs if m.topic() != k.labels_topic]
        decoded, failures = self.serde.decode_many([m.value() for m in tx_msgs])
        out.rejects = [(tx_msgs[f.index], f.error, f.message) for f in failures]
        for i, rec in decoded:
            reason = validate(rec, now_ms)
            if reason is None:
                out.records.append(rec)
                out.sources.append(tx_msgs[i])
            else:
                out.rejects.append((tx_msgs[i], "ValidationError", reason))
        for m in msgs:
            if m.topic() == k.labels_topic:
                try:
                    out.labels.append(parse_label(m.value(), now_ms))
                except LabelError as exc:
                    out.rejects.append((m, "LabelError", str(exc)))
        return out

    async def _score(self, batch: _Decoded) -> tuple[np.ndarray, np.ndarray]:
        """One Serve call for the batch's features; fills the batch's rows and decisions;
        returns the pipeline and the event-to-decision latencies in seconds
        (monitoring/latency.py)."""
        records, matrix = batch.records, batch.matrix
        assert matrix is not None, "the batch's features come first (_front)"
        with self.timed("score", batch):
            result = await asyncio.wait_for(self.scorer.score.remote(matrix), SCORE_TIMEOUT_S)
        scores, flags, version = result["scores"], result["is_fraud"], result["model_version"]
        self._observe_drift(matrix, version)
        per_model = result["model_scores"]  # each member's raw score, kept in decisions.scores
        shadow, shadow_version = result.get("shadow_scores"), result.get("shadow_version")  # challenger, #23
        event_ms = np.fromiter((event_time_ms(r) for r in records), dtype=np.int64, count=len(records))
        done_ms = time.time() * 1000
        pipeline_ms, event_latency_ms = decision_latencies_ms(
            done_ms, kafka_timestamps_ms(batch.sources), event_ms
        )
        batch.tx_rows = [
            TxRow(r["transaction_id"], r["user_id"], r["merchant_id"], r["amount"], r["currency"],
             r["event_time"], r["country"], r["device_id"], r["channel"], r["merchant_category"],
             r["lat"], r["lon"], r["ip"], m.partition(), m.offset())
            for r, m in zip(records, batch.sources, strict=True)
        ]  # fmt: skip
        n = len(records)
        tx_ids = [r["transaction_id"] for r in records]
        user_ids = [r["user_id"] for r in records]
        newest: dict[str, int] = {}  # user -> index of its latest record (event time, tx id)
        keys = list(zip(event_ms.tolist(), tx_ids, strict=True))
        for i, key in enumerate(keys):
            j = newest.get(user_ids[i])
            if j is None or key > keys[j]:
                newest[user_ids[i]] = i
        # The JSON of every decision, built per batch (core.contracts): the per-model scores
        # (PostgreSQL's decisions.scores, /predict's copy), the decisions topic's message, and
        # /predict's copy from the batch's shared part encoded once and the row's scores' JSON.
        scores_json, compact = model_scores_jsons(per_model, n)
        messages = decision_messages(
            tx_ids, user_ids, scores, flags, model_version=version, model_scores=compact
        )
        fraud = flags.astype(bool).tolist()
        score_list = np.asarray(scores, dtype=np.float64).tolist()
        batch.decisions = list(zip(user_ids, fraud, messages, strict=True))
        tail = decision_tail(result["threshold"], version, result["model_versions"])
        for user, i in newest.items():
            batch.latest[user] = (tx_ids[i], decision_json(score_list[i], fraud[i], scores_json[i], tail))
        shadow_list = [None] * n if shadow is None else np.asarray(shadow, dtype=np.float64).tolist()
        batch.decision_rows = [
            DecisionRow(t, u, sj, sc, f, version, p, e, sh, shadow_version)
            for t, u, sj, sc, f, p, e, sh in zip(
                tx_ids, user_ids, scores_json, score_list, fraud, pipeline_ms.tolist(),
                event_latency_ms.tolist(), shadow_list, strict=True,
            )
        ]  # fmt: skip
        return pipeline_ms / 1000.0, event_latency_ms / 1000.0

    def _observe_drift(self, matrix: np.ndarray, model_version: str) -> None:
        """Feed the live features to a PSI window against the production models' training
        window (reloaded when the version changes) and export PSI every ``DRIFT_EVERY_S``."""
        if self._drift_reference is None or self.metrics is None:
            return
        if model_version != self._drift_version:
            self._drift_version = model_version
            try:
                reference = self._drift_reference(self.settings)
            except Exception as exc:  # noqa: BLE001 - drift is an observation, never a reason to stop
                log.warning("no drift reference for %s: %r", model_version, exc)
                reference = None
            self._drift = DriftWindow(reference, FEATURE_NAMES) if reference else None
        if self._drift is None:
            return
        self._drift.add(matrix)
        now = time.monotonic()
        # Until the window holds enough rows, psi_by_feature is empty and the next batch retries.
        if now - self._drift_checked >= DRIFT_EVERY_S and self.metrics.observe_drift_window(self._drift):
            self._drift_checked = now

    async def _process(self, msgs: list[Any], *, commit: bool = True) -> None:
        """Run one batch through every stage; commit only when all sinks succeeded."""
        await self._back(msgs, await self._front(msgs), commit=commit)

    async def _front(self, msgs: list[Any]) -> _Decoded:
        """A batch's first half: decoded and validated, the online store (its transactions
        applied, the features of each as of its event, and its labels counted: what the next
        batch's features read, so first halves run in batch order), then the Serve call: a
        record's decision is made here, and only its writes wait in the second half."""
        t0 = time.perf_counter()
        batch = self._decode(msgs)
        batch.stage_s["decode"] = seconds = time.perf_counter() - t0
        self.stats.stage_s["decode"] += seconds
        batch.store_before = self._store_instance
        async with self._store_lock:
            with self.timed("features", batch):
                if batch.records:
                    batch.matrix = await asyncio.to_thread(self.store.update_and_compute, batch.records)
                if batch.labels:
                    await asyncio.to_thread(self.store.apply_labels, [x.as_dict() for x in batch.labels])
        if batch.records:
            batch.latencies_s, batch.event_latencies_s = await self._score(batch)
        return batch

    async def _back(self, msgs: list[Any], batch: _Decoded, *, commit: bool = True) -> None:
        """A batch's second half: the sinks, the decisions for /predict, the offsets' commit."""
        new, alerts = await self._sink(batch)
        if batch.records or batch.labels:
            await self._keep_in_store(batch)
        if batch.latest:
            with self.timed("features", batch):  # the online store's stage: a write to it
                await asyncio.to_thread(self._remember_decisions, batch.latest)
        if commit:
            await self._commit(msgs)
        # Counted only once every sink succeeded, so a retried batch is not counted twice.
        if self.metrics is not None:
            self.metrics.observe_batch(
                stage_seconds=batch.stage_s, size=len(msgs), scored=len(batch.records), fraud=alerts,
                dead_letters=[error for _m, error, _r in batch.rejects], latencies_s=batch.latencies_s,
                event_latencies_s=batch.event_latencies_s,
            )  # fmt: skip
        self.stats.scored += len(batch.records)
        self.stats.labels += len(batch.labels)
        self.stats.new_decisions += new
        self.stats.alerts += alerts
        self.stats.batches += 1
        self.stats.last_batch_at = time.time()
        self.stats.state_cache_hits = self.store.cache_hits

    async def _sink(self, batch: _Decoded) -> tuple[int, int]:
        """PostgreSQL and the Kafka outputs side by side: each waits on its own server. Both
        are awaited before anything fails the batch (nothing is left running behind a retry),
        and the first failure in that order is raised. Returns (new decisions, alerts)."""
        k = self.settings.kafka

        async def to_pg() -> int:
            if not (batch.tx_rows or batch.labels):
                return 0
            with self.timed("sink_pg", batch):
                label_rows = [(x.transaction_id, x.is_fraud, x.scenario, iso_ms(x.labelled_at_ms))
                              for x in batch.labels]  # fmt: skip
                return int(
                    await asyncio.to_thread(self.pg.write, batch.tx_rows, batch.decision_rows, label_rows)
                )

        async def to_kafka() -> int:
            alerts = 0
            with self.timed("sink_kafka", batch):
                for user, is_fraud, message in batch.decisions:
                    self.kafka_out.send(k.decisions_topic, user, message)
                    if is_fraud:
                        self.kafka_out.send(k.alerts_topic, user, message)
                        alerts += 1
                for msg, error, reason in batch.rejects:
                    self._dead_letter(msg, error, reason)
                await asyncio.to_thread(self.kafka_out.flush)
            return alerts

        new, alerts = await asyncio.gather(to_pg(), to_kafka(), return_exceptions=True)
        for result in (new, alerts):
            if isinstance(result, BaseException):
                raise result
        assert isinstance(new, int) and isinstance(alerts, int)
        return new, alerts

    async def _keep_in_store(self, batch: _Decoded) -> None:
        """Make sure the online store still holds what this batch applied, now that PostgreSQL
        has its rows. A store that lost its state (a restart without its data, a flush) is
        refilled from PostgreSQL by features/rebuild.py, whose read may have begun before these
        rows were there: so when the store is not the one of the last check, the batch's
        transactions and labels are applied again (idempotent per id) to the one there is now.
        Anything applied before a loss whose rows reached PostgreSQL before the check is then
        in the store, or in PostgreSQL before the next loss (which its rebuild reads). The
        check compares with the last check done before this batch was applied (``_front``
        keeps it): with the halves of two batches overlapping, the next batch may be applied
        before this batch's check. A failure here fails the batch into the retry policy like
        any sink."""
        with self.timed("features", batch):
            now = await asyncio.to_thread(self.store.instance)
            self._store_instance = now
            if now == batch.store_before:
                return
            if batch.store_before is not None:
                log.warning("online store changed under a batch of %d (restarted or flushed): "
                            "applying it again", len(batch.records) + len(batch.labels))  # fmt: skip
            async with self._store_lock:
                if batch.records:
                    await asyncio.to_thread(self.store.update_and_compute, batch.records)
                if batch.labels:
                    await asyncio.to_thread(self.store.apply_labels, [x.as_dict() for x in batch.labels])
        self.stats.store_reapplied += 1

    def _remember_decisions(self, latest: dict[str, tuple[str, str]]) -> None:
        """The users' latest decisions for GET /predict, once PostgreSQL has them. A cache: if
        Redis refuses, /predict scores those users again (same features, same answer) and the
        batch goes on."""
        try:
            self.decisions.write(latest)
        except FraudrayError as exc:
            log.warning("%d decisions not cached for /predict: %r", len(latest), exc)

    async def _commit(self, msgs: list[Any]) -> None:
        """Commit this batch's offsets (next offset per partition) behind the next batch: wait
        for the commit in flight, then start one of every offset processed and not yet
        committed, which runs while the next batch is polled and processed (a synchronous
        commit cost a batch ~5-7 ms on this box). A failed commit raises here, at the next
        batch (or at ``flush_commits``), into that batch's retry policy; its offsets stay
        unsettled and go with the next commit, so none is lost. Offsets are only ever
        committed after every sink of their batch succeeded, as before. With
        ``consumer.commit_interval_s`` > 0, a batch that ends within that interval of the last
        commit's start starts none: its offsets go with a later commit or flush."""
        for m in msgs:
            key = (m.topic(), m.partition())
            self._unsettled[key] = max(self._unsettled.get(key, 0), m.offset() + 1)
        if time.monotonic() - self._commit_started < self.settings.consumer.commit_interval_s:
            # Not yet: these offsets go with a later commit. One that finished meanwhile is
            # settled now, so its failure still fails this batch.
            if self._in_flight is not None and self._in_flight.done():
                await self._settle()
            return
        await self._settle()
        self._start_commit()

    def _start_commit(self) -> None:
        self._commit_started = time.monotonic()
        self._in_flight = self._committer.submit(self._commit_now, dict(self._unsettled))

    async def _settle(self) -> None:
        """Wait for the commit in flight; forget what it settled (raises what it raised)."""
        in_flight, self._in_flight = self._in_flight, None
        if in_flight is None:
            return
        settled, seconds = await asyncio.wrap_future(in_flight)
        for key, offset in settled.items():
            if self._unsettled.get(key) == offset:  # not moved on by a later batch meanwhile
                del self._unsettled[key]
        if self.metrics is not None:  # recorded when it finishes, not with a batch
            self.metrics.observe_stage("commit", seconds)

    async def flush_commits(self) -> None:
        """Commit everything processed now (when idle, before stopping)."""
        await self._settle()
        if self._unsettled:
            self._start_commit()
            await self._settle()

    def _commit_now(self, offsets: dict[tuple[str, int], int]) -> tuple[dict[tuple[str, int], int], float]:
        """Commit ``offsets`` of the partitions this member owns (in the committer thread).
        Returns the offsets settled (committed, or of partitions it no longer owns: their new
        owner re-reads them from the last committed offset; the idempotent sinks absorb it) and
        the seconds the commit took."""
        owned = {(tp.topic, tp.partition) for tp in self.consumer.assignment()}
        mine = {key: offset for key, offset in offsets.items() if key in owned}
        gone = {key: offset for key, offset in offsets.items() if key not in owned}
        if not mine:
            return gone, 0.0
        t0 = time.perf_counter()
        try:
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o) for (t, p), o in mine.items()], asynchronous=False
            )
            self.stats.commits += 1
            settled = offsets
        except KafkaException as exc:
            if exc.args[0].code() not in _REBALANCE_CODES:
                raise
            # The group moved partitions meanwhile: those still ours go with the next commit.
            log.warning("commit refused by a rebalance (%s); retried with the next commit", exc)
            self.stats.commit_conflicts += 1
            settled = gone
        finally:
            seconds = time.perf_counter() - t0
            self.stats.stage_s["commit"] += seconds
        return settled, seconds

    def refresh_lag(self) -> None:
        """Records behind the high watermark per owned partition."""
        lag: dict[int, int] = {}
        owned = [
            tp for tp in self.consumer.assignment() if tp.topic == self.settings.kafka.transactions_topic
        ]
        for tp in self.consumer.position(owned):
            # The high watermark librdkafka keeps from each fetch response: no broker round trip
            # (asking the broker cost ~0.1 s per partition, and the loop waits for this call).
            # Only a partition with nothing fetched yet has none cached.
            try:
                _low, high = self.consumer.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    _low, high = self.consumer.get_watermark_offsets(tp, timeout=2, cached=False)
            except KafkaException as exc:
                # While the broker restarts the client may not know the partition yet
                # (_UNKNOWN_PARTITION, seen in the fault suite's broker restart): this partition's
                # lag is unknown this round; lag is only a metric.
                log.info("lag of %s[%d] not known now: %s", tp.topic, tp.partition, exc)
                continue
            lag[tp.partition] = max(0, high - tp.offset) if tp.offset >= 0 else high
        self.stats.lag = lag
        if self.metrics is not None:
            self.metrics.set_lag(lag)

    async def run(
        self,
        should_stop: Callable[[], bool],
        *,
        max_batches: int | None = None,
        stop_after_idle_s: float | None = None,
        commit: bool = True,
    ) -> None:
        """Consume until ``should_stop()``, ``max_batches`` batches, or ``stop_after_idle_s``
        with no data; commit what is processed when idle and before returning."""
        await self.warm_up()
        try:
            await self._loop(should_stop, max_batches, stop_after_idle_s, commit)
        finally:
            await self._finish_tail(commit)
        if self._unstarted_check is not None:  # let it finish before the client may close
            with contextlib.suppress(KafkaException):
                await self._unstarted_check
        await self._flush_commits_or_keep(commit)

    async def _loop(
        self,
        should_stop: Callable[[], bool],
        max_batches: int | None,
        stop_after_idle_s: float | None,
        commit: bool,
    ) -> None:
        c, idle_since = self.settings.consumer, time.monotonic()
        while not should_stop():
            msgs = await self.poll()
            if msgs:
                idle_since = time.monotonic()
                # A full batch means a backlog: overlapped, for throughput. Below capacity one
                # batch at a time: a record's own stages ran slower beside the other batch's
                # (docs/consumer.md, "Two batches at once").
                if c.overlap and len(msgs) >= c.batch_size:
                    await self._overlapped(msgs, commit)
                else:
                    await self._finish_tail(commit)
                    await self.handle(msgs, commit=commit)
                if max_batches is not None and self.stats.batches + (self._tail is not None) >= max_batches:
                    break
            elif not self.consumer.assignment():
                idle_since = time.monotonic()  # still joining the group: not idle yet
            else:
                await self._finish_tail(commit)
                await self._flush_commits_or_keep(commit)  # nothing came: commit what is processed
                if stop_after_idle_s is not None and time.monotonic() - idle_since > stop_after_idle_s:
                    break
            # The periodic checks are timed here, on the loop: a batch pays no thread hop
            # (~0.1 ms) for a check that is not due.
            if time.monotonic() - self._lag_checked >= LAG_EVERY_S:
                self._lag_checked = time.monotonic()
                try:
                    await asyncio.to_thread(self.refresh_lag)
                except KafkaException as exc:  # a watermark query timed out: lag is only a metric
                    log.warning("consumer lag not refreshed: %s", exc)
            await self._check_unstarted(commit)

    async def _overlapped(self, msgs: list[Any], commit: bool) -> None:
        """This batch's first half (decode, the online store, the Serve call) while the previous
        batch's second half (the sinks, the commit) runs; then this batch's second half starts
        and the loop polls the next. Second halves run one at a time in batch order, so the
        sinks and the commits keep the order of the batches; a first half only starts after
        the one before it, so features see every earlier batch. A batch whose half fails goes
        through ``handle`` (the whole batch, with the retry and split policy) once nothing else
        runs: its first half applied again is idempotent per transaction id, as a redelivery is."""
        try:
            batch = await self._front(msgs)
        except Exception as exc:  # noqa: BLE001 - the failure policy takes it, below
            await self._finish_tail(commit)
            await self.handle(msgs, commit=commit, failed=exc)
            return
        await self._finish_tail(commit)
        self._tail = (asyncio.ensure_future(self._back(msgs, batch, commit=commit)), msgs)

    async def _finish_tail(self, commit: bool) -> None:
        """Wait for the second half in flight; a batch it failed is handled whole now."""
        tail, self._tail = self._tail, None
        if tail is None:
            return
        back, msgs = tail
        try:
            await back
        except Exception as exc:  # noqa: BLE001 - the failure policy takes it
            await self.handle(msgs, commit=commit, failed=exc)

    async def _flush_commits_or_keep(self, commit: bool) -> None:
        if not commit:
            return
        try:
            await self.flush_commits()
        except KafkaException as exc:  # kept: committed with the next batch or the next flush
            log.warning("offsets not committed yet: %s", exc)

    async def _check_unstarted(self, commit: bool) -> None:
        """Start a check for unstarted partitions in a thread (its broker queries do not hold
        up the batches), or act on the one that finished."""
        check = self._unstarted_check
        if check is None:
            if time.monotonic() - self._unstarted_checked >= UNSTARTED_CHECK_EVERY_S:
                self._unstarted_checked = time.monotonic()
                self._unstarted_check = asyncio.ensure_future(asyncio.to_thread(self.unstarted))
            return
        if not check.done():
            return
        self._unstarted_check = None
        try:
            stuck = check.result()
        except KafkaException as exc:  # asked again at the next check
            log.warning("unstarted partitions not checked: %s", exc)
            return
        if stuck:
            await self.replace_client(stuck, commit=commit)

    def unstarted(self, after_s: float = UNSTARTED_S) -> list[TopicPartition]:
        """Owned partitions the client has delivered no record of for ``after_s`` (counted
        from the first check that saw each without a position) while records wait after their
        committed offset. Time spent retrying a batch (partitions paused) does not count."""
        now = time.monotonic()
        if self.stats.retries != self._retries_seen:  # paused meanwhile: start the clocks again
            self._retries_seen = self.stats.retries
            self._unstarted_since.clear()
        since: dict[tuple[str, int], float] = {}
        overdue = []
        for tp in self.consumer.position(self.consumer.assignment()):
            if tp.offset >= 0:
                continue  # delivering
            key = (tp.topic, tp.partition)
            since[key] = self._unstarted_since.get(key, now)
            if now - since[key] >= after_s:
                overdue.append(TopicPartition(tp.topic, tp.partition))
        self._unstarted_since = since
        if not overdue:
            return []
        stuck = []
        for tp in self.consumer.committed(overdue, timeout=10):
            low, high = self.consumer.get_watermark_offsets(tp, timeout=10, cached=False)
            if high > (tp.offset if tp.offset >= 0 else low):
                stuck.append(tp)
            else:  # nothing waiting (an idle partition): asked again after another ``after_s``
                self._unstarted_since[(tp.topic, tp.partition)] = now
        return stuck

    async def replace_client(self, stuck: list[TopicPartition], *, commit: bool = True) -> None:
        """Commit what is processed, close the Kafka client (it leaves the group) and join
        again with a new one: the group hands the partitions out again and their committed
        offsets are looked up anew (restarting the consumer is what recovers librdkafka #5586).
        Offsets a failed commit kept go with the new client's next commit."""
        log.warning(
            "partitions %s have records waiting and delivered none for %.0f s: replacing the Kafka client",
            [f"{tp.topic}[{tp.partition}]@{tp.offset}" for tp in stuck], UNSTARTED_S,
        )  # fmt: skip
        await self._finish_tail(commit)
        await self._flush_commits_or_keep(commit)
        old = self.consumer
        await asyncio.to_thread(old.close)
        self.consumer = self._subscribed_client()
        self._unstarted_since.clear()
        self.stats.client_restarts += 1

    def close(self) -> None:
        """Close the clients (a commit still in flight finishes first; call ``flush_commits``
        before to commit what is processed)."""
        self._committer.shutdown(wait=True)
        self.consumer.close()
        self.pg.close()


ACTOR_CPUS = 0.25  # Ray's logical CPUs per consumer actor: four fit a core on paper
# CPython's cyclic GC runs a young-generation pass every 700 net allocations and a full pass
# every 100 of those; a batch allocates ~10^5 short-lived objects (records, users' states), so
# the full passes, which walk every object the process holds (Ray, pandas, the clients), ran
# many times per batch. Everything loaded at start-up is frozen out of the collector's walks
# and the young generation holds this many allocations (the batch's garbage is freed by
# reference counting; cycles are rare and still collected). docs/consumer.md.
GC_THRESHOLD = (50_000, 20, 100)


def tune_gc() -> None:
    """The consumer's collector settings for this process (see GC_THRESHOLD): what is loaded
    now frozen, the young generation larger."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLD)


# Restarted after a crash, with the `run` call retried: the new consumer resumes from the
# committed offsets, and whatever the dead one had half-written is absorbed by idempotency.
# Spread over the nodes: Ray's default packs small actors onto one node until it is half busy,
# and a pool is only faster than one actor where its members get cores of their own.
# A shell around ScoringLoop: Ray ships this class's methods by value, and a class they name
# whose module is not importable by its own name is re-created in the actor as a copy
# (confluent-kafka's cimpl.KafkaException is one: an `except KafkaException` here would catch
# nothing). ScoringLoop's methods come from the imported module, so the logic lives there.
@ray.remote(num_cpus=ACTOR_CPUS, max_restarts=-1, max_task_retries=-1, scheduling_strategy="SPREAD")
class ConsumerActor:
    """One member of the scoring consumer group."""

    def __init__(
        self,
        settings: Settings,
        app_name: str,
        scorer_name: str,
        group_id: str | None = None,
        drift_reference: DriftReference | None = None,
    ) -> None:
        from ray import serve

        logging.basicConfig(level=logging.INFO)
        scorer = serve.get_deployment_handle(scorer_name, app_name=app_name)
        self.loop = ScoringLoop(settings, scorer, group_id, PipelineMetrics(), drift_reference)
        self._stop = False
        tune_gc()

    async def run(
        self, *, max_batches: int | None = None, stop_after_idle_s: float | None = None, commit: bool = True
    ) -> dict[str, Any]:
        """Consume until ``stop()``, ``max_batches`` batches, or ``stop_after_idle_s`` with no data."""
        await self.loop.run(
            lambda: self._stop, max_batches=max_batches, stop_after_idle_s=stop_after_idle_s, commit=commit
        )
        return self.stats()

    def stop(self) -> None:
        self._stop = True

    def assigned(self) -> list[int]:
        """Partitions of the transactions topic this member owns right now."""
        topic = self.loop.settings.kafka.transactions_topic
        return sorted(tp.partition for tp in self.loop.consumer.assignment() if tp.topic == topic)

    def stats(self) -> dict[str, Any]:
        return asdict(self.loop.stats)

    def close(self) -> None:
        self.loop.close()


class ConsumerPool:
    """``n`` consumer actors in one group, each running its loop until ``stop``."""

    def __init__(
        self,
        settings: Settings,
        n: int,
        group_id: str | None = None,
        *,
        drift_reference: DriftReference | None = None,
        **run_kwargs: Any,
    ) -> None:
        self.settings, self.group_id, self.run_kwargs = settings, group_id, run_kwargs
        self.drift_reference = drift_reference
        self.actors: list[Any] = []
        self.runs: list[Any] = []
        for _ in range(n):
            self.add()

    def add(self) -> Any:
        """Start one more member (the group rebalances)."""
        actor = ConsumerActor.remote(  # type: ignore[attr-defined]
            self.settings, self.settings.serve.app_name, SCORER_DEPLOYMENT, self.group_id,
            self.drift_reference,
        )  # fmt: skip
        self.actors.append(actor)
        self.runs.append(actor.run.remote(**self.run_kwargs))
        return actor

    def remove(self, timeout: float = 60.0) -> dict[str, Any]:
        """Gracefully stop the newest member (finish batch, commit, leave the group)."""
        actor, run = self.actors.pop(), self.runs.pop()
        return _shutdown([actor], [run], timeout)[0]

    def stats(self) -> list[dict[str, Any]]:
        return list(ray.get([a.stats.remote() for a in self.actors]))

    def assignments(self) -> list[list[int]]:
        return list(ray.get([a.assigned.remote() for a in self.actors]))

    def wait(self, timeout: float | None = None) -> list[dict[str, Any]]:
        """Wait for every loop to end by itself (``max_batches`` / ``stop_after_idle_s``)."""
        return list(ray.get(self.runs, timeout=timeout))

    def drain(self, timeout: float = 600.0, poll_s: float = 0.5) -> list[dict[str, Any]]:
        """Wait until the group has committed every partition up to its high watermark, then stop."""
        deadline = time.monotonic() + timeout
        lag: dict[tuple[str, int], int] | str = "unknown"
        while True:
            try:
                lag = group_lag(self.settings, self.group_id)
                if sum(lag.values()) == 0:
                    return self.stop()
            except KafkaException as exc:  # broker down, or a coordinator still moving after retries
                lag = f"unknown ({exc})"
            if time.monotonic() > deadline:
                raise TimeoutError(f"group still lags after {timeout} s: {lag}")
            time.sleep(poll_s)

    def stop(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Let each actor finish and commit its current batch, leave the group, and exit."""
        final = _shutdown(self.actors, self.runs, timeout)
        self.actors, self.runs = [], []
        return final


# Answers a group's coordinator gives while it is being elected or loaded; confluent-kafka marks
# none of them retriable() when they come back from committed().
_COORDINATOR_MOVING = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}


def group_lag(
    settings: Settings, group_id: str | None = None, retry_s: float = 30.0
) -> dict[tuple[str, int], int]:
    """Records not yet committed by ``group_id`` per (topic, partition) of the topics the
    group consumes: transactions and labels.

    A coordinator that is moving or loading (NOT_COORDINATOR, COORDINATOR_LOAD_IN_PROGRESS,
    COORDINATOR_NOT_AVAILABLE) is asked again for up to ``retry_s`` seconds: CI's metrics test
    once failed on a single NOT_COORDINATOR from committed() while its consumer joined the
    group. Anything else, or a coordinator still missing after that, raises."""
    k = settings.kafka
    probe = Consumer(k.client_config("consumer", **{"group.id": group_id or k.consumer_group}))
    try:
        tps = []
        for topic in (k.transactions_topic, k.labels_topic):
            meta = probe.list_topics(topic, timeout=10).topics[topic]
            tps += [TopicPartition(topic, p) for p in meta.partitions]
        deadline = time.monotonic() + retry_s
        while True:
            try:
                committed = probe.committed(tps, timeout=10)
                break
            except KafkaException as exc:
                if exc.args[0].code() not in _COORDINATOR_MOVING or time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        lag = {}
        for tp in committed:
            low, high = probe.get_watermark_offsets(tp, timeout=10)
            lag[(tp.topic, tp.partition)] = high - (tp.offset if tp.offset >= 0 else low)
        return lag
    finally:
        probe.close()


def _shutdown(actors: list[Any], runs: list[Any], timeout: float) -> list[dict[str, Any]]:
    if not actors:
        return []
    ray.get([a.stop.remote() for a in actors], timeout=timeout)
    final = list(ray.get(runs, timeout=timeout))
    ray.get([a.close.remote() for a in actors], timeout=timeout)
    for a in actors:
        ray.kill(a, no_restart=True)
    return final


def throughput(stats: list[dict[str, Any]]) -> float:
    """Scored tx/s of a pool, from its first polled record to its last committed batch."""
    starts = [s["first_record_at"] for s in stats if s["first_record_at"]]
    ends = [s["last_batch_at"] for s in stats if s["last_batch_at"]]
    if not starts or not ends or max(ends) <= min(starts):
        return 0.0
    return sum(s["scored"] for s in stats) / (max(ends) - min(starts))


def stage_us_per_tx(stats: list[dict[str, Any]]) -> dict[str, float]:
    """Mean µs per scored transaction spent in each stage (summed over actors)."""
    scored = max(1, sum(s["scored"] for s in stats))
    return {st: 1e6 * sum(s["stage_s"][st] for s in stats) / scored for st in STAGES}
