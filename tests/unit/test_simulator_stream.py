"""Sending the stream: token bucket and event-time pacing on a fake clock, late labels
(never early, exactly one per sent transaction), count/duration limits."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from ingest.labels import Label, LabelQueue
from ingest.simulator import SimConfig, Simulator
from ingest.stream import EventTimePacer, RateMeter, TokenBucket, Unpaced, run_stream

START = datetime(2026, 3, 2, tzinfo=UTC)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_token_bucket_holds_the_rate_and_bounds_bursts() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5000, clock=clock, sleep=clock.sleep)
    for _ in range(1000):
        bucket.acquire(50)  # 50,000 tokens
    assert clock.now == pytest.approx(10.0, rel=1e-3)
    clock.now += 100  # idle for a long time: the credit is capped at half a second
    t0 = clock.now
    for _ in range(200):
        bucket.acquire(50)  # 10,000 tokens
    assert clock.now - t0 == pytest.approx(2.0 - 0.5, rel=1e-3)


def test_event_time_pacer_follows_the_speedup(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr("ingest.stream.time.sleep", clock.sleep)
    pacer = EventTimePacer(60.0, clock=clock)
    pacer.wait(1, 1_000_000)
    pacer.wait(1, 1_000_000 + 3_600_000)  # an hour of event time = one minute of wall time
    assert clock.now == pytest.approx(60.0)
    pacer.wait(1, 1_000_000 + 60_000)  # already late: no wait
    assert clock.now == pytest.approx(60.0)


def test_rate_meter() -> None:
    clock = FakeClock()
    meter = RateMeter(window=2.0, clock=clock)
    for _ in range(10):
        clock.now += 0.5
        meter.add(500)
    assert meter.current == pytest.approx(1000.0)
    assert meter.overall == pytest.approx(1000.0)


def test_label_queue_releases_by_due_time_and_filters() -> None:
    q = LabelQueue("all")
    q.add(["a", "b", "c"], np.array([30, 10, 20]), np.array([False, True, False]), [None, "x", None])
    assert [lab.transaction_id for lab in q.pop_due(15)] == ["b"]
    assert q.pop_due(15) == []
    assert [(lab.transaction_id, lab.labelled_at_ms) for lab in q.drain()] == [("c", 20), ("a", 30)]
    frauds = LabelQueue("fraud")
    frauds.add(["a", "b"], np.array([1, 2]), np.array([False, True]), [None, "card_testing"])
    assert frauds.drain() == [Label("b", True, "card_testing", 2)]
    none = LabelQueue("none")
    none.add(["a"], np.array([1]), np.array([True]), ["x"])
    assert none.drain() == []


def test_label_json_round_trip() -> None:
    label = Label('tx-"1"', True, "bust_out", 1_772_458_971_774)
    assert label.to_json() == (
        b'{"transaction_id":"tx-\\"1\\"","is_fraud":true,"scenario":"bust_out",'
        b'"labelled_at":"2026-03-02T13:42:51.774Z"}'
    )
    assert Label.from_json(label.to_json()) == label


class ListSink:
    def __init__(self) -> None:
        self.items: list[Any] = []
        self.flushed = 0

    def send_many(self, items: Iterable[Any]) -> int:
        items = list(items)
        self.items.extend(items)
        return len(items)

    def flush(self, timeout: float = 60.0) -> None:
        self.flushed += 1


def test_labels_arrive_late_and_exactly_once_per_sent_transaction() -> None:
    sim = Simulator(SimConfig(seed=3, users=5_000, fraud_rate=0.05, label_delay_s=3600, start=START))
    sent_at: dict[str, int] = {}
    released: list[tuple[Label, int]] = []  # (label, stream event time when it was sent)

    stream_time = [0]

    class Transactions(ListSink):
        def send_many(self, items: Iterable[Any]) -> int:
            items = list(items)
            for r in items:
                sent_at[r["transaction_id"]] = int(r["event_time"].timestamp() * 1000)
                stream_time[0] = max(stream_time[0], sent_at[r["transaction_id"]])
            return super().send_many(items)

    class Labels(ListSink):
        def send_many(self, items: Iterable[Any]) -> int:
            items = list(items)
            released.extend((lab, stream_time[0]) for lab in items)
            return super().send_many(items)

    txs, labels = Transactions(), Labels()
    stats = run_stream(sim.chunks(), txs, pacer=Unpaced(), label_queue=LabelQueue("all"), label_sink=labels,
                       count=20_000)  # fmt: skip
    assert stats.sent == len(txs.items) == 20_000
    assert stats.last_event_ms is not None
    assert sorted(lab.transaction_id for lab in labels.items) == sorted(sent_at)  # one each, no extras
    early = [
        lab for lab, now in released if lab.labelled_at_ms > now and lab.labelled_at_ms <= stats.last_event_ms
    ]
    assert early == []  # never before due; the rest were still pending when the run ended
    assert sum(lab.labelled_at_ms <= stats.last_event_ms for lab in labels.items) > 10_000
    for lab in labels.items:
        delay = lab.labelled_at_ms - sent_at[lab.transaction_id]
        assert 1_800_000 <= delay <= 5_400_000  # 0.5–1.5 × the configured hour
    assert stats.fraud_total == sum(lab.is_fraud for lab in labels.items) > 0
    assert txs.flushed == labels.flushed == 1
    assert stats.labels_sent == 20_000


def test_duration_and_stop_end_the_run() -> None:
    sim = Simulator(SimConfig(seed=3, users=5_000, start=START))
    stats = run_stream(sim.chunks(), ListSink(), pacer=Unpaced(), duration=0.3)
    assert stats.sent > 0 and 0.25 <= stats.seconds < 2.0
    calls = iter(range(1000))
    stats = run_stream(sim.chunks(), ListSink(), pacer=Unpaced(), stop=lambda: next(calls) >= 5)
    assert 0 < stats.sent <= 5 * Unpaced.piece
