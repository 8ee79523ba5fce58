"""Train the three model families on a temporal split, stack them into the ensemble,
evaluate everything on the held-out test window, and register each version.

Every family's fit is one ``training_runs`` row; every registered version carries its test
metrics, its hyperparameters, the training window and the drift reference of the training
rows (see :mod:`training.registry`). With ``ae_workers`` > 0 the autoencoder trains as a
Ray Train ``TorchTrainer`` run and XGBoost as an ``XGBoostTrainer`` run (``xgb_workers``,
by default as many; Ray is initialised as ``fraudray`` does it when it is not yet);
with 0 they train in this process.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.families import MEMBER_KEYS
from core.settings import Settings
from training.base import FraudModel
from training.data import Split
from training.ensemble import Ensemble
from training.evaluate import evaluate, save_curves_png, threshold_for_fpr
from training.families import build
from training.isolation_forest import IsolationForestModel
from training.registry import ModelVersion, Registry, drift_reference


@dataclass
class TrainResult:
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # family -> test metrics
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # family -> fit time


def ensure_ray(settings: Settings) -> None:
    """A private local Ray, or the cluster at FRAUDRAY_RAY_ADDRESS, unless Ray is up already."""
    import ray

    if ray.is_initialized():
        return
    from core import ray_client
    from core.errors import StackError

    try:
        ray_client.init(settings, local=not settings.ray.address, log_to_driver=False)
    except Exception as exc:  # Ray raises a bare Exception when its node cannot start
        raise StackError(
            f"Ray did not start ({exc}); retry on a quieter machine, or train in this process "
            "with --train-workers 0 (and no --tune)"
        ) from exc


def _fit(model: FraudModel, split: Split, settings: Settings, workers: int, cpus: float) -> None:
    """In this process, or with ``workers`` > 0 as a Ray Train run where the family has one
    (``fit_distributed``: the autoencoder, XGBoost)."""
    data = (split.X_train, split.y_train, split.X_val, split.y_val)
    run: dict[str, Any] = {"storage": settings.var_dir / "train", "workers": workers, "cpus_per_worker": cpus,
                           "name": f"{model.family}-{time.strftime('%Y%m%dT%H%M%S')}"}  # fmt: skip
    fit_distributed = getattr(model, "fit_distributed", None)
    if workers > 0 and fit_distributed is not None:
        ensure_ray(settings)
        fit_distributed(*data, **run)
    else:
        model.fit(*data)


def train_all(
    split: Split,
    settings: Settings,
    *,
    params: dict[str, dict[str, Any]] | None = None,
    families: tuple[str, ...] = MEMBER_KEYS,
    target_fpr: float = 0.01,
    source: str = "",
    register: bool = True,
    promote: bool = True,
    ae_workers: int = 0,
    xgb_workers: int | None = None,
    cpus_per_worker: float = 0.5,
    progress: Callable[[str], None] | None = None,
) -> TrainResult:
    """Fit ``families`` (and the ensemble when all three are there) and register them.

    ``ae_workers``/``xgb_workers``: Ray Train workers of the autoencoder/XGBoost (0: in this
    process; ``xgb_workers`` None: as many as ``ae_workers``, so one ``--train-workers`` drives both).
    ``progress`` gets a line as each family starts and ends (the CLI prints them).
    """
    params = params or {}
    result = TrainResult()
    registry = Registry(settings) if register else None
    window = split.window()
    reference = drift_reference(split.X_train, split.feature_names) if register else None
    val_scores: dict[str, np.ndarray] = {}
    test_scores: dict[str, np.ndarray] = {}

    def save(name: str, model: Any, metrics: dict[str, Any], model_params: dict[str, Any]) -> None:
        if registry is None:
            return
        version, path = registry.new_version_dir(name)
        model.save(path)
        save_curves_png(metrics, path / "curves.png", name)
        result.versions[name] = registry.register(
            name, version, path, metrics=metrics, params=dict(model_params, source=source),
            feature_names=split.feature_names, promote=promote, window=window, reference=reference,
        )  # fmt: skip

    workers = {"ae": ae_workers, "xgb": ae_workers if xgb_workers is None else xgb_workers}
    say = progress or (lambda _line: None)
    for fam in families:
        say(f"{fam}: fitting ({workers.get(fam, 0) or 'no'} Ray Train workers)")
        model = build(fam, split.feature_names, params.get(fam))
        config = {"source": source, "params": model.params(), "window": window,
                  "train_workers": workers.get(fam, 0)}  # fmt: skip
        with _run(registry, fam, config) as run_metrics:
            t0 = time.perf_counter()
            _fit(model, split, settings, workers.get(fam, 0), cpus_per_worker)
            result.seconds[fam] = time.perf_counter() - t0
            # A family that refits on train + validation keeps its out-of-sample validation
            # scores (``val_scores``): the threshold and the stack are chosen on those.
            oos = getattr(model, "val_scores", None)
            val_scores[fam] = oos if oos is not None else model.score(split.X_val)
            test_scores[fam] = model.score(split.X_test)
            threshold = threshold_for_fpr(val_scores[fam], split.y_val, target_fpr)
            if isinstance(model, IsolationForestModel):
                model.threshold = threshold
            metrics = evaluate(test_scores[fam], split.y_test, threshold, split.scenario_test) | {
                "sizes": split.sizes(), "train_seconds": round(result.seconds[fam], 2),
                "target_fpr": target_fpr,
            }  # fmt: skip
            if getattr(model, "selection", None):  # XGBoost: the chosen rounds and weighting
                metrics["selection"] = model.selection  # type: ignore[attr-defined]
            result.metrics[fam] = metrics
            save(fam, model, metrics, model.params())
            say(f"{fam}: {result.seconds[fam]:.1f} s, test AUCPR {metrics.get('aucpr', float('nan')):.3f}")
            run_metrics.update(_headline(metrics), version=_version(result, fam))
            if "selection" in metrics:
                run_metrics["selection"] = metrics["selection"]
    if set(MEMBER_KEYS) <= set(families) and split.y_val.sum() > 0:
        members = {f: result.versions[f].version for f in MEMBER_KEYS} if result.versions else {}
        say("ensemble: stacking the members' validation scores")
        with _run(registry, "ensemble", {"source": source, "members": members}) as run_metrics:
            ens = Ensemble(members, target_fpr).fit(val_scores, split.y_val)
            metrics = evaluate(ens.predict(test_scores), split.y_test, ens.threshold, split.scenario_test) | {
                "weights": ens.weights(), "sizes": split.sizes(), "target_fpr": target_fpr,
                "fallback": ens.fallback, "validation_aucpr": ens.validation,
            }  # fmt: skip
            result.metrics["ensemble"] = metrics
            save("ensemble", ens, metrics, ens.params())
            run_metrics.update(_headline(metrics), version=_version(result, "ensemble"),
                               fallback=ens.fallback, validation_aucpr=ens.validation)  # fmt: skip
    return result


HEADLINE = ("aucpr", "roc_auc", "recall_at_0.1pct_fpr", "recall_at_1pct_fpr", "precision", "recall", "fpr")


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in (*HEADLINE, "train_seconds") if k in metrics}


def _version(result: TrainResult, name: str) -> str | None:
    mv = result.versions.get(name)
    return mv.version if mv else None


class _NoRun:
    def __enter__(self) -> dict[str, Any]:
        return {}

    def __exit__(self, *exc: object) -> None:
        return None


def _run(registry: Registry | None, name: str, config: dict[str, Any]) -> Any:
    """The registry's ``training_runs`` row around a fit, or nothing without a registry."""
    return registry.run(name, config) if registry is not None else _NoRun()


def report_json(result: TrainResult, path: Path, extra: dict[str, Any] | None = None) -> None:
    """``--report``: the test metrics (curves left out), versions and fit times as JSON."""
    import json

    out = {
        "models": {
            fam: {
                "version": _version(result, fam),
                "train_seconds": result.seconds.get(fam),
                "metrics": {k: v for k, v in m.items() if not k.endswith("_curve")},
            }
            for fam, m in result.metrics.items()
        },
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, default=float))
