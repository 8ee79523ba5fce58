"""Ensemble: logistic stacking of the IF, XGBoost and autoencoder scores, fitted on the
validation window (models never see their own training rows here), with a decision
threshold chosen for a target false-positive rate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
from sklearn.linear_model import LogisticRegression

from core.families import MEMBER_KEYS
from training.evaluate import threshold_for_fpr

MEMBERS = MEMBER_KEYS  # the stacked members, in stacking order


def stack_features(scores: dict[str, np.ndarray]) -> np.ndarray:
    """Member scores on comparable scales: IF as is, XGB as log-odds, AE as log error."""
    p = np.clip(scores["xgb"], 1e-6, 1 - 1e-6)
    return np.column_stack([scores["if"], np.log(p / (1 - p)), np.log(scores["ae"] + 1e-9)])


class Ensemble:
    family: ClassVar[str] = "ensemble"

    def __init__(self, member_versions: dict[str, str], target_fpr: float = 0.01) -> None:
        self.member_versions = dict(member_versions)
        self.target_fpr = target_fpr
        self.model = LogisticRegression(class_weight="balanced", max_iter=1000)
        self.threshold = 0.5

    def fit(self, scores: dict[str, np.ndarray], y: np.ndarray) -> Self:
        Z = stack_features(scores)
        self.model.fit(Z, np.asarray(y).astype(int))
        self.threshold = threshold_for_fpr(self.predict(scores), y, self.target_fpr)
        return self

    def predict(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.model.predict_proba(stack_features(scores))[:, 1], dtype=np.float64)

    def weights(self) -> dict[str, float]:
        return dict(zip(MEMBERS, map(float, self.model.coef_[0]), strict=True))

    def params(self) -> dict[str, Any]:
        return {"target_fpr": self.target_fpr, "members": self.member_versions, "weights": self.weights()}

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "meta.json").write_text(
            json.dumps(
                {
                    "family": self.family, "members": self.member_versions, "target_fpr": self.target_fpr,
                    "threshold": self.threshold, "coef": self.model.coef_[0].tolist(),
                    "intercept": float(self.model.intercept_[0]),
                },
                indent=2,
            )
        )  # fmt: skip

    @classmethod
    def load(cls, path: Path) -> Self:
        meta = json.loads((path / "meta.json").read_text())
        obj = cls(meta["members"], meta["target_fpr"])
        obj.model.coef_ = np.asarray([meta["coef"]])
        obj.model.intercept_ = np.asarray([meta["intercept"]])
        obj.model.classes_ = np.asarray([0, 1])
        obj.threshold = float(meta["threshold"])
        return obj
