"""Quick models for the first start: the three families and their ensemble, trained on a small
labelled frame (``cluster.first_start`` passes a simulated world's, built through the offline
feature engine), so the pipeline scores with real features before any `fraudray train` on
collected traffic replaces them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from core.errors import ModelNotReady
from core.families import ALL_KEYS, MEMBER_KEYS
from core.settings import Settings
from features.catalogue import FEATURE_NAMES
from training.data import temporal_split
from training.pipeline import train_all
from training.registry import ModelVersion, Registry

log = logging.getLogger(__name__)

FAMILIES = ALL_KEYS
SOURCE = "quick:simulated"


def train_quick_models(
    settings: Settings, frame: pd.DataFrame, promote: bool = True
) -> dict[str, ModelVersion]:
    """Train and register IF, XGBoost, the autoencoder and the ensemble on ``frame`` (labelled
    point-in-time feature rows); returns the versions."""
    t0 = time.perf_counter()
    split = temporal_split(frame, list(FEATURE_NAMES))
    result = train_all(split, settings, target_fpr=0.01, source=SOURCE, promote=promote)
    log.info(
        "quick models on %d simulated transactions (%d fraud) in %.0f s: %s",
        len(frame), int(frame["is_fraud"].sum()), time.perf_counter() - t0,
        {f: round(float(m.get("aucpr", float("nan"))), 3) for f, m in result.metrics.items()},
    )  # fmt: skip
    return result.versions


def ensure_models(settings: Settings, make_frame: Callable[[], pd.DataFrame]) -> dict[str, ModelVersion]:
    """The production version of every family, training the quick ones on ``make_frame()`` first
    when any is missing, unreadable, was trained on another feature set, or carries no usable
    drift reference."""
    registry = Registry(settings)
    versions: dict[str, ModelVersion] = {}
    for family in FAMILIES:
        try:
            mv = registry.production(family)
        except ModelNotReady:
            return train_quick_models(settings, make_frame())
        if mv.feature_names != list(FEATURE_NAMES) or not Path(mv.uri).exists():
            return train_quick_models(settings, make_frame())
        versions[family] = mv
    try:  # the drift reference the consumers compare live features with (an older format: retrain)
        for family in MEMBER_KEYS:
            registry.drift_reference(family)
    except (ModelNotReady, AttributeError, KeyError, TypeError, ValueError):
        return train_quick_models(settings, make_frame())
    return versions
