"""XGBoost: supervised, class imbalance via ``scale_pos_weight``, early stopping on validation AUCPR."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import numpy as np
import xgboost as xgb

from training.base import as_matrix, read_meta, write_meta
from training.data import Split


class XGBoostModel:
    family: ClassVar[str] = "xgb"

    def __init__(
        self,
        feature_names: list[str],
        *,
        n_estimators: int = 400,
        max_depth: int = 6,
        learning_rate: float = 0.1,
        subsample: float = 0.9,
        colsample_bytree: float = 0.9,
        min_child_weight: float = 1.0,
        early_stopping_rounds: int = 30,
        seed: int = 0,
        nthread: int = 2,
    ) -> None:
        self.feature_names = list(feature_names)
        self._params: dict[str, Any] = {
            "n_estimators": n_estimators, "max_depth": max_depth, "learning_rate": learning_rate,
            "subsample": subsample, "colsample_bytree": colsample_bytree,
            "min_child_weight": min_child_weight, "early_stopping_rounds": early_stopping_rounds,
            "seed": seed, "nthread": nthread,
        }  # fmt: skip
        self.booster: xgb.Booster | None = None
        self.best_iteration: int | None = None
        self.history: list[float] = []

    def train_params(self, y: np.ndarray) -> dict[str, Any]:
        """``xgb.train`` parameters for training labels ``y``: ``scale_pos_weight`` is their
        genuine/fraud ratio (of all of them, also when workers each train on a shard)."""
        y = np.asarray(y, dtype=np.float32)
        pos = float(y.sum())
        if pos == 0:
            raise ValueError("XGBoost needs fraud examples in the training data (labels are all 0)")
        p = self._params
        return {
            "objective": "binary:logistic", "eval_metric": "aucpr", "tree_method": "hist",
            "max_depth": p["max_depth"], "eta": p["learning_rate"], "subsample": p["subsample"],
            "colsample_bytree": p["colsample_bytree"], "min_child_weight": p["min_child_weight"],
            "scale_pos_weight": (len(y) - pos) / pos, "seed": p["seed"], "nthread": p["nthread"],
        }  # fmt: skip

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        callbacks: list[Any] | None = None,
    ) -> Self:
        params = self.train_params(y)
        p = self._params
        dtrain = xgb.DMatrix(as_matrix(X), label=np.asarray(y, np.float32), feature_names=self.feature_names)
        evals = [(dtrain, "train")]
        early = None
        if X_val is not None and y_val is not None and len(y_val):
            evals.append(
                (xgb.DMatrix(as_matrix(X_val), label=y_val, feature_names=self.feature_names), "val")
            )
            early = p["early_stopping_rounds"]
        result: dict[str, Any] = {}
        booster = xgb.train(
            params, dtrain, num_boost_round=p["n_estimators"], evals=evals, evals_result=result,
            early_stopping_rounds=early, verbose_eval=False, callbacks=callbacks,
        )  # fmt: skip
        history = [float(v) for v in result.get("val", result["train"])["aucpr"]]
        best = int(getattr(booster, "best_iteration", len(history) - 1))
        return self.set_booster(booster, history, best)

    def set_booster(self, booster: xgb.Booster, history: list[float], best_iteration: int) -> Self:
        """Adopt a booster trained elsewhere (a Ray Train run) with its per-round validation
        AUCPR and the round that scored best (scores and explanations stop there)."""
        self.booster, self.history, self.best_iteration = booster, list(history), int(best_iteration)
        return self

    def _dmatrix(self, X: np.ndarray) -> xgb.DMatrix:
        return xgb.DMatrix(as_matrix(X), feature_names=self.feature_names)

    def _range(self) -> tuple[int, int]:
        return (0, (self.best_iteration or 0) + 1)

    def score(self, X: np.ndarray) -> np.ndarray:
        if self.booster is None:
            raise RuntimeError("model is not fitted")
        return np.asarray(self.booster.predict(self._dmatrix(X), iteration_range=self._range()), np.float64)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """SHAP values per feature (last column is the bias), in log-odds."""
        if self.booster is None:
            raise RuntimeError("model is not fitted")
        out = self.booster.predict(self._dmatrix(X), pred_contribs=True, iteration_range=self._range())
        return np.asarray(out, dtype=np.float64)

    def attribution(self, row: np.ndarray) -> np.ndarray:
        """TreeSHAP contributions of one row (the bias column dropped)."""
        return np.asarray(self.contributions(as_matrix(row).reshape(1, -1))[0, :-1], dtype=np.float64)

    def fit_distributed(self, *data: np.ndarray | None, **run: Any) -> Self:
        """Fit as a Ray Train ``XGBoostTrainer`` run (``training.train_ray.fit_xgboost``)."""
        from training.train_ray import fit_xgboost

        fit_xgboost(self, *data, **run)  # type: ignore[arg-type]
        return self

    # -- Ray Tune ------------------------------------------------------------------------------
    TUNE_MAX_T: ClassVar[int] = 300  # boosting rounds; ASHA stops on validation AUCPR per round

    @staticmethod
    def tune_space() -> dict[str, Any]:
        from ray import tune

        return {
            "max_depth": tune.randint(3, 9),
            "learning_rate": tune.loguniform(0.02, 0.3),
            "subsample": tune.uniform(0.6, 1.0),
            "colsample_bytree": tune.uniform(0.5, 1.0),
            "min_child_weight": tune.loguniform(0.5, 10.0),
        }

    @classmethod
    def tune_trial(cls, config: dict[str, Any], split: Split, max_t: int, **_: Any) -> None:
        from ray import tune

        class Report(xgb.callback.TrainingCallback):
            def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
                tune.report({"val_aucpr": float(evals_log["val"]["aucpr"][-1]), "rounds": epoch + 1})
                return False

        cls(split.feature_names, n_estimators=max_t, nthread=1, **config).fit(
            split.X_train, split.y_train, split.X_val, split.y_val, callbacks=[Report()]
        )

    def params(self) -> dict[str, Any]:
        return dict(self._params, best_iteration=self.best_iteration)

    def save(self, path: Path) -> None:
        if self.booster is None:
            raise RuntimeError("model is not fitted")
        write_meta(path, family=self.family, feature_names=self.feature_names, params=self._params,
                   best_iteration=self.best_iteration)  # fmt: skip
        self.booster.save_model(str(path / "model.ubj"))

    @classmethod
    def load(cls, path: Path) -> Self:
        meta = read_meta(path)
        obj = cls(meta["feature_names"], **meta["params"])
        obj.booster = xgb.Booster()
        obj.booster.load_model(str(path / "model.ubj"))
        obj.best_iteration = meta["best_iteration"]
        return obj
