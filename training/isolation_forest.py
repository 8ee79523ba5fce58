"""Isolation Forest: unsupervised; the score is the anomaly score ``-score_samples`` (≈0.3–0.8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import joblib
import numpy as np
from sklearn.ensemble import IsolationForest

from training.base import as_matrix, read_meta, write_meta


class IsolationForestModel:
    family: ClassVar[str] = "if"

    def __init__(
        self,
        feature_names: list[str],
        *,
        n_estimators: int = 200,
        max_samples: int | float = 256,
        max_features: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.feature_names = list(feature_names)
        self.threshold: float | None = None  # decision threshold on ``score``, when chosen
        self._params = {"n_estimators": n_estimators, "max_samples": max_samples,
                        "max_features": max_features, "seed": seed}  # fmt: skip
        self.model = IsolationForest(
            n_estimators=n_estimators, max_samples=max_samples, max_features=max_features,
            random_state=seed, n_jobs=1,
        )  # fmt: skip

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None
    ) -> Self:
        # Fit on genuine rows only when labels exist: the forest should learn normal traffic.
        X = as_matrix(X)
        genuine = X[np.asarray(y) == 0] if y is not None and len(y) == len(X) else X
        self.model.fit(genuine if len(genuine) else X)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(-self.model.score_samples(as_matrix(X)), dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def save(self, path: Path) -> None:
        write_meta(path, family=self.family, feature_names=self.feature_names, params=self._params,
                   threshold=self.threshold)  # fmt: skip
        joblib.dump(self.model, path / "model.joblib")

    @classmethod
    def load(cls, path: Path) -> Self:
        meta = read_meta(path)
        obj = cls(meta["feature_names"], **meta["params"])
        obj.model = joblib.load(path / "model.joblib")
        obj.threshold = meta.get("threshold")
        return obj
