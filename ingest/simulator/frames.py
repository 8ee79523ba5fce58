"""Labelled point-in-time feature rows of a simulated world: the training data of the
first-start models and of tests that need a frame without a running stack."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pandas as pd

from features.offline import frame_from_records
from ingest.simulator.simulate import SimConfig, Simulator


def simulated_frame(
    users: int = 3_000, days: float = 6.0, fraud_rate: float = 0.01, seed: int = 7
) -> pd.DataFrame:
    """Point-in-time feature rows of ``days`` of a simulated world, labelled as chargebacks
    arrive (a label counts for merchant risk only after its ``labelled_at``)."""
    start = datetime(2026, 1, 5, tzinfo=UTC)  # fixed: the same frame on every machine
    config = SimConfig(
        seed=seed, users=users, merchants=max(1_000, users // 10), fraud_rate=fraud_rate,
        label_delay_s=86_400.0, start=start,
    )  # fmt: skip
    end_ms = int(start.timestamp() * 1000 + days * 86_400_000)
    records: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for chunk in Simulator(config).chunks():
        keep = chunk.event_ms < end_ms
        n = int(keep.sum())
        if n == 0:
            break
        part = chunk.take(slice(0, n))
        rows = part.records()
        labelled_ms, fraud, scenarios = part.labels()
        records += rows
        labels += [
            {"transaction_id": r["transaction_id"], "is_fraud": bool(f), "scenario": s, "labelled_at": int(t)}
            for r, f, s, t in zip(rows, fraud, scenarios, labelled_ms, strict=True)
        ]
        if n < len(chunk):
            break
    return frame_from_records(records, labels)
