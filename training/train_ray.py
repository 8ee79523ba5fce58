"""Ray Train jobs: the autoencoder as a data-parallel ``TorchTrainer`` run (DDP over gloo) and
XGBoost as an ``XGBoostTrainer`` run (histograms all-reduced over the workers).

Each job is built in one place (``ScalingConfig``/``RunConfig``/``CheckpointConfig``) around
one loop every worker runs (``ae_train_loop_per_worker``, ``xgb_train_loop_per_worker``).
The autoencoder's workers each train on an equal slice of a per-epoch permutation of the
genuine training rows (equal slices keep the all-reduce of every step in lock-step) and rank 0
checkpoints model and optimizer each epoch. XGBoost's workers each get an equal shard of the
training rows (Ray Data) and the whole validation window, and ``RayTrainReportCallback``
checkpoints the booster every few rounds. A run started again under the same name and storage
resumes from its latest checkpoint (Ray Train V2 restores the run's checkpoint manager).
Inside a Ray Tune trial the autoencoder's per-epoch reports reach Tune through
``TuneReportCallback``, so ASHA can stop the run.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xgboost as xgb

from training.autoencoder import AutoencoderModel
from training.base import as_matrix
from training.xgboost_model import XGBoostModel

if TYPE_CHECKING:
    from ray.train import Checkpoint, RunConfig, ScalingConfig


def _validate(
    net: Any, val: np.ndarray | None, scored: tuple[np.ndarray, np.ndarray] | None
) -> dict[str, float]:
    """Validation loss on genuine rows and, with labelled rows, the AUCPR of the error."""
    import torch

    from training.evaluate import evaluate

    out: dict[str, float] = {}
    net.eval()
    with torch.no_grad():
        if val is not None and len(val):
            v = torch.from_numpy(val)
            out["val_loss"] = float(((net(v) - v) ** 2).mean())
        if scored is not None:  # the metric Tune optimises
            s = torch.from_numpy(scored[0])
            errors = ((net(s) - s) ** 2).mean(dim=1).numpy()
            out["val_aucpr"] = float(evaluate(errors, scored[1]).get("aucpr", 0.0))
    return out


def _scaling_config(workers: int, cpus_per_worker: float) -> ScalingConfig:
    """``workers`` data-parallel workers holding ``cpus_per_worker`` CPUs each (both jobs)."""
    from ray.train import ScalingConfig

    return ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus_per_worker})


def _run_config(name: str, storage: Path, callbacks: list[Any] | None = None) -> RunConfig:
    """Both jobs' run policy: named runs under ``storage`` (so a run started again resumes),
    the last two checkpoints kept, one worker failure survived."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=name,
        storage_path=str(storage.resolve()),
        checkpoint_config=CheckpointConfig(num_to_keep=2),
        failure_config=FailureConfig(max_failures=1),
        callbacks=callbacks,
    )


def _final_checkpoint(trainer: Any, name: str) -> Checkpoint:
    """Run ``trainer`` to the end; its latest checkpoint, which holds the trained model."""
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} finished without a checkpoint")
    return result.checkpoint


def ae_train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train ``AutoencoderNet`` on this worker's slice; report val loss/AUCPR every epoch."""
    import ray
    import ray.train
    import torch
    from ray.train.torch import prepare_model

    from training.autoencoder import AutoencoderNet

    torch.set_num_threads(1)  # fractional CPUs: one thread per worker
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    X = np.array(ray.get(config["train_ref"]))  # a writable copy for torch
    val = ray.get(config["val_ref"]) if config.get("val_ref") is not None else None
    scored = ray.get(config["scored_ref"]) if config.get("scored_ref") is not None else None
    p = config["params"]
    torch.manual_seed(p["seed"])
    net = AutoencoderNet(X.shape[1], p["hidden"], p["latent"])
    opt = torch.optim.Adam(net.parameters(), lr=p["lr"], weight_decay=p["weight_decay"])
    first_epoch, history = 0, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resume where the run stopped
        with checkpoint.as_directory() as d:
            state = torch.load(Path(d) / "state.pt", weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        first_epoch, history = int(state["epoch"]) + 1, list(state["history"])
    model = prepare_model(net)  # DistributedDataParallel when world > 1
    data = torch.from_numpy(X)
    per_worker = len(data) // world
    batch = max(1, p["batch_size"] // world)  # the global batch stays what the params say
    for epoch in range(first_epoch, p["epochs"]):
        model.train()
        gen = torch.Generator().manual_seed(p["seed"] * 1000 + epoch)  # same order on every worker
        mine = torch.randperm(len(data), generator=gen)[rank * per_worker : (rank + 1) * per_worker]
        total = 0.0
        for idx in mine.split(batch):
            rows = data[idx]
            opt.zero_grad()
            loss = ((model(rows) - rows) ** 2).mean()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        metrics: dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / max(1, per_worker)}
        metrics |= _validate(net, val, scored)
        history.append(metrics.get("val_loss", metrics["train_loss"]))
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                state = {"net": net.state_dict(), "opt": opt.state_dict(), "epoch": epoch, "history": history}
                torch.save(state, Path(tmp) / "state.pt")
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)


