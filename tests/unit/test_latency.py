"""Pipeline latency (Kafka timestamp -> decision) and event -> decision latency (live only):
what operators see in decisions, the metrics and the dashboard (issue #26)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from monitoring.latency import LIVE_WINDOW_S, decision_latencies_ms, kafka_timestamps_ms

NOW_MS = 1_780_000_000_000.0
YEAR_MS = 365 * 86_400_000.0


@dataclass
class _Msg:
    """The part of confluent_kafka.Message these functions read."""

    ts: tuple[int, int]

    def timestamp(self) -> tuple[int, int]:
        return self.ts


def test_kafka_timestamps_read_create_and_log_append_time_and_mark_missing() -> None:
    got = kafka_timestamps_ms([_Msg((1, 1000)), _Msg((2, 2000)), _Msg((0, -1))])
    assert got[:2].tolist() == [1000.0, 2000.0] and np.isnan(got[2])


def test_replay_of_old_events_has_a_true_pipeline_latency_and_no_event_latency() -> None:
    kafka = np.array([NOW_MS - 1200.0, NOW_MS - 300.0])
    event = np.array([NOW_MS - 8 * YEAR_MS, NOW_MS - 8 * YEAR_MS + 5])  # a 2018 data set
    pipeline, event_latency = decision_latencies_ms(NOW_MS, kafka, event)
    assert pipeline.tolist() == [1200.0, 300.0]
    assert np.isnan(event_latency).all()


def test_simulation_running_ahead_of_the_clock_is_never_negative() -> None:
    kafka = np.array([NOW_MS - 800.0])
    event = np.array([NOW_MS + 3_600_000.0])  # a 10x simulation an hour ahead of the clock
    pipeline, event_latency = decision_latencies_ms(NOW_MS, kafka, event)
    assert pipeline.tolist() == [800.0]
    assert np.isnan(event_latency).all()


def test_live_traffic_gets_both_figures() -> None:
    kafka = np.array([NOW_MS - 500.0, NOW_MS - 500.0])
    event = np.array([NOW_MS - 520.0, NOW_MS - 500.0 - (LIVE_WINDOW_S + 1) * 1000])
    pipeline, event_latency = decision_latencies_ms(NOW_MS, kafka, event)
    assert pipeline.tolist() == [500.0, 500.0]
    assert event_latency[0] == 520.0 and np.isnan(event_latency[1])  # the second is a minute late


def test_clock_skew_is_clamped_to_zero_and_a_missing_timestamp_stays_unknown() -> None:
    kafka = np.array([NOW_MS + 40.0, np.nan])  # producer's clock 40 ms ahead; no timestamp
    event = np.array([NOW_MS + 30.0, NOW_MS])
    pipeline, event_latency = decision_latencies_ms(NOW_MS, kafka, event)
    assert pipeline[0] == 0.0 and np.isnan(pipeline[1])
    assert event_latency[0] == 0.0 and np.isnan(event_latency[1])
