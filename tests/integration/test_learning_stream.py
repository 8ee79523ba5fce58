"""The learning loop on the stream, end to end on real Kafka, Redis, PostgreSQL, Ray and Serve
(issue #23): first-start-like champion models, trained on a world whose only fraud is card
testing, decide a simulated world with other scenarios (account takeover, bust-out) streamed
producer → Kafka → consumer actor → Serve → decisions, its labels on the labels topic. Once
those labels are in PostgreSQL, one round of the loop fits a challenger, evaluates it on the
newest labelled day's decided rows, finds it beats the champion, promotes it and hot-swaps the
running app while more of the same world streams (live shadow scoring of a challenger kept as
candidate: test_learning_shadow.py). The decisions after the swap have a higher average
precision than the champion's, and there is exactly one decision per transaction across the
swap. The production versions found before the test are restored (and swapped back) after.

Sizes: 600 users, 3 % fraud, 6 labelled days before the round (~11k transactions) and 3 days
after (~5k), event times in 2001 (no other test writes that year) and ids, users and
merchants tagged with a fresh ``test<hex>-`` prefix."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import xgboost as xgb

from core import db
from core.families import ALL_KEYS
from core.settings import ConsumerSettings, Settings
from features.catalogue import FEATURE_NAMES
from ingest.consumer import ConsumerPool
from ingest.labels import LabelProducer, LabelQueue
from ingest.producer import TransactionProducer
from ingest.simulator import SimConfig, Simulator, parse_mix, retag
from ingest.simulator.simulate import SimChunk
from ingest.stream import StreamStats, Unpaced, run_stream
from serve_deployments.deploy import hot_swap
from tests.helpers import production_version_ids, restore_production, stream_tag, with_topics
from training.data import frame_from_store, split_by_windows, temporal_split
from training.evaluate import evaluate
from training.learning import Decision, due, learn_once
from training.pipeline import train_all
from training.registry import Registry

from ..model.world import World, delete_registry_rows, delete_world, write_world

pytestmark = [pytest.mark.integration, pytest.mark.slow]

OLD_MIX, NEW_MIX = "card_testing=1", "account_takeover=0.5,bust_out=0.5"
OLD_START = datetime(2001, 3, 5, tzinfo=UTC)
NEW_START = datetime(2001, 4, 2, tzinfo=UTC)
LABELLED_DAYS, AFTER_DAYS = 6, 3
SLOW_TX_PER_S = 30.0  # the stream's pace while the round runs (traffic flows across the swap)


@dataclass
class Tagged:
    """A simulator chunk whose transaction ids, users and merchants carry ``tag-``."""

    chunk: SimChunk
    tag: str

    def __len__(self) -> int:
        return len(self.chunk)

    @property
    def event_ms(self) -> np.ndarray:
        return self.chunk.event_ms

    def take(self, index: slice) -> Tagged:
        return Tagged(self.chunk.take(index), self.tag)

    def records(self) -> list[dict[str, Any]]:
        return list(retag(self.chunk.records(), self.tag, ("transaction_id", "user_id", "merchant_id")))

    def labels(self) -> tuple[np.ndarray, np.ndarray, list[str | None]]:
        return self.chunk.labels()


def _world_chunks(tag: str, cut: datetime, end: datetime) -> tuple[list[Tagged], list[Tagged]]:
    """The new world's stream, cut at ``cut`` (event time) and ending at ``end``."""
    config = SimConfig(seed=2, users=600, merchants=1000, fraud_rate=0.03, label_delay_s=86_400.0,
                       start=NEW_START, fraud_mix=parse_mix(NEW_MIX))  # fmt: skip
    cut_ms, end_ms = (int(t.timestamp() * 1000) for t in (cut, end))
    before: list[Tagged] = []
    after: list[Tagged] = []
    for chunk in Simulator(config).chunks():
        ms = chunk.event_ms
        a, b = int((ms < cut_ms).sum()), int((ms < end_ms).sum())
        if a:
            before.append(Tagged(chunk.take(slice(0, a)), tag))
        if b > a:
            after.append(Tagged(chunk.take(slice(a, b)), tag))
        if b < len(chunk):
            break
    return before, after


def _stream(settings: Settings, chunks: list[Tagged], pacer: Any = None) -> StreamStats:
    """Producer → Kafka: the transactions, and each label once the stream's event time passes
    its due time (the rest when the run ends), as `fraudray produce` sends them."""
    return run_stream(chunks, TransactionProducer(settings), pacer=pacer or Unpaced(),
                      label_queue=LabelQueue("all"), label_sink=LabelProducer(settings))  # fmt: skip