def fit_autoencoder(
    model: AutoencoderModel,
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    *,
    storage: Path,
    name: str,
    workers: int = 2,
    cpus_per_worker: float = 0.5,
    in_tune: bool = False,
) -> AutoencoderModel:
    """Fit ``model`` with a ``TorchTrainer`` of ``workers`` data-parallel workers.

    The scaler comes from the genuine training rows (as in ``AutoencoderModel.fit``); the
    trained weights come back from the run's latest checkpoint. Ray must be initialised.
    """
    import ray
    import torch
    from ray.train.torch import TorchTrainer

    X = as_matrix(X)
    genuine = X[np.asarray(y) == 0] if y is not None else X
    model.set_scaler(genuine)
    config: dict[str, Any] = {"params": model.params(), "train_ref": ray.put(model.standardise(genuine))}
    if X_val is not None and y_val is not None and len(y_val):
        X_val, y_val = as_matrix(X_val), np.asarray(y_val)
        config["val_ref"] = ray.put(model.standardise(X_val[y_val == 0]))
        config["scored_ref"] = ray.put((model.standardise(X_val), y_val.astype(np.int8)))
    callbacks: list[Any] = []
    if in_tune:
        from ray.tune.integration.ray_train import TuneReportCallback

        callbacks.append(TuneReportCallback())
    trainer = TorchTrainer(
        ae_train_loop_per_worker,
        train_loop_config=config,
        scaling_config=_scaling_config(workers, cpus_per_worker),
        run_config=_run_config(name, storage, callbacks),
    )
    with _final_checkpoint(trainer, name).as_directory() as d:
        state = torch.load(Path(d) / "state.pt", weights_only=True)
    model.net.load_state_dict(state["net"])
    model.history = [float(v) for v in state["history"]]
    return model


XGB_LABEL = "__fraudray_label__"  # the label column of the Ray Data frames; never a feature name
XGB_HISTORY = "fraudray_val_aucpr"  # booster attribute: AUCPR per round, carried in checkpoints
XGB_CHECKPOINT_EVERY = 25  # rounds; a resumed run repeats at most this many


class _History(xgb.callback.TrainingCallback):
    """Appends each round's AUCPR to the history restored from the checkpoint and stores it
    on the booster, so that every checkpoint carries the whole history (placed before
    ``RayTrainReportCallback``, which saves the booster in the same ``after_iteration``)."""

    def __init__(self, history: list[float], evals: str) -> None:
        self.history, self.evals = history, evals

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
        self.history.append(float(evals_log[self.evals]["aucpr"][-1]))
        model.set_attr(**{XGB_HISTORY: json.dumps(self.history)})
        return False


def _stopped_early(history: list[float], rounds: int | None) -> bool:
    """Whether early stopping had already ended the run whose AUCPR history this is."""
    return rounds is not None and bool(history) and len(history) - 1 - int(np.argmax(history)) >= rounds


