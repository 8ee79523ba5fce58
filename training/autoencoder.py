"""PyTorch autoencoder trained on genuine traffic; score = mean squared reconstruction error.

Per-feature reconstruction errors are kept (``feature_errors``) for explanations. The
training loop is a plain function (``train_loop``) so that Ray Train's ``TorchTrainer``
and a local ``fit`` run the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import torch
from torch import nn

from training.base import as_matrix, read_meta, write_meta
from training.data import Split
from training.evaluate import evaluate


class AutoencoderNet(nn.Module):
    def __init__(self, n_features: int, hidden: int, latent: int) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(n_features, hidden), nn.ReLU(), nn.Linear(hidden, latent), nn.ReLU()
        )
        self.decoder = nn.Sequential(nn.Linear(latent, hidden), nn.ReLU(), nn.Linear(hidden, n_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.decoder(self.encoder(x))
        return out


def train_loop(
    net: nn.Module,
    X: np.ndarray,
    X_val: np.ndarray | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    seed: int,
    on_epoch: Callable[[int, float, float | None], None] | None = None,
) -> list[float]:
    """Minimise reconstruction MSE on standardised ``X``; returns the validation loss per epoch."""
    torch.manual_seed(seed)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    data = torch.from_numpy(X)
    val = torch.from_numpy(X_val) if X_val is not None and len(X_val) else None
    gen = torch.Generator().manual_seed(seed)
    history: list[float] = []
    for epoch in range(epochs):
        net.train()
        total = 0.0
        for idx in torch.randperm(len(data), generator=gen).split(batch_size):
            batch = data[idx]
            opt.zero_grad()
            loss = ((net(batch) - batch) ** 2).mean()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        val_loss = None
        if val is not None:
            net.eval()
            with torch.no_grad():
                val_loss = ((net(val) - val) ** 2).mean().item()
            history.append(val_loss)
        if on_epoch is not None:
            on_epoch(epoch, total / max(1, len(data)), val_loss)
    return history


class AutoencoderModel:
    family: ClassVar[str] = "ae"

    def __init__(
        self,
        feature_names: list[str],
        *,
        hidden: int = 32,
        latent: int = 8,
        lr: float = 1e-3,
        epochs: int = 15,
        batch_size: int = 512,
        weight_decay: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.feature_names = list(feature_names)
        self._params: dict[str, Any] = {
            "hidden": hidden, "latent": latent, "lr": lr, "epochs": epochs,
            "batch_size": batch_size, "weight_decay": weight_decay, "seed": seed,
        }  # fmt: skip
        self.net = AutoencoderNet(len(self.feature_names), hidden, latent)
        self.mean = np.zeros(len(self.feature_names), dtype=np.float32)
        self.std = np.ones(len(self.feature_names), dtype=np.float32)
        self.history: list[float] = []

    def standardise(self, X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((as_matrix(X) - self.mean) / self.std, dtype=np.float32)

    def set_scaler(self, X_genuine: np.ndarray) -> None:
        X_genuine = as_matrix(X_genuine)
        self.mean = X_genuine.mean(axis=0)
        self.std = np.where(X_genuine.std(axis=0) > 1e-6, X_genuine.std(axis=0), 1.0).astype(np.float32)

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        on_epoch: Callable[[int, float, float | None], None] | None = None,
    ) -> Self:
        """Train on the genuine rows of ``X``; validation loss on the genuine rows of ``X_val``."""
        genuine = as_matrix(X)[np.asarray(y) == 0] if y is not None else as_matrix(X)
        self.set_scaler(genuine)
        val = None
        if X_val is not None:
            val = as_matrix(X_val)[np.asarray(y_val) == 0] if y_val is not None else as_matrix(X_val)
        torch.set_num_threads(1)  # two cores are shared with everything else
        p = self._params
        self.history = train_loop(
            self.net, self.standardise(genuine), None if val is None else self.standardise(val),
            epochs=p["epochs"], batch_size=p["batch_size"], lr=p["lr"], weight_decay=p["weight_decay"],
            seed=p["seed"], on_epoch=on_epoch,
        )  # fmt: skip
        return self

    def feature_errors(self, X: np.ndarray) -> np.ndarray:
        """Squared reconstruction error per row and feature (standardised units)."""
        x = torch.from_numpy(self.standardise(X))
        self.net.eval()
        with torch.no_grad():
            return ((self.net(x) - x) ** 2).numpy().astype(np.float64)

    def score(self, X: np.ndarray) -> np.ndarray:
        return self.feature_errors(X).mean(axis=1)

    def attribution(self, row: np.ndarray) -> np.ndarray:
        """Squared reconstruction error per feature of one row (standardised units)."""
        return np.asarray(self.feature_errors(as_matrix(row).reshape(1, -1))[0], dtype=np.float64)

    def fit_distributed(self, *data: np.ndarray | None, **run: Any) -> Self:
        """Fit as a Ray Train ``TorchTrainer`` run (``training.train_ray.fit_autoencoder``)."""
        from training.train_ray import fit_autoencoder

        fit_autoencoder(self, *data, **run)  # type: ignore[arg-type]
        return self

    # -- Ray Tune ------------------------------------------------------------------------------
    TUNE_MAX_T: ClassVar[int] = 20  # epochs; ASHA stops on validation AUCPR per epoch
    TUNE_REFIT_KEY: ClassVar[str] = "epochs"  # the best trial's epochs become the refit's

    @staticmethod
    def tune_space() -> dict[str, Any]:
        from ray import tune

        return {
            "hidden": tune.choice([16, 32, 64]),
            "latent": tune.choice([4, 8, 12]),
            "lr": tune.loguniform(1e-4, 3e-3),
            "weight_decay": tune.choice([0.0, 1e-5, 1e-4]),
        }

    @classmethod
    def tune_trial(
        cls, config: dict[str, Any], split: Split, max_t: int, *, ae_workers: int = 0, storage: str = ""
    ) -> None:
        """One trial; with ``ae_workers`` > 0 itself a Ray Train ``TorchTrainer`` run whose
        per-epoch reports reach ASHA."""
        from ray import tune

        model = cls(split.feature_names, epochs=max_t, **config)
        if ae_workers > 0:
            trial = tune.get_context().get_trial_id()
            model.fit_distributed(
                split.X_train, split.y_train, split.X_val, split.y_val,
                storage=Path(storage), name=f"ae-trial-{trial}", workers=ae_workers, in_tune=True,
            )  # fmt: skip
            return

        def on_epoch(epoch: int, train_loss: float, _val_loss: float | None) -> None:
            aucpr = evaluate(model.score(split.X_val), split.y_val).get("aucpr", 0.0)
            tune.report({"val_aucpr": aucpr, "train_loss": train_loss, "epochs": epoch + 1})

        model.fit(split.X_train, split.y_train, on_epoch=on_epoch)

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def save(self, path: Path) -> None:
        write_meta(path, family=self.family, feature_names=self.feature_names, params=self._params,
                   mean=self.mean.tolist(), std=self.std.tolist(), history=self.history)  # fmt: skip
        torch.save(self.net.state_dict(), path / "model.pt")

    @classmethod
    def load(cls, path: Path) -> Self:
        meta = read_meta(path)
        obj = cls(meta["feature_names"], **meta["params"])
        obj.net.load_state_dict(torch.load(path / "model.pt", weights_only=True))
        obj.mean = np.asarray(meta["mean"], dtype=np.float32)
        obj.std = np.asarray(meta["std"], dtype=np.float32)
        obj.history = list(meta.get("history", []))
        return obj


__all__ = ["AutoencoderModel", "AutoencoderNet", "train_loop"]
