"""Ray Train jobs: the autoencoder as a data-parallel ``TorchTrainer`` run (DDP over gloo).

One place builds the job (``ScalingConfig``/``RunConfig``/``CheckpointConfig``) and one
function is the loop every worker runs (``ae_train_loop_per_worker``). Each worker trains on
its equal slice of a per-epoch permutation of the genuine training rows (equal slices keep
the all-reduce of every step in lock-step), rank 0 checkpoints the model and optimizer each
epoch, and a run started again under the same name and storage resumes from its latest
checkpoint (Ray Train V2 restores the run's checkpoint manager). Inside a Ray Tune trial the
per-epoch reports reach Tune through ``TuneReportCallback``, so ASHA can stop the run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from training.autoencoder import AutoencoderModel
from training.base import as_matrix


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
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
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
        scaling_config=ScalingConfig(num_workers=workers, resources_per_worker={"CPU": cpus_per_worker}),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage.resolve()),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            failure_config=FailureConfig(max_failures=1),
            callbacks=callbacks,
        ),
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"Ray Train run {name} finished without a checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / "state.pt", weights_only=True)
    model.net.load_state_dict(state["net"])
    model.history = [float(v) for v in state["history"]]
    return model
