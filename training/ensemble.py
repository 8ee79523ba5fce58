"""Ensemble: logistic stacking of the IF, XGBoost and autoencoder scores, fitted on the
validation window (models never see their own training rows here), with a decision
threshold chosen for a target false-positive rate.

The stack is kept only when it beats its best member on validation, measured out of sample
(fitted on one half of the validation window in time, scored on the other, both ways);
otherwise the ensemble *is* that member (``fallback``): it passes the member's score through,
with a threshold chosen on validation like the stack's. Serving calls ``predict`` and reads
``threshold`` either way."""

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
        self.fallback: str | None = None  # a member key: the ensemble passes its score through
        self.validation: dict[str, float] = {}  # out-of-sample validation AP: stack and members

    def fit(self, scores: dict[str, np.ndarray], y: np.ndarray) -> Self:
        y = np.asarray(y).astype(int)
        self.model.fit(stack_features(scores), y)
        self.validation = _validation_ap(scores, y)
        best = max(MEMBERS, key=lambda m: self.validation[m])
        # A tie goes to the member: the simpler model, and the serving side's own scores.
        self.fallback = best if self.validation[best] >= self.validation["stack"] else None
        self.threshold = threshold_for_fpr(self.predict(scores), y, self.target_fpr)
        return self

    def predict(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        if self.fallback is not None:
            return np.asarray(scores[self.fallback], dtype=np.float64)
        return np.asarray(self.model.predict_proba(stack_features(scores))[:, 1], dtype=np.float64)

    def weights(self) -> dict[str, float]:
        return dict(zip(MEMBERS, map(float, self.model.coef_[0]), strict=True))

    def params(self) -> dict[str, Any]:
        return {"target_fpr": self.target_fpr, "members": self.member_versions, "weights": self.weights(),
                "fallback": self.fallback, "validation_aucpr": self.validation}  # fmt: skip

    def save(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "meta.json").write_text(
            json.dumps(
                {
                    "family": self.family, "members": self.member_versions, "target_fpr": self.target_fpr,
                    "threshold": self.threshold, "coef": self.model.coef_[0].tolist(),
                    "intercept": float(self.model.intercept_[0]), "fallback": self.fallback,
                    "validation_aucpr": self.validation,
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
        obj.fallback = meta.get("fallback")  # artefacts before the fallback: the stack
        obj.validation = meta.get("validation_aucpr") or {}
        return obj


def _validation_ap(scores: dict[str, np.ndarray], y: np.ndarray) -> dict[str, float]:
    """Average precision on validation, mean over its two halves in row (time) order: the
    stack fitted on the other half, each member's own score as is (members are never fitted
    on validation rows, so theirs is out of sample already)."""
    from sklearn.metrics import average_precision_score

    half = len(y) // 2
    folds = [(np.arange(half), np.arange(half, len(y))), (np.arange(half, len(y)), np.arange(half))]
    Z = stack_features(scores)
    out: dict[str, list[float]] = {k: [] for k in (*MEMBERS, "stack")}
    for fit_rows, eval_rows in folds:
        if not (0 < y[eval_rows].sum() < len(eval_rows)):
            continue
        ye = y[eval_rows]
        for m in MEMBERS:
            out[m].append(float(average_precision_score(ye, scores[m][eval_rows])))
        if 0 < y[fit_rows].sum() < len(fit_rows):
            lr = LogisticRegression(class_weight="balanced", max_iter=1000).fit(Z[fit_rows], y[fit_rows])
            out["stack"].append(float(average_precision_score(ye, lr.predict_proba(Z[eval_rows])[:, 1])))
        else:
            out["stack"].append(0.0)  # no fraud to fit on: the stack cannot be trusted
    return {k: round(float(np.mean(v)), 6) if v else 0.0 for k, v in out.items()}
