"""The Isolation Forest's numpy walk for small batches (``FlatForest``) gives sklearn's scores
exactly: the same comparisons, the same leaf terms, added in the same order."""

from __future__ import annotations

import numpy as np
import pytest

from training.isolation_forest import FLAT_MAX_CELLS, FlatForest, IsolationForestModel

NAMES = [f"f{i}" for i in range(12)]
NO_LABELS = np.empty(0)  # unsupervised: every row is fitted


def _data(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, len(NAMES))).astype(np.float32)


@pytest.mark.parametrize(("max_features", "max_samples"), [(1.0, 256), (0.6, 100), (1.0, 1)])
def test_the_flat_walk_scores_exactly_as_sklearn(max_features: float, max_samples: int) -> None:
    model = IsolationForestModel(NAMES, n_estimators=50, max_samples=max_samples, max_features=max_features)
    model.fit(_data(0, 2000), NO_LABELS)
    rows = _data(1, 400) * 3
    rows[:5, 3] = np.nan  # a missing value follows each node's missing_go_to_left
    rows[5:10] = _data(0, 5)  # training rows
    rows[10, :] = np.inf
    expected = -model.model.score_samples(rows)
    np.testing.assert_array_equal(FlatForest(model.model).score(rows), expected)


def test_score_takes_the_flat_walk_for_small_batches_and_sklearn_for_large_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = IsolationForestModel(NAMES, n_estimators=200).fit(_data(0, 3000), NO_LABELS)
    small, large = _data(2, 1), _data(3, FLAT_MAX_CELLS // 200 + 1)
    walked: list[int] = []
    original = FlatForest.score

    def counted(self: FlatForest, X: np.ndarray) -> np.ndarray:
        walked.append(len(X))
        return original(self, X)

    monkeypatch.setattr(FlatForest, "score", counted)
    np.testing.assert_array_equal(model.score(small), -model.model.score_samples(small))
    np.testing.assert_array_equal(model.score(large), -model.model.score_samples(large))
    assert walked == [1]
    model.fit(_data(4, 3000), NO_LABELS)  # refitted (a new forest): the flat copy follows it
    np.testing.assert_array_equal(model.score(small), -model.model.score_samples(small))
