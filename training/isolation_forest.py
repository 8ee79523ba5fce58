"""Isolation Forest: unsupervised; the score is the anomaly score ``-score_samples`` (≈0.3–0.8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Self

import joblib
import numpy as np
from sklearn.ensemble import IsolationForest
from sklearn.ensemble._iforest import _average_path_length

from training.base import as_matrix, read_meta, write_meta
from training.data import Split
from training.evaluate import evaluate


def isolation_credit(forest: IsolationForest, row: np.ndarray) -> np.ndarray:
    """Per-feature isolation credit of one row for a fitted sklearn ``IsolationForest``.

    Every split on the row's path credits its feature with ``log(n_parent / n_child)``: how much
    of the node's training sample that split cut away from the row. A feature on which the row
    is extreme sends it to a near-empty child at once and collects most of the credit. Averaged
    over trees.
    """
    x = np.asarray(row, dtype=np.float32).reshape(1, -1)
    credit = np.zeros(x.shape[1], dtype=np.float64)
    for tree, features in zip(forest.estimators_, forest.estimators_features_, strict=True):
        t = tree.tree_
        path = tree.decision_path(x[:, features]).indices  # root first
        if len(path) < 2:
            continue
        parents, children = path[:-1], path[1:]
        gain = np.log(t.n_node_samples[parents] / np.maximum(t.n_node_samples[children], 1))
        np.add.at(credit, features[t.feature[parents]], gain)
    return credit / max(1, len(forest.estimators_))


# Rows x trees up to which the forest is walked with numpy (:class:`FlatForest`) rather than
# sklearn's per-tree loop, whose fixed cost (a joblib task per tree: ~6 ms for 200 trees) is
# most of a small batch's time; from ~600 rows at 200 trees sklearn's compiled walk is faster
# (docs/serving.md, "Isolation Forest on small batches").
FLAT_MAX_CELLS = 200 * 512


class FlatForest:
    """A fitted ``IsolationForest`` as flat node arrays, walked one level at a time for every
    (tree, row) pair at once. The same scores as ``-forest.score_samples``: the same float32
    comparisons against the same thresholds, the same leaf terms added tree by tree in order."""

    def __init__(self, forest: IsolationForest) -> None:
        trees = [est.tree_ for est in forest.estimators_]
        sizes = np.array([t.node_count for t in trees])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        subsample = forest._max_features != forest.n_features_in_
        left, right, feature, threshold, nan_left, value = [], [], [], [], [], []
        for t, off, feats, dpl, apl in zip(trees, offsets, forest.estimators_features_,
                                           forest._decision_path_lengths,
                                           forest._average_path_length_per_tree, strict=True):  # fmt: skip
            leaf = t.children_left == -1
            own = np.arange(t.node_count) + off
            left.append(np.where(leaf, own, t.children_left + off))  # a leaf loops on itself
            right.append(np.where(leaf, own, t.children_right + off))
            f = np.where(leaf, 0, t.feature)
            feature.append(np.asarray(feats)[f] if subsample else f)
            threshold.append(np.where(leaf, np.inf, t.threshold))
            nan_left.append(np.where(leaf, True, t.missing_go_to_left.astype(bool)))
            value.append(dpl + apl - 1.0)  # sklearn's term for a row ending in that node
        self.left, self.right = np.concatenate(left), np.concatenate(right)
        self.feature, self.threshold = np.concatenate(feature), np.concatenate(threshold)
        self.nan_left, self.value = np.concatenate(nan_left), np.concatenate(value)
        self.roots = offsets.astype(np.int64)
        self.depth = max(t.max_depth for t in trees)
        self.denominator = len(trees) * float(_average_path_length([forest._max_samples])[0])

    def score(self, X: np.ndarray) -> np.ndarray:
        """``-score_samples(X)`` for a float32 matrix."""
        n = len(X)
        flat = np.ascontiguousarray(X.T).ravel()  # feature-major: feature f of row j at f * n + j
        node = np.repeat(self.roots[:, None], n, axis=1)
        col = np.arange(n)
        for _ in range(self.depth):
            x = flat[self.feature[node] * n + col]
            go_left = np.where(np.isnan(x), self.nan_left[node], x <= self.threshold[node])
            node = np.where(go_left, self.left[node], self.right[node])
        depths = np.cumsum(self.value[node], axis=0)[-1]  # tree by tree, as sklearn adds them
        # a single training sample: depth and denominator are 0 and sklearn takes the ratio as 1
        ratio = depths / self.denominator if self.denominator else np.ones(n)
        return np.asarray(2 ** (-ratio), dtype=np.float64)


class IsolationForestModel:
    family: ClassVar[str] = "if"

    def __init__(
        self,
        feature_names: list[str],
        *,
        n_estimators: int = 200,
        max_samples: int | float = 256,
        max_features: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.feature_names = list(feature_names)
        self.threshold: float | None = None  # decision threshold on ``score``, when chosen
        self._flat: tuple[list[Any], FlatForest] | None = None  # for the fitted trees
        self._params = {"n_estimators": n_estimators, "max_samples": max_samples,
                        "max_features": max_features, "seed": seed}  # fmt: skip
        self.model = IsolationForest(
            n_estimators=n_estimators, max_samples=max_samples, max_features=max_features,
            random_state=seed, n_jobs=1,
        )  # fmt: skip

    def fit(
        self, X: np.ndarray, y: np.ndarray, X_val: np.ndarray | None = None, y_val: np.ndarray | None = None
    ) -> Self:
        # Fit on genuine rows only when labels exist: the forest should learn normal traffic.
        X = as_matrix(X)
        genuine = X[np.asarray(y) == 0] if y is not None and len(y) == len(X) else X
        self.model.fit(genuine if len(genuine) else X)
        return self

    def score(self, X: np.ndarray) -> np.ndarray:
        X = as_matrix(X)
        if len(X) * len(self.model.estimators_) <= FLAT_MAX_CELLS:
            if self._flat is None or self._flat[0] is not self.model.estimators_:  # fitted again
                self._flat = (self.model.estimators_, FlatForest(self.model))
            return self._flat[1].score(X)
        return np.asarray(-self.model.score_samples(X), dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def attribution(self, row: np.ndarray) -> np.ndarray:
        """Per-feature isolation credit of one row (``isolation_credit``)."""
        return isolation_credit(self.model, as_matrix(row).reshape(-1))

    # -- Ray Tune ------------------------------------------------------------------------------
    TUNE_MAX_T: ClassVar[int] = 1  # one report per trial: nothing to stop early

    @staticmethod
    def tune_space() -> dict[str, Any]:
        from ray import tune

        return {
            "n_estimators": tune.choice([100, 200, 400]),
            "max_samples": tune.choice([128, 256, 512]),
            "max_features": tune.uniform(0.5, 1.0),
        }

    @classmethod
    def tune_trial(cls, config: dict[str, Any], split: Split, max_t: int, **_: Any) -> None:
        from ray import tune

        m = cls(split.feature_names, **config).fit(split.X_train, split.y_train)
        tune.report({"val_aucpr": evaluate(m.score(split.X_val), split.y_val).get("aucpr", 0.0)})

    def save(self, path: Path) -> None:
        write_meta(path, family=self.family, feature_names=self.feature_names, params=self._params,
                   threshold=self.threshold)  # fmt: skip
        joblib.dump(self.model, path / "model.joblib")

    @classmethod
    def load(cls, path: Path) -> Self:
        meta = read_meta(path)
        obj = cls(meta["feature_names"], **meta["params"])
        obj.model = joblib.load(path / "model.joblib")
        obj.threshold = meta.get("threshold")
        return obj
