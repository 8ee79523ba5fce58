"""XGBoost: supervised. With a validation window the fit chooses its class weighting
(``scale_pos_weight`` among 1, sqrt(genuine/fraud) and genuine/fraud, by validation average
precision) and its number of rounds (the lowest validation logloss after at least
``min_rounds``, patience ``early_stopping_rounds``), so a noisy validation AUCPR can no longer
stop the booster after a handful of rounds. ``refit=True`` then refits on train + validation
with those rounds; it is off by default because the ensemble stacks on the validation scores
of the train-only booster, and a refitted member's scores no longer match that stacking
(measured in docs/training.md)."""

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
        early_stopping_rounds: int = 50,
        min_rounds: int = 50,
        scale_pos_weight: float | None = None,
        refit: bool = False,
        seed: int = 0,
        nthread: int = 2,
    ) -> None:
        """``n_estimators``: most rounds; ``early_stopping_rounds``: patience on validation
        logloss, counted only after ``min_rounds``; ``scale_pos_weight`` None: chosen on
        validation (a number: that weight); ``refit``: refit on train + validation with the
        chosen rounds and weight (else keep the train-only booster at the chosen round)."""
        self.feature_names = list(feature_names)
        self._params: dict[str, Any] = {
            "n_estimators": n_estimators, "max_depth": max_depth, "learning_rate": learning_rate,
            "subsample": subsample, "colsample_bytree": colsample_bytree,
            "min_child_weight": min_child_weight, "early_stopping_rounds": early_stopping_rounds,
            "min_rounds": min_rounds, "scale_pos_weight": scale_pos_weight, "refit": refit,
            "seed": seed, "nthread": nthread,
        }  # fmt: skip
        self.booster: xgb.Booster | None = None
        self.best_iteration: int | None = None
        self.history: list[float] = []
        # What the validation window chose (weight, rounds, every candidate's scores), and the
        # chosen candidate's validation scores: out of sample even after a refit on train + val,
        # so the ensemble stacks on them and thresholds are chosen on them.
        self.selection: dict[str, Any] = {}
        self.val_scores: np.ndarray | None = None

    def weight_candidates(self, y: np.ndarray) -> list[float]:
        """1, sqrt(genuine/fraud), genuine/fraud of training labels ``y`` (or the fixed weight)."""
        if self._params.get("scale_pos_weight") is not None:
            return [float(self._params["scale_pos_weight"])]
        pos = float(np.asarray(y).sum())
        ratio = (len(y) - pos) / max(pos, 1.0)
        return sorted({1.0, round(float(np.sqrt(ratio)), 4), round(ratio, 4)})

    def train_params(self, y: np.ndarray, scale_pos_weight: float | None = None) -> dict[str, Any]:
        """``xgb.train`` parameters for training labels ``y`` (all of them, also when workers
        each train on a shard): ``scale_pos_weight`` given, else the chosen one, else the fixed
        one, else sqrt(genuine/fraud)."""
        y = np.asarray(y, dtype=np.float32)
        pos = float(y.sum())
        if pos == 0:
            raise ValueError("XGBoost needs fraud examples in the training data (labels are all 0)")
        p = self._params
        spw = scale_pos_weight or self.selection.get("scale_pos_weight") or p.get("scale_pos_weight")
        spw = spw or float(np.sqrt((len(y) - pos) / pos))
        return {
            "objective": "binary:logistic", "eval_metric": ["logloss", "aucpr"], "tree_method": "hist",
            "max_depth": p["max_depth"], "eta": p["learning_rate"], "subsample": p["subsample"],
            "colsample_bytree": p["colsample_bytree"], "min_child_weight": p["min_child_weight"],
            "scale_pos_weight": float(spw), "seed": p["seed"], "nthread": p["nthread"],
        }  # fmt: skip

    def rounds(self) -> int:
        """Rounds of the final fit: the chosen ones, else ``n_estimators``."""
        return int(self.selection.get("rounds") or self._params["n_estimators"])

    def select(self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray, y_val: np.ndarray) -> dict[str, Any]:
        """Choose weight and rounds on the validation window (in this process); keeps the
        chosen candidate's booster, validation scores and per-round validation AUCPR."""
        from sklearn.metrics import average_precision_score

        p = self._params
        dtrain = xgb.DMatrix(as_matrix(X), label=np.asarray(y, np.float32), feature_names=self.feature_names)
        dval = xgb.DMatrix(
            as_matrix(X_val), label=np.asarray(y_val, np.float32), feature_names=self.feature_names
        )
        candidates, best = [], None
        for spw in self.weight_candidates(y):
            result: dict[str, Any] = {}
            stop = _PatientStop(p["min_rounds"], p["early_stopping_rounds"])
            booster = xgb.train(self.train_params(y, spw), dtrain, num_boost_round=p["n_estimators"],
                                evals=[(dval, "val")], evals_result=result, verbose_eval=False,
                                callbacks=[stop])  # fmt: skip
            logloss = np.asarray(result["val"]["logloss"])
            floor = min(p["min_rounds"], len(logloss)) - 1
            at = floor + int(np.argmin(logloss[floor:]))  # the best round, never before min_rounds
            scores = np.asarray(booster.predict(dval, iteration_range=(0, at + 1)), np.float64)
            ap = float(average_precision_score(y_val, scores)) if 0 < y_val.sum() < len(y_val) else 0.0
            row = {"scale_pos_weight": spw, "rounds": at + 1, "val_aucpr": round(ap, 6),
                   "val_logloss": round(float(logloss[at]), 6)}  # fmt: skip
            candidates.append(row)
            if best is None or ap > best[0]["val_aucpr"]:
                best = (row, booster, scores, [float(v) for v in result["val"]["aucpr"]])
        assert best is not None
        row, booster, self.val_scores, self.history = best
        self.selection = dict(row, candidates=candidates, refit=bool(p["refit"]))
        self.set_booster(booster, self.history, row["rounds"] - 1)
        return self.selection

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        X_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        callbacks: list[Any] | None = None,
    ) -> Self:
        if not _has_val(y_val):
            return self._boost(X, y, callbacks=callbacks)
        assert X_val is not None and y_val is not None
        self.select(X, y, X_val, y_val)
        if not self._params["refit"]:
            return self
        history = self.history
        self._boost(
            np.vstack([as_matrix(X), as_matrix(X_val)]), np.concatenate([y, y_val]), callbacks=callbacks
        )
        self.history = history  # the chosen candidate's validation AUCPR per round
        return self

    def _boost(self, X: np.ndarray, y: np.ndarray, callbacks: list[Any] | None = None) -> Self:
        """``rounds()`` rounds on all of ``X`` (no early stopping: the rounds were chosen)."""
        dtrain = xgb.DMatrix(as_matrix(X), label=np.asarray(y, np.float32), feature_names=self.feature_names)
        result: dict[str, Any] = {}
        booster = xgb.train(self.train_params(y), dtrain, num_boost_round=self.rounds(),
                            evals=[(dtrain, "train")], evals_result=result, verbose_eval=False,
                            callbacks=callbacks)  # fmt: skip
        history = [float(v) for v in result["train"]["aucpr"]]
        return self.set_booster(booster, history, booster.num_boosted_rounds() - 1)

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
        """Choose weight and rounds on validation in this process, then the final fit (on
        train + validation with ``refit``) as a Ray Train ``XGBoostTrainer`` run
        (``training.train_ray.fit_xgboost``)."""
        from training.train_ray import fit_xgboost

        X, y, X_val, y_val = data
        if _has_val(y_val) and X_val is not None and y_val is not None:
            assert X is not None and y is not None
            self.select(X, y, X_val, y_val)
            if not self._params["refit"]:
                return self
            history = self.history
            fit_xgboost(self, np.vstack([as_matrix(X), as_matrix(X_val)]), np.concatenate([y, y_val]), **run)
            self.history = history
            return self
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

        # One weight (sqrt(genuine/fraud)), boosted on the training window and watched on
        # validation round by round so ASHA can stop it; the refit gets the best config.
        model = cls(split.feature_names, n_estimators=max_t, nthread=1, **config)
        dtrain = xgb.DMatrix(split.X_train, label=split.y_train, feature_names=split.feature_names)
        dval = xgb.DMatrix(split.X_val, label=split.y_val, feature_names=split.feature_names)
        xgb.train(model.train_params(split.y_train), dtrain, num_boost_round=max_t, evals=[(dval, "val")],
                  verbose_eval=False, callbacks=[Report()])  # fmt: skip

    def params(self) -> dict[str, Any]:
        return dict(self._params, best_iteration=self.best_iteration, selection=self.selection)

    def save(self, path: Path) -> None:
        if self.booster is None:
            raise RuntimeError("model is not fitted")
        write_meta(path, family=self.family, feature_names=self.feature_names, params=self._params,
                   best_iteration=self.best_iteration, selection=self.selection)  # fmt: skip
        self.booster.save_model(str(path / "model.ubj"))

    @classmethod
    def load(cls, path: Path) -> Self:
        meta = read_meta(path)
        obj = cls(meta["feature_names"], **meta["params"])
        obj.booster = xgb.Booster()
        obj.booster.load_model(str(path / "model.ubj"))
        obj.best_iteration = meta["best_iteration"]
        obj.selection = meta.get("selection") or {}
        return obj


def _has_val(y_val: np.ndarray | None) -> bool:
    """A validation window that can choose: labelled rows, some of them fraud."""
    return y_val is not None and len(y_val) > 0 and float(np.asarray(y_val).sum()) > 0


class _PatientStop(xgb.callback.TrainingCallback):
    """Stops when validation logloss has not improved for ``patience`` rounds, counted only
    from ``min_rounds`` on (logloss moves smoothly where AUCPR on a few frauds jumps)."""

    def __init__(self, min_rounds: int, patience: int) -> None:
        self.min_rounds, self.patience = min_rounds, patience
        self.best, self.best_at = float("inf"), 0

    def after_iteration(self, model: Any, epoch: int, evals_log: dict[str, Any]) -> bool:
        loss = float(evals_log["val"]["logloss"][-1])
        if loss < self.best:
            self.best, self.best_at = loss, epoch
        return (
            epoch + 1 >= self.min_rounds and epoch - max(self.best_at, self.min_rounds - 1) >= self.patience
        )
