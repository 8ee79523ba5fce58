"""A quick Isolation Forest for the first start: fit on synthetic genuine traffic so the
pipeline can score before any real training run (`fraudray train` replaces it)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cluster.errors import ModelNotReady
from cluster.settings import Settings
from features.online import FEATURE_NAMES, transaction_features
from training.isolation_forest import IsolationForestModel
from training.registry import ModelVersion, Registry

MODEL_NAME = "if"


def genuine_sample(n: int, seed: int) -> np.ndarray:
    """Feature rows of ordinary card traffic: log-normal amounts, daytime-heavy hours."""
    rng = np.random.default_rng(seed)
    amounts = rng.lognormal(mean=3.5, sigma=0.8, size=n)
    hour_weights = np.array([1, 1, 1, 1, 1, 2, 4, 6, 8, 9, 9, 10, 10, 10, 9, 9, 9, 10, 10, 9, 7, 5, 3, 2.0])
    hours = rng.choice(24, size=n, p=hour_weights / hour_weights.sum())
    event_ms = hours.astype(np.int64) * 3_600_000 + rng.integers(0, 3_600_000, size=n)
    channels = rng.choice(["card_present", "online"], size=n, p=[0.6, 0.4]).tolist()
    return transaction_features(amounts, event_ms, channels)


def train_quick_model(
    settings: Settings, n: int = 20_000, seed: int = 7, promote: bool = True
) -> ModelVersion:
    X = genuine_sample(n, seed)
    model = IsolationForestModel(list(FEATURE_NAMES), n_estimators=100, max_samples=256, seed=seed)
    model.fit(X, np.zeros(len(X), dtype=np.int8))
    scores = model.score(X)
    # Flag about 0.5 % of genuine-looking traffic: the threshold is a quantile of training scores.
    model.threshold = float(np.quantile(scores, 0.995))
    registry = Registry(settings)
    version, path = registry.new_version_dir(MODEL_NAME)
    model.save(path)
    return registry.register(
        MODEL_NAME, version, path,
        metrics={"train_rows": n, "train_flag_rate": float((scores > model.threshold).mean())},
        params=dict(model.params(), source="synthetic-genuine"),
        feature_names=list(FEATURE_NAMES), promote=promote,
    )  # fmt: skip


def ensure_model(settings: Settings) -> ModelVersion:
    """The production IF, training the quick one first when the registry has none usable."""
    try:
        mv = Registry(settings).production(MODEL_NAME)
    except ModelNotReady:
        return train_quick_model(settings)
    try:
        threshold = IsolationForestModel.load(Path(mv.uri)).threshold
    except (OSError, KeyError, ValueError):
        threshold = None  # artefact missing or of an older format
    if mv.feature_names != list(FEATURE_NAMES) or threshold is None:
        return train_quick_model(settings)  # trained on another feature set, or unusable
    return mv
