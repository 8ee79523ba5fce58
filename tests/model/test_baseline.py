"""The fit is never worse than the textbook baseline: on the simulator's point-in-time
frame, XGBoost and the ensemble reach at least the test AP of a plain
``XGBClassifier(n_estimators=300, max_depth=6, learning_rate=0.1)`` without class weighting,
fitted on the same training window and tested on the same test window (issue #23)."""

from __future__ import annotations

import numpy as np
import pytest
import xgboost as xgb

from core.families import MEMBER_KEYS
from core.settings import Settings
from ingest.simulator.frames import simulated_frame
from training.data import Split, temporal_split
from training.ensemble import Ensemble
from training.evaluate import evaluate
from training.pipeline import TrainResult, train_all

FLOAT_NOISE = 1e-9


@pytest.fixture(scope="module")
def split() -> Split:
    return temporal_split(simulated_frame())  # 3,000 users, 6 days, seed 7: ~54k rows, ~650 frauds


@pytest.fixture(scope="module")
def baseline_ap(split: Split) -> float:
    plain = xgb.XGBClassifier(n_estimators=300, max_depth=6, learning_rate=0.1, n_jobs=2, random_state=0)
    plain.fit(split.X_train, split.y_train)
    return float(evaluate(plain.predict_proba(split.X_test)[:, 1], split.y_test)["aucpr"])


@pytest.fixture(scope="module")
def result(split: Split) -> TrainResult:
    return train_all(split, Settings(), register=False)


def test_xgboost_and_ensemble_match_or_beat_plain_xgboost(result: TrainResult, baseline_ap: float) -> None:
    xgb_ap, ens_ap = result.metrics["xgb"]["aucpr"], result.metrics["ensemble"]["aucpr"]
    print(f"\ntest AP: plain XGBoost {baseline_ap:.4f}, fraudray XGBoost {xgb_ap:.4f}, ensemble {ens_ap:.4f}")
    assert xgb_ap >= baseline_ap - FLOAT_NOISE
    assert ens_ap >= baseline_ap - FLOAT_NOISE


def test_xgboost_records_its_chosen_rounds_and_weighting(result: TrainResult, split: Split) -> None:
    sel = result.metrics["xgb"]["selection"]
    ratio = (len(split.y_train) - split.y_train.sum()) / split.y_train.sum()
    weights = [c["scale_pos_weight"] for c in sel["candidates"]]
    assert weights == pytest.approx(sorted([1.0, np.sqrt(ratio), ratio]), rel=1e-3)
    assert sel["scale_pos_weight"] in weights
    assert all(c["rounds"] >= 50 for c in sel["candidates"])  # never a handful of rounds
    assert sel["val_aucpr"] == max(c["val_aucpr"] for c in sel["candidates"])


def test_ensemble_falls_back_to_its_best_member_when_stacking_does_not_help() -> None:
    """The Isolation Forest's score points at fraud in the first half of validation and away
    from it in the second (its pattern changed); XGBoost is informative throughout. A stack
    fitted on either half fails on the other, so the ensemble passes XGBoost's score through."""
    rng = np.random.default_rng(0)
    n = 4000
    y = (rng.random(n) < 0.03).astype(int)
    sign = np.where(np.arange(n) < n // 2, 1.0, -1.0)
    scores = {
        "if": 0.5 + 0.2 * sign * (y - 0.5) + 0.05 * rng.random(n),
        "ae": rng.random(n) + 0.01,
        "xgb": np.clip(0.05 + 0.3 * y * rng.random(n) + 0.2 * rng.random(n), 1e-3, 1),
    }  # fmt: skip
    ens = Ensemble(dict.fromkeys(MEMBER_KEYS, "v1")).fit(scores, y)
    assert ens.validation["xgb"] >= ens.validation["stack"]
    assert ens.fallback == "xgb"
    np.testing.assert_array_equal(ens.predict(scores), scores["xgb"])
    assert ens.params()["fallback"] == "xgb"
