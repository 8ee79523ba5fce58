"""Model families and the training pipeline on a small synthetic labelled set:
round-trips, that each family learns, temporal splits, the ensemble's threshold, CSV input."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from core.settings import Settings
from training.autoencoder import AutoencoderModel
from training.data import DataError, Split, frame_from_csv, temporal_split
from training.ensemble import Ensemble
from training.evaluate import evaluate, save_curves_png, threshold_for_fpr
from training.isolation_forest import IsolationForestModel
from training.pipeline import train_all
from training.xgboost_model import XGBoostModel

NAMES = [f"f{i}" for i in range(6)]


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG (its signature, then the IHDR chunk), or an AssertionError."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return int(width), int(height)


def synthetic_frame(n: int = 6000, fraud_rate: float = 0.03, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < fraud_rate).astype(np.int8)
    X = rng.normal(size=(n, len(NAMES))).astype(np.float32)
    X[y == 1, 0] += 3.0  # fraud: unusual amount
    X[y == 1, 1] -= 2.5  # and unusual velocity
    frame = pd.DataFrame(X, columns=NAMES)
    frame["is_fraud"] = y
    frame["event_time"] = pd.date_range("2026-01-01", periods=n, freq="min")
    return frame


@pytest.fixture(scope="module")
def split() -> Split:
    return temporal_split(synthetic_frame())


def test_temporal_split_never_mixes_time(split: Split) -> None:
    # 6,000 minutes span 4 days: the cuts move from the 60 %/80 % time quantiles to midnights.
    assert split.sizes() == {"train": 2880, "val": 1440, "test": 1680}
    first_val, first_test = (pd.Timestamp(b) for b in split.boundaries)
    assert first_val < first_test and first_val == first_val.normalize()


def test_short_data_are_cut_at_time_quantiles() -> None:
    frame = synthetic_frame(1000)
    frame["event_time"] = pd.date_range("2026-01-01", periods=1000, freq="s")  # 17 minutes
    assert temporal_split(frame).sizes() == {"train": 600, "val": 200, "test": 200}


@pytest.mark.parametrize("cls", [IsolationForestModel, XGBoostModel, AutoencoderModel])
def test_family_learns_and_round_trips(cls: Any, split: Split, tmp_path: Path) -> None:
    params = {"epochs": 5} if cls is AutoencoderModel else {}
    model = cls(split.feature_names, **params).fit(split.X_train, split.y_train, split.X_val, split.y_val)
    scores = model.score(split.X_test)
    metrics = evaluate(scores, split.y_test)
    base_rate = split.y_test.mean()
    assert metrics["aucpr"] > 3 * base_rate, f"{cls.family} did not learn: {metrics['aucpr']:.3f}"
    assert metrics["roc_auc"] > 0.8
    model.save(tmp_path / cls.family)
    again = cls.load(tmp_path / cls.family)
    np.testing.assert_allclose(again.score(split.X_test), scores, rtol=1e-5)


def test_xgboost_uses_early_stopping_and_explains(split: Split) -> None:
    model = XGBoostModel(split.feature_names, n_estimators=500, early_stopping_rounds=10)
    model.fit(split.X_train, split.y_train, split.X_val, split.y_val)
    assert model.best_iteration is not None and model.best_iteration < 499
    contrib = model.contributions(split.X_test[:5])
    assert contrib.shape == (5, len(split.feature_names) + 1)
    # The informative features carry the attribution of the riskiest row.
    top = np.argsort(-np.abs(contrib[:, :-1]).sum(axis=0))[:2]
    assert set(top) == {0, 1}


def test_autoencoder_reconstructs_genuine_better(split: Split) -> None:
    model = AutoencoderModel(split.feature_names, epochs=8).fit(split.X_train, split.y_train)
    errors = model.score(split.X_test)
    assert errors[split.y_test == 1].mean() > 1.5 * errors[split.y_test == 0].mean()
    assert model.feature_errors(split.X_test[:3]).shape == (3, len(split.feature_names))


def test_ensemble_threshold_meets_target_fpr(split: Split) -> None:
    scores_val, scores_test = {}, {}
    for fam, m in (("if", IsolationForestModel(NAMES)), ("xgb", XGBoostModel(NAMES)),
                   ("ae", AutoencoderModel(NAMES, epochs=5))):  # fmt: skip
        m.fit(split.X_train, split.y_train, split.X_val, split.y_val)
        scores_val[fam], scores_test[fam] = m.score(split.X_val), m.score(split.X_test)
    ens = Ensemble({}, target_fpr=0.02).fit(scores_val, split.y_val)
    val_metrics = evaluate(ens.predict(scores_val), split.y_val, ens.threshold)
    assert val_metrics["fpr"] <= 0.02
    test_metrics = evaluate(ens.predict(scores_test), split.y_test, ens.threshold)
    assert test_metrics["recall"] > 0.7 and test_metrics["aucpr"] > 0.5


def _scored(n: int = 6000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(n) < 0.01).astype(int)
    return rng.normal(size=n) + 2.5 * y, y


def test_stored_pr_curve_keeps_its_top() -> None:
    scores, y = _scored()
    recall = [r for r, _p in evaluate(scores, y)["pr_curve"]]
    # Spread along the curve, not by index: by index all 50 points fell in the low-precision
    # tail and the top was one straight line from recall 0 to 0.6.
    assert len(recall) <= 50 and recall[0] == 0.0 and recall[-1] == 1.0
    assert sum(0 < r < 0.3 for r in recall) >= 3


def test_curves_png_draws_pr_and_roc(tmp_path: Path) -> None:
    scores, y = _scored()
    save_curves_png(evaluate(scores, y, threshold_for_fpr(scores, y, 0.01)), tmp_path / "curves.png", "xgb")
    data = (tmp_path / "curves.png").read_bytes()
    assert png_size(data) == (1000, 440) and 20_000 < len(data) < 500_000
    save_curves_png(evaluate(scores, np.zeros(len(y))), tmp_path / "one-class.png", "xgb")
    assert not (tmp_path / "one-class.png").exists()  # a single class has no curves


def test_pipeline_without_registry(split: Split, settings: Settings) -> None:
    result = train_all(split, settings, params={"ae": {"epochs": 3}}, register=False)
    assert set(result.metrics) == {"if", "xgb", "ae", "ensemble"}
    assert result.metrics["ensemble"]["fpr"] <= 0.05


def test_csv_numeric_columns_become_features(tmp_path: Path) -> None:
    frame = synthetic_frame(500)
    frame["merchant"] = "shop"  # text: not a feature
    frame["when"] = frame.pop("event_time")
    path = tmp_path / "data.csv"
    frame.to_csv(path, index=False)
    loaded = frame_from_csv(path, label="is_fraud", time="when")
    assert [c for c in loaded.columns if c.startswith("f")] == NAMES
    assert "merchant" not in loaded and loaded["is_fraud"].sum() == frame["is_fraud"].sum()
    assert len(temporal_split(loaded).feature_names) == len(NAMES)


@pytest.mark.parametrize(
    ("label", "time", "message"),
    [("nope", None, "no label column 'nope'"), ("f0", None, "only 0/1"), ("is_fraud", "t", "no time column")],
)
def test_csv_errors_are_clear(tmp_path: Path, label: str, time: str | None, message: str) -> None:
    path = tmp_path / "d.csv"
    synthetic_frame(100).to_csv(path, index=False)
    with pytest.raises(DataError, match=message):
        frame_from_csv(path, label=label, time=time)