@dataclass
class SlowUntilSwap:
    """Pacer: ``SLOW_TX_PER_S`` until the swap; after a day of event time it waits for the
    swap (so that the swapped models still get most of the world), then unpaced."""

    first_ms: int
    swapped: threading.Event = field(default_factory=threading.Event)
    piece: int = 20

    def wait(self, n: int, first_event_ms: int) -> None:
        if self.swapped.is_set():
            return
        if first_event_ms >= self.first_ms + 86_400_000:
            self.swapped.wait(timeout=600)
            return
        time.sleep(n / SLOW_TX_PER_S)


def _count(settings: Settings, table: str, prefix: str) -> int:
    assert table in {"decisions", "labels", "transactions"}
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE transaction_id LIKE %s", (prefix + "%",))
        return int(cur.fetchone()[0])


def _wait_rows(settings: Settings, prefix: str, n: int, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = {t: _count(settings, t, prefix) for t in ("decisions", "labels")}
        if all(v >= n for v in got.values()):
            return
        assert time.monotonic() < deadline, f"{got} of {n} rows after {timeout} s"
        time.sleep(0.5)


def _decided(settings: Settings, prefix: str) -> list[tuple[str, str, float, bool, float | None, str | None]]:
    """(transaction id, model_version, ensemble_score, label, shadow score, shadow version)."""
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute(
            "SELECT d.transaction_id, d.model_version, d.ensemble_score, l.is_fraud, d.shadow_score,"
            " d.shadow_version FROM decisions d JOIN labels l USING (transaction_id)"
            " WHERE d.transaction_id LIKE %s",
            (prefix + "%",),
        )
        return list(cur.fetchall())


def _ap(rows: list[Any]) -> float:
    return float(evaluate(np.array([r[2] for r in rows]), np.array([r[3] for r in rows], dtype=int))["aucpr"])


@pytest.fixture(scope="module")
def champion(
    serve_app_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, dict[str, str]]]:
    """The champion (trained on the card-testing world, promoted, swapped into the shared app)
    with private var/ and learning settings; afterwards the versions of before, swapped back."""
    base = serve_app_settings
    var = tmp_path_factory.mktemp("var")
    before = production_version_ids(base)
    learn = base.learn.model_copy(update={"recent_days": 1.0, "margin": 0.02, "min_recent_frauds": 15,
                                          "every_labels": 5000})  # fmt: skip
    consumer = ConsumerSettings(batch_size=500, poll_timeout_s=0.2)
    s = base.model_copy(update={"stack": base.stack.model_copy(update={"var_dir": var}), "learn": learn,
                                "consumer": consumer})  # fmt: skip
    old = write_world(base, seed=1, start=OLD_START, fraud_mix=OLD_MIX)
    try:
        frame = frame_from_store(s, old.start, old.end, id_prefix=old.prefix)
        trained = train_all(temporal_split(frame, list(FEATURE_NAMES)), s, source="tests:stream-champion")
        versions = {k: v.version for k, v in trained.versions.items()}
        hot_swap(s)
        yield s, versions
    finally:
        restore_production(base, before)
        delete_world(base, old)
        delete_registry_rows(base, str(var), old)
        delete_registry_rows(base, str(var), World("", NEW_START, NEW_START, 0, 0))
        with db.transaction(base.postgres.dsn.get_secret_value()) as cur:
            cur.execute("DELETE FROM training_runs WHERE model_name = 'learn'"
                        " AND config->>'trigger' LIKE 'tests-stream:%%'")  # fmt: skip


@pytest.fixture
def tag(local_stack: Settings) -> Iterator[str]:
    tag = stream_tag(random.randrange(2**31))
    yield tag
    delete_world(local_stack, World(f"{tag}-", NEW_START, NEW_START, 0, 0))


