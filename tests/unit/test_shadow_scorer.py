"""The Ensemble deployment's live shadow challenger (#23), without Ray: member handles and model
artefacts are fakes. A shadow scores every matrix beside the champion (each member on its own
feature columns), leaves the champion's reply as it was, and neither a shadow that cannot load
nor one that fails to score ever fails a decision."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from features.catalogue import FEATURE_NAMES
from serve_deployments import app as app_module

NAMES = list(FEATURE_NAMES)


class _Handle:
    """A member deployment's handle: ``score.remote(matrix)`` answers column ``k`` as the score."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.score = self

    def remote(self, matrix: np.ndarray) -> Any:
        async def reply() -> dict[str, Any]:
            return {"scores": matrix[:, self.k].astype(np.float64), "version": f"m{self.k}", "threshold": 0.5}

        return reply()


class _Model:
    def __init__(self, family: str, fail: bool = False) -> None:
        # each member of the challenger learns from other columns than the served order
        self.feature_names = NAMES[::-1] if family == "xgb" else NAMES
        self.fail = fail

    def score(self, x: np.ndarray) -> np.ndarray:
        if self.fail:
            raise RuntimeError("broken challenger")
        assert x.shape[1] == len(self.feature_names)
        return np.asarray(x[:, 0], dtype=np.float64)  # the first of *its* columns


class _Stacked:
    def predict(self, scores: dict[str, np.ndarray]) -> np.ndarray:
        return (scores["if"] + scores["xgb"] + scores["ae"]) / 3


@pytest.fixture
def ensemble(monkeypatch: pytest.MonkeyPatch) -> Any:
    from training import ensemble as stacked

    broken: set[str] = set()
    monkeypatch.setattr(app_module.member_models, "load_family", lambda fam, uri: _Model(fam, uri in broken))
    monkeypatch.setattr(stacked.Ensemble, "load", classmethod(lambda cls, path: _Stacked()))
    cls = app_module.Ensemble.func_or_class  # type: ignore[attr-defined]  # the class under @serve.deployment
    scorer = cls({"if": _Handle(0), "xgb": _Handle(1), "ae": _Handle(2)})
    scorer.reconfigure({})  # no stacked champion: the Isolation Forest decides
    scorer.broken = broken
    return scorer


SHADOW = {f: {"uri": f"/models/{f}", "version": f"c-{f}"} for f in ("if", "xgb", "ae", "ensemble")}


def test_a_shadow_scores_every_row_and_the_champion_is_unchanged(ensemble: Any) -> None:
    matrix = np.random.default_rng(1).random((50, len(NAMES))).astype(np.float32)
    plain = asyncio.run(ensemble.score(matrix))
    assert "shadow_scores" not in plain
    ensemble.reconfigure({"shadow": SHADOW})
    versions = {f: v["version"] for f, v in SHADOW.items()}
    assert ensemble.shadow_status() == {"version": "c-ensemble", "versions": versions, "error": ""}
    scored = asyncio.run(ensemble.score(matrix))
    np.testing.assert_array_equal(scored["scores"], plain["scores"])
    assert (
        scored["model_version"] == plain["model_version"]
        and scored["is_fraud"].tolist() == plain["is_fraud"].tolist()
    )
    expected = (matrix[:, 0] + matrix[:, -1] + matrix[:, 0]) / 3  # xgb reads its own (reversed) columns
    np.testing.assert_allclose(scored["shadow_scores"], expected, rtol=1e-6)
    assert scored["shadow_version"] == "c-ensemble"
    assert "shadow_scores" not in asyncio.run(ensemble.score(matrix, False))  # the HTTP API's calls
    ensemble.reconfigure({})  # a hot swap rewrites the config without the shadow: cleared
    assert "shadow_scores" not in asyncio.run(ensemble.score(matrix))


def test_a_broken_shadow_never_fails_a_decision(ensemble: Any) -> None:
    matrix = np.ones((4, len(NAMES)), dtype=np.float32)
    ensemble.broken.add("/models/ae")  # loads, then raises when it scores
    ensemble.reconfigure({"shadow": SHADOW})
    scored = asyncio.run(ensemble.score(matrix))
    assert "shadow_scores" not in scored and len(scored["scores"]) == 4
    ensemble.reconfigure({"shadow": {f: v for f, v in SHADOW.items() if f != "xgb"}})  # cannot load
    assert ensemble.shadow_status()["version"] == ""
    assert "xgb" in ensemble.shadow_status()["error"]
    assert "shadow_scores" not in asyncio.run(ensemble.score(matrix))
