"""The model families: one row each, the names every room uses for them.

A family is one module in ``training/`` implementing ``training.base.FraudModel`` plus one row
here; ``training.families`` resolves ``implementation`` to the class, and serving, Tune, the
drift monitor and the CLI iterate over ``MEMBERS``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Family:
    key: str  # registry name, CLI choice, key of per-model scores ("xgb")
    deployment: str  # Serve deployment and its section in config files ("XGBoost")
    metric: str  # the ``model`` label of metrics ("xgboost")
    title: str  # for people ("XGBoost")
    implementation: str  # "module:Class" of its FraudModel in training/
    supervised: bool  # learns from labels (else: fitted on genuine rows only)


MEMBERS: tuple[Family, ...] = (
    Family("if", "IsolationForest", "isolation_forest", "Isolation Forest",
           "training.isolation_forest:IsolationForestModel", supervised=False),
    Family("xgb", "XGBoost", "xgboost", "XGBoost", "training.xgboost_model:XGBoostModel", supervised=True),
    Family("ae", "Autoencoder", "autoencoder", "Autoencoder",
           "training.autoencoder:AutoencoderModel", supervised=False),
)  # fmt: skip
MEMBER_KEYS: tuple[str, ...] = tuple(f.key for f in MEMBERS)
BY_KEY: dict[str, Family] = {f.key: f for f in MEMBERS}
DEPLOYMENT_NAMES: dict[str, str] = {f.key: f.deployment for f in MEMBERS}
METRIC_NAMES: dict[str, str] = {f.key: f.metric for f in MEMBERS}

ENSEMBLE = "ensemble"  # the stacked model's registry name
SCORER_DEPLOYMENT = "Ensemble"  # the deployment the consumers and the API call to score
ALL_KEYS: tuple[str, ...] = (*MEMBER_KEYS, ENSEMBLE)