def test_a_promotion_on_the_stream_raises_the_decisions_ap(
    champion: tuple[Settings, dict[str, str]],
    new_topic: Callable[..., str],
    group_id: str,
    tag: str,
    tmp_path: Path,
) -> None:
    base, champion_versions = champion
    s = with_topics(base, transactions_topic=new_topic("learn-tx", partitions=3),
                    labels_topic=new_topic("learn-labels", partitions=1))  # fmt: skip
    prefix = f"{tag}-"
    cut = NEW_START + timedelta(days=LABELLED_DAYS)
    labelled, later = _world_chunks(tag, cut, cut + timedelta(days=AFTER_DAYS))
    n_labelled, n_later = sum(map(len, labelled)), sum(map(len, later))
    pool = ConsumerPool(s, 1, group_id)
    try:
        # 1. The champion decides six days of the new world; their labels follow on the stream.
        t0 = time.monotonic()
        sent = _stream(s, labelled)
        labels_sent_at = time.monotonic()
        assert sent.sent == sent.labels_sent == n_labelled
        _wait_rows(s, prefix, n_labelled)
        labels_stored_at = time.monotonic()

        # 2. The loop's trigger (new labels) and one round, while more of the world streams.
        trigger = due(_count(s, "labels", prefix), 0.0, False, s.learn)
        assert trigger.startswith("labels:"), trigger
        pacer = SlowUntilSwap(int(cut.timestamp() * 1000))
        more: list[StreamStats] = []
        producer = threading.Thread(target=lambda: more.append(_stream(s, later, pacer)), daemon=True)
        producer.start()

        def swap() -> None:
            hot_swap(s)
            pacer.swapped.set()

        try:
            decision: Decision = learn_once(s, trigger=f"tests-stream:{trigger}", swap=swap, now=cut,
                                            id_prefix=prefix, feature_names=list(FEATURE_NAMES))  # fmt: skip
        finally:
            pacer.swapped.set()  # never leave the producer waiting
        promoted_at = time.monotonic()
        print(f"\nlearn: {decision.as_dict()}")
        producer.join(timeout=300)
        assert more and more[0].sent == more[0].labels_sent == n_later
        _wait_rows(s, prefix, n_labelled + n_later)
    finally:
        stats = pool.stop()

    # The round: evaluated on the decided rows, a clear win, promoted and swapped.
    assert decision.action == "promoted", decision.reason
    assert decision.decided_rows == decision.recent_rows > 0, decision.evaluation_error
    assert decision.challenger_aucpr is not None and decision.champion_aucpr is not None
    assert decision.challenger_aucpr >= decision.champion_aucpr + s.learn.margin
    assert {f: Registry(s).production(f).version for f in ALL_KEYS} == decision.versions

    # Nothing lost or duplicated across the swap: one decision per transaction, each scored once.
    rows = _decided(s, prefix)
    assert len(rows) == len({r[0] for r in rows}) == n_labelled + n_later
    assert _count(s, "transactions", prefix) == n_labelled + n_later
    assert sum(x["scored"] for x in stats) == n_labelled + n_later
    assert sum(x["dead_lettered"] for x in stats) == 0

    # Before the swap the champion decided, after it the challenger; no shadow challenger was
    # installed (promoted at once), so no decision carries a shadow score.
    old_v, new_v = champion_versions["ensemble"], decision.versions["ensemble"]
    assert {r[1] for r in rows} <= {old_v, new_v}, {r[1] for r in rows}
    before = [r for r in rows if r[1] == old_v]
    after = [r for r in rows if r[1] == new_v]
    assert all(r[4] is None and r[5] is None for r in rows)
    assert sum(r[3] for r in after) >= 30, "too few frauds decided after the swap to compare"
    ap_before, ap_after = _ap(before), _ap(after)

    # The new fit against plain XGBoost on the loop's own frame and windows.
    frame = frame_from_store(s, cut - timedelta(days=s.learn.window_days), cut, id_prefix=prefix)
    w = decision.window
    split = split_by_windows(frame, list(FEATURE_NAMES), train=(None, datetime.fromisoformat(w["val"][0])),
                             val=(datetime.fromisoformat(w["val"][0]), datetime.fromisoformat(w["test"][0])),
                             test=(datetime.fromisoformat(w["test"][0]), None))  # fmt: skip
    plain = xgb.XGBClassifier(n_estimators=300, max_depth=6, learning_rate=0.1, n_jobs=2, random_state=0)
    plain.fit(split.X_train, split.y_train)
    plain_ap = float(evaluate(plain.predict_proba(split.X_test)[:, 1], split.y_test)["aucpr"])
    xgb_ap = float(Registry(s).get("xgb", decision.versions["xgb"]).metrics["aucpr"])
    frauds_before, frauds_after = sum(r[3] for r in before), sum(r[3] for r in after)
    print(
        f"stream AP: champion {ap_before:.3f} on {len(before)} decisions ({frauds_before} frauds),"
        f" challenger after the swap {ap_after:.3f} on {len(after)} ({frauds_after} frauds)\n"
        f"labels: sent {labels_sent_at - t0:.1f} s after the start; sent -> in PostgreSQL"
        f" {labels_stored_at - labels_sent_at:.1f} s; -> promoted and swapped"
        f" {promoted_at - labels_stored_at:.1f} s (round {decision.seconds:.1f} s);"
        f" labels sent -> promotion {promoted_at - labels_sent_at:.1f} s\n"
        f"decided rows: live AP {decision.live_aucpr} vs challenger AP {decision.challenger_decided_aucpr}"
        f" on {decision.decided_rows} decisions; recent-day AP: champion {decision.champion_aucpr:.3f},"
        f" challenger ensemble {decision.challenger_aucpr:.3f}, challenger XGBoost {xgb_ap:.3f},"
        f" plain XGBoost {plain_ap:.3f}"
    )
    assert ap_after > ap_before