def xgb_train_loop_per_worker(config: dict[str, Any]) -> None:
    """Boost on this worker's shard of the training rows (XGBoost all-reduces the histograms,
    so every worker grows the same trees) until ``rounds`` or early stopping on validation
    AUCPR; ``RayTrainReportCallback`` checkpoints rank 0's booster with the AUCPR of its round."""
    import ray.train
    from ray.train.xgboost import RayTrainReportCallback

    class ReportWithCheckpoints(RayTrainReportCallback):
        """Reports only with its checkpoints (every ``XGB_CHECKPOINT_EVERY`` rounds and at the
        end): every ``ray.train.report`` waits until the controller has taken the previous one,
        and it polls the workers every 2 s, so a report per round paced boosting at about one
        round per poll (68 rounds took 164 s)."""

        def _report_metrics(self, report_dict: dict[str, Any]) -> None:
            return None  # the round's AUCPR is in the history, reported with the next checkpoint

    names = config["feature_names"]

    def dmatrix(name: str) -> xgb.DMatrix:
        frame = ray.train.get_dataset_shard(name).materialize().to_pandas()
        return xgb.DMatrix(frame[names].to_numpy(np.float32), label=frame[XGB_LABEL].to_numpy(np.float32),
                           feature_names=names)  # fmt: skip

    booster, history = None, []
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:  # resume where the run stopped
        booster = RayTrainReportCallback.get_model(checkpoint)
        history = json.loads(booster.attr(XGB_HISTORY) or "[]")
    remaining = config["rounds"] - (booster.num_boosted_rounds() if booster is not None else 0)
    early = config["early_stopping_rounds"]
    if remaining <= 0 or _stopped_early(history, early):
        return  # the latest checkpoint already holds the finished booster
    dtrain = dmatrix("train")
    evals = [(dtrain, "train")]
    if "val" in config["datasets"]:
        evals.append((dmatrix("val"), "val"))
    watched = evals[-1][1]
    callbacks = [
        _History(history, watched),
        ReportWithCheckpoints(metrics={"aucpr": f"{watched}-aucpr"}, frequency=XGB_CHECKPOINT_EVERY),
    ]
    # Early stopping restarts its count at a resumed round; the best round over the whole
    # history is taken afterwards (fit_xgboost), so that only costs a few extra rounds.
    xgb.train(config["params"], dtrain, num_boost_round=remaining, evals=evals, xgb_model=booster,
              early_stopping_rounds=early, verbose_eval=False, callbacks=callbacks)  # fmt: skip


def fit_xgboost(
    model: XGBoostModel,
    X: np.ndarray,
    y: np.ndarray,
    X_val: np.ndarray | None = None,
    y_val: np.ndarray | None = None,
    *,
    storage: Path,
    name: str,
    workers: int = 2,
    cpus_per_worker: float = 0.5,
) -> XGBoostModel:
    """Fit ``model`` with an ``XGBoostTrainer`` of ``workers`` data-parallel workers.

    The parameters are the model's own (``scale_pos_weight`` from all training labels, not a
    shard's); early stopping watches validation AUCPR when there is a validation window. The
    booster comes back from the run's latest checkpoint into ``model``, which then saves,
    scores and explains like one fitted in process. Ray must be initialised.
    """
    import pandas as pd
    import ray.data
    from ray.train import DataConfig
    from ray.train.xgboost import RayTrainReportCallback, XGBoostTrainer

    names = model.feature_names
    p = model.params()

    def frame(X: np.ndarray, y: np.ndarray) -> pd.DataFrame:
        out = pd.DataFrame(as_matrix(X), columns=names)
        out[XGB_LABEL] = np.asarray(y, dtype=np.float32)
        return out

    datasets: dict[str, Any] = {"train": ray.data.from_pandas(frame(X, y))}
    if X_val is not None and y_val is not None and len(y_val):
        datasets["val"] = ray.data.from_pandas(frame(X_val, y_val))
    has_val = "val" in datasets
    config = {
        # One thread per worker: each holds a fraction of a CPU.
        "params": model.train_params(y) | {"nthread": max(1, int(cpus_per_worker))},
        "rounds": model.rounds(),
        "early_stopping_rounds": p["early_stopping_rounds"] if has_val else None,
        "feature_names": names,
        "datasets": list(datasets),
    }
    trainer = XGBoostTrainer(
        xgb_train_loop_per_worker,
        train_loop_config=config,
        scaling_config=_scaling_config(workers, cpus_per_worker),
        run_config=_run_config(name, storage),
        datasets=datasets,
        # Training rows are sharded; every worker evaluates the whole validation window, since
        # XGBoost's distributed AUCPR averages the workers' own AUCPRs (exact only on equal data).
        dataset_config=DataConfig(datasets_to_split=["train"]),
    )
    booster = RayTrainReportCallback.get_model(_final_checkpoint(trainer, name))
    history = [float(v) for v in json.loads(booster.attr(XGB_HISTORY) or "[]")]
    booster.set_attr(**{XGB_HISTORY: None})  # kept in model.history, not in the saved model
    if has_val and history:  # as EarlyStopping picks it: the first round of the best AUCPR
        best = int(np.argmax(history))
        booster.set_attr(best_iteration=str(best), best_score=str(history[best]))  # whole history
    else:
        best = booster.num_boosted_rounds() - 1
    return model.set_booster(booster, history, best)
