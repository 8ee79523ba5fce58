"""Ray Tune searches for the model families: each family class declares its ``tune_space``,
``tune_trial`` and ``TUNE_MAX_T`` (``training.families``).

Search spaces (documented in docs/training.md):
- ``xgb``: max_depth 3–8, learning_rate log-uniform 0.02–0.3, subsample 0.6–1, colsample_bytree
  0.5–1, min_child_weight log-uniform 0.5–10; ASHA over boosting rounds (val AUCPR each round).
- ``ae``: hidden {16, 32, 64}, latent {4, 8, 12}, lr log-uniform 1e-4–3e-3, weight_decay
  {0, 1e-5, 1e-4}; ASHA over epochs (val AUCPR of reconstruction error each epoch).
- ``if``: n_estimators {100, 200, 400}, max_samples {128, 256, 512}, max_features 0.5–1;
  one report per trial (nothing to stop early), random search.
Every trial reports ``val_aucpr`` on the validation window; the best config of each
family is then refitted by ``training.pipeline.train_all`` and registered. With
``ae_workers`` > 0 every autoencoder trial is itself a Ray Train ``TorchTrainer`` run whose
per-epoch reports reach ASHA (``TuneReportCallback``); the default (0) trains each trial in
its own process, which on a small machine is faster: the trials already run in parallel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from training.data import Split
from training.families import model_class


def _trainable(
    config: dict[str, Any], *, family: str, split: Split, max_t: int, ae_workers: int = 0, storage: str = ""
) -> None:
    model_class(family).tune_trial(config, split, max_t, ae_workers=ae_workers, storage=storage)


def search(
    family: str,
    split: Split,
    *,
    num_samples: int = 8,
    time_budget_s: float = 300.0,
    max_concurrent: int = 2,
    max_t: int | None = None,
    storage: Path,
    ae_workers: int = 0,
    callbacks: list[Any] | None = None,
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Run one family's search; returns the refit params of its best trial and the ResultGrid frame.

    Ray must be initialised (a private local instance or the cluster at FRAUDRAY_RAY_ADDRESS);
    ``storage`` must be reachable from every node (one machine, or shared storage).
    ``callbacks``: Ray Tune callbacks (the CLI prints each finished trial with one)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    cls = model_class(family)
    max_t = max_t or cls.TUNE_MAX_T
    scheduler = (
        ASHAScheduler(
            time_attr="training_iteration", max_t=max_t, grace_period=max(1, max_t // 10), reduction_factor=3
        )
        if max_t > 1
        else None
    )
    trainable = tune.with_parameters(
        _trainable, family=family, split=split, max_t=max_t, ae_workers=ae_workers,
        storage=str((storage / "train").resolve()),
    )  # fmt: skip
    # A trial that drives a TorchTrainer only waits for its workers, which hold the CPUs.
    resources = {"cpu": 0.0} if family == "ae" and ae_workers > 0 else {"cpu": 0.5}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        param_space=cls.tune_space(),
        tune_config=tune.TuneConfig(
            metric="val_aucpr",
            mode="max",
            scheduler=scheduler,
            num_samples=num_samples,
            max_concurrent_trials=max_concurrent,
            time_budget_s=time_budget_s,
        ),
        run_config=tune.RunConfig(
            name=f"fraudray-{family}", storage_path=str(storage.resolve()), verbose=0, callbacks=callbacks
        ),
    )
    grid = tuner.fit()
    best = grid.get_best_result(metric="val_aucpr", mode="max")
    params = dict(best.config or {})
    refit_key = getattr(cls, "TUNE_REFIT_KEY", None)  # e.g. as many epochs as the best trial survived
    if refit_key:
        params[refit_key] = int((best.metrics or {}).get(refit_key, max_t))
    return params, grid.get_dataframe(filter_metric="val_aucpr", filter_mode="max")
