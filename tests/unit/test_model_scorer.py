"""A member deployment's scoring path, without Ray: single rows (HTTP requests) are merged by
``@serve.batch`` into one model call, a matrix of ``BATCHED_ROWS`` or more (a consumer's
micro-batch) is scored at once and never merged, and each caller gets its own rows' scores back.

``@serve.batch`` keeps one queue per decorated method, bound to the event loop of its first
call, so every test here runs on the module's one loop."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from features.catalogue import FEATURE_NAMES
from serve_deployments import models

N = len(FEATURE_NAMES)


class _Model:
    """Scores a row as its first column; records the size of every call it gets."""

    threshold = 0.5

    def __init__(self) -> None:
        self.feature_names = list(FEATURE_NAMES)
        self.calls: list[int] = []

    def score(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        return np.asarray(x[:, 0], dtype=np.float64)


class _ReplicaContext:
    """What ``@serve.batch`` asks of its replica on the first call: the deployment's limit."""

    class _deployment_config:  # the attribute serve.batch reads
        max_ongoing_requests = 64


@pytest.fixture(scope="module")
def loop() -> Any:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def scorer(monkeypatch: pytest.MonkeyPatch) -> Any:
    from ray.serve import batching

    monkeypatch.setattr(batching.serve, "get_replica_context", _ReplicaContext)
    model = _Model()
    monkeypatch.setattr(models, "load_family", lambda family, uri: model)
    replica = models.ModelScorer.func_or_class("if")  # type: ignore[attr-defined]  # under @serve.deployment
    replica.reconfigure({"uri": "/models/if", "version": "v1"})
    return replica


def test_single_rows_are_merged_and_a_batch_is_scored_at_once(scorer: Any, loop: Any) -> None:
    rng = np.random.default_rng(5)
    rows = rng.random((8, N)).astype(np.float32)
    big = rng.random((models.BATCHED_ROWS, N)).astype(np.float32)

    async def together() -> list[dict[str, Any]]:
        calls = [scorer.score(rows[i]) for i in range(len(rows))]
        return await asyncio.gather(*calls, scorer.score(big))

    *singles, whole = loop.run_until_complete(together())
    model = scorer.model
    # the big matrix is one call of exactly its rows; the single rows went through the window
    assert model.calls.count(models.BATCHED_ROWS) == 1
    assert sum(model.calls) == len(rows) + models.BATCHED_ROWS
    assert max(c for c in model.calls if c != models.BATCHED_ROWS) > 1, model.calls
    np.testing.assert_array_equal(whole["scores"], big[:, 0])
    for i, reply in enumerate(singles):
        np.testing.assert_array_equal(reply["scores"], rows[i : i + 1, 0])
        assert reply["version"] == "v1" and reply["threshold"] == 0.5
    assert whole["version"] == "v1"
    assert scorer.stats()["calls_per_batch"].count(1) >= 1  # the big matrix: a batch of one call


def test_a_matrix_just_below_the_threshold_still_waits_for_company(scorer: Any, loop: Any) -> None:
    small = np.ones((models.BATCHED_ROWS - 1, N), dtype=np.float32)

    async def two() -> list[dict[str, Any]]:
        return await asyncio.gather(scorer.score(small), scorer.score(small))

    a, b = loop.run_until_complete(two())
    assert scorer.model.calls == [2 * (models.BATCHED_ROWS - 1)]
    assert len(a["scores"]) == len(b["scores"]) == models.BATCHED_ROWS - 1


def test_a_wrong_width_is_refused_before_any_model_call(scorer: Any, loop: Any) -> None:
    with pytest.raises(ValueError, match="features per row"):
        loop.run_until_complete(scorer.score(np.ones((models.BATCHED_ROWS, N + 1), dtype=np.float32)))
    assert scorer.model.calls == []
