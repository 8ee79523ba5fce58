"""Train the three model families on a temporal split, stack them into the ensemble,
evaluate everything on the held-out test window, and register each version."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cluster.settings import Settings
from training.autoencoder import AutoencoderModel
from training.base import FraudModel
from training.data import Split
from training.ensemble import MEMBERS, Ensemble
from training.evaluate import evaluate, threshold_for_fpr
from training.isolation_forest import IsolationForestModel
from training.registry import ModelVersion, Registry
from training.xgboost_model import XGBoostModel

FAMILIES: dict[str, type[Any]] = {"if": IsolationForestModel, "xgb": XGBoostModel, "ae": AutoencoderModel}


@dataclass
class TrainResult:
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> test metrics
    versions: dict[str, ModelVersion] = field(default_factory=dict)


def build(family: str, feature_names: list[str], params: dict[str, Any] | None = None) -> FraudModel:
    model: FraudModel = FAMILIES[family](feature_names, **(params or {}))
    return model


def train_all(
    split: Split,
    settings: Settings,
    *,
    params: dict[str, dict[str, Any]] | None = None,
    families: tuple[str, ...] = MEMBERS,
    target_fpr: float = 0.01,
    source: str = "",
    register: bool = True,
    promote: bool = True,
) -> TrainResult:
    """Fit ``families`` (and the ensemble when all three are there) and register them."""
    params = params or {}
    result = TrainResult()
    registry = Registry(settings) if register else None
    val_scores: dict[str, np.ndarray] = {}
    test_scores: dict[str, np.ndarray] = {}
    for fam in families:
        model = build(fam, split.feature_names, params.get(fam))
        model.fit(split.X_train, split.y_train, split.X_val, split.y_val)
        val_scores[fam], test_scores[fam] = model.score(split.X_val), model.score(split.X_test)
        threshold = threshold_for_fpr(val_scores[fam], split.y_val, target_fpr)
        if isinstance(model, IsolationForestModel):
            model.threshold = threshold
        metrics = evaluate(test_scores[fam], split.y_test, threshold) | {"sizes": split.sizes()}
        result.metrics[fam] = metrics
        if registry is not None:
            version, path = registry.new_version_dir(fam)
            model.save(path)
            result.versions[fam] = registry.register(
                fam, version, path, metrics=metrics, params=dict(model.params(), source=source),
                feature_names=split.feature_names, promote=promote,
            )  # fmt: skip
    if set(MEMBERS) <= set(families) and split.y_val.sum() > 0:
        members = {f: result.versions[f].version for f in MEMBERS} if result.versions else {}
        ens = Ensemble(members, target_fpr).fit(val_scores, split.y_val)
        metrics = evaluate(ens.predict(test_scores), split.y_test, ens.threshold) | {"weights": ens.weights()}
        result.metrics["ensemble"] = metrics
        if registry is not None:
            version, path = registry.new_version_dir("ensemble")
            ens.save(path)
            result.versions["ensemble"] = registry.register(
                "ensemble", version, path, metrics=metrics, params=dict(ens.params(), source=source),
                feature_names=split.feature_names, promote=promote,
            )  # fmt: skip
    return result
