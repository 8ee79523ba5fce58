"""Quick models for the first start: the three families and their ensemble, trained on a
small simulated, labelled world through the offline feature engine (the same catalogue the
online store serves), so the pipeline scores with real features before any `fraudray train`
on collected traffic replaces them."""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from cluster.errors import ModelNotReady
from cluster.settings import Settings
from features.catalogue import FEATURE_NAMES
from features.offline import frame_from_records
from ingest.simulator import SimConfig, Simulator
from training.data import temporal_split
from training.ensemble import MEMBERS
from training.pipeline import train_all
from training.registry import ModelVersion, Registry

log = logging.getLogger(__name__)

FAMILIES = (*MEMBERS, "ensemble")
SOURCE = "quick:simulated"


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


def train_quick_models(settings: Settings, seed: int = 7, promote: bool = True) -> dict[str, ModelVersion]:
    """Train and register IF, XGBoost, the autoencoder and the ensemble; returns the versions."""
    t0 = time.perf_counter()
    frame = simulated_frame(seed=seed)
    split = temporal_split(frame, list(FEATURE_NAMES))
    result = train_all(split, settings, target_fpr=0.01, source=SOURCE, promote=promote)
    log.info(
        "quick models on %d simulated transactions (%d fraud) in %.0f s: %s",
        len(frame), int(frame["is_fraud"].sum()), time.perf_counter() - t0,
        {f: round(float(m.get("aucpr", float("nan"))), 3) for f, m in result.metrics.items()},
    )  # fmt: skip
    return result.versions


def ensure_models(settings: Settings) -> dict[str, ModelVersion]:
    """The production version of every family, training the quick ones first when any is
    missing, unreadable, was trained on another feature set, or carries no usable drift
    reference."""
    registry = Registry(settings)
    versions: dict[str, ModelVersion] = {}
    for family in FAMILIES:
        try:
            mv = registry.production(family)
        except ModelNotReady:
            return train_quick_models(settings)
        if mv.feature_names != list(FEATURE_NAMES) or not Path(mv.uri).exists():
            return train_quick_models(settings)
        versions[family] = mv
    try:  # the drift reference the consumers compare live features with (an older format: retrain)
        for family in MEMBERS:
            registry.drift_reference(family)
    except (ModelNotReady, AttributeError, KeyError, TypeError, ValueError):
        return train_quick_models(settings)
    return versions
