"""The small interface every model family implements, and where artefacts live.

A model maps a float32 feature matrix to a fraud score per row: higher means more likely
fraud. Families differ in what ``fit`` needs (labels or not) and in how scores are scaled;
the ensemble calibrates them into one probability.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import numpy as np


@runtime_checkable
class FraudModel(Protocol):
    family: ClassVar[str]  # a key of core.families (the ensemble: "ensemble")
    feature_names: list[str]

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
    ) -> Self:
        """Fit on training rows (unsupervised families ignore ``y`` except to drop fraud)."""
        ...

    def score(self, X: np.ndarray) -> np.ndarray:
        """One float64 score per row; higher = more likely fraud."""
        ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> Self: ...

    def params(self) -> dict[str, Any]: ...

    def attribution(self, row: np.ndarray) -> np.ndarray:
        """Per-feature contribution to one row's score (``/explain``), one float per feature."""
        ...

    # Ray Tune (``training.tune``): the search space, one trial, and its budget (rounds, epochs).
    TUNE_MAX_T: ClassVar[int]

    @staticmethod
    def tune_space() -> dict[str, Any]: ...

    @classmethod
    def tune_trial(cls, config: dict[str, Any], split: Any, max_t: int, **kwargs: Any) -> None: ...

    # Optional: ``fit_distributed(X, y, X_val, y_val, **run)`` fits as a Ray Train run.


def as_matrix(X: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(X, dtype=np.float32))


def write_meta(path: Path, **meta: Any) -> None:
    path.mkdir(parents=True, exist_ok=True)
    (path / "meta.json").write_text(json.dumps(meta, indent=2, default=float))


def read_meta(path: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads((path / "meta.json").read_text())
    return meta
