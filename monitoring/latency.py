"""What "latency" means in fraudray, computed once for a batch of decisions.

- **Pipeline latency** = decision time − the Kafka message's timestamp (the producer's create
  time, or the broker's log-append time when the topic is configured so): how long a record
  took from entering Kafka to its decision. True for live, simulated, sped-up and replayed
  streams alike; stored in ``decisions.latency_ms``, exported as
  ``fraudray_pipeline_latency_seconds``, alerted on by ``PipelineLatencyP95High``.
- **Event→decision latency** = decision time − the transaction's event time. Meaningful only
  for *live* traffic: a record whose event time lies within ``LIVE_WINDOW_S`` of its Kafka
  timestamp. A replay of old data or a simulation sped up past the clock has no such figure
  (``NaN`` here, NULL in ``decisions.event_latency_ms``, no observation in
  ``fraudray_event_to_decision_seconds``).

Neither is ever negative: a clock skew between producer and consumer hosts is clamped to 0.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LIVE_WINDOW_S", "decision_latencies_ms", "kafka_timestamps_ms"]

# An event time at most this far from its Kafka timestamp counts as live. A paced live producer
# sends within milliseconds; a replay of a past day or a 10x simulation is minutes to years off.
LIVE_WINDOW_S = 60.0


def kafka_timestamps_ms(messages: list[Any]) -> np.ndarray:
    """Each message's Kafka timestamp in ms since the epoch (NaN when the broker gives none)."""
    out = np.full(len(messages), np.nan)
    for i, m in enumerate(messages):
        kind, ts = m.timestamp()
        if kind != 0 and ts >= 0:  # 0 = TIMESTAMP_NOT_AVAILABLE
            out[i] = ts
    return out


def decision_latencies_ms(
    done_ms: float, kafka_ms: np.ndarray, event_ms: np.ndarray, live_window_s: float = LIVE_WINDOW_S
) -> tuple[np.ndarray, np.ndarray]:
    """(pipeline, event→decision) latencies in ms of records decided at ``done_ms``.

    Pipeline latency is NaN only where the message had no timestamp; event→decision is NaN
    where the record is not live (event time more than ``live_window_s`` from its Kafka
    timestamp, or no timestamp to tell)."""
    kafka_ms = np.asarray(kafka_ms, dtype=np.float64)
    event_ms = np.asarray(event_ms, dtype=np.float64)
    pipeline = np.maximum(done_ms - kafka_ms, 0.0)  # NaN stays NaN
    with np.errstate(invalid="ignore"):
        live = np.abs(kafka_ms - event_ms) <= live_window_s * 1000.0
    event = np.where(live, np.maximum(done_ms - event_ms, 0.0), np.nan)
    return pipeline, event
