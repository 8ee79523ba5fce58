"""One Serve deployment class for the three model families, bound once per family under its
own name (``IsolationForest``, ``XGBoost``, ``Autoencoder``); the ``Ensemble`` in app.py calls
them through DeploymentHandles.

Sizing for a 2-core box shared with the consumer actors: 0.2 CPU per replica, 1-2 replicas.
Concurrent calls are merged by ``@serve.batch`` into one model call (sklearn, XGBoost and torch
all pay a fixed cost per call that a batch amortises); a matrix that is a batch already (a
consumer's micro-batch, ``BATCHED_ROWS`` or more) skips the merge window.
``max_ongoing_requests=64`` because the consumer actors pipeline one call per micro-batch:
Serve's default of 5 makes the router back off while replicas are merely batching.
"""

from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from core.errors import ModelNotReady
from core.families import DEPLOYMENT_NAMES, METRIC_NAMES
from features.catalogue import FEATURE_NAMES
from monitoring.metrics import shared_metrics
from training import families

MAX_BATCH_SIZE = 64  # calls per batch; a consumer call under backlog carries up to 2,000 rows
BATCH_WAIT_S = 0.002  # at 300 HTTP rps a 2 ms window merges ~1-3 calls and costs <1 ms of p50
# A matrix of this many rows is a batch already (a consumer's micro-batch): scored at once, not
# held in @serve.batch's window for calls that would add little (docs/serving.md).
BATCHED_ROWS = 16
# Each model deployment's autoscaling; serve_deployments/deploy.py and serve_deployments/config.yaml
# list it in the configs they deploy (see autoscaling_configs in serve_deployments/app.py).
MEMBER_AUTOSCALING: dict[str, float] = {
    "min_replicas": 1,
    "max_replicas": 2,
    "target_ongoing_requests": 8,
    "upscale_delay_s": 10,
    "downscale_delay_s": 60,
}


def load_family(family: str, uri: str) -> Any:
    return families.load(family, Path(uri))


def attribution(family: str, model: Any, row: np.ndarray) -> np.ndarray:
    """Per-feature attribution of one row, as the family defines it (``attribution``)."""
    return np.asarray(model.attribution(np.asarray(row, dtype=np.float32)), dtype=np.float64)


@serve.deployment(
    ray_actor_options={"num_cpus": 0.2},
    max_ongoing_requests=64,
    autoscaling_config=MEMBER_AUTOSCALING,
    logging_config={"enable_access_log": False},  # one line per micro-batch is noise
)
class ModelScorer:
    """Scores feature matrices with one model family; concurrent calls share one model call.

    The version arrives as ``user_config`` (``{"uri", "version"}``): a redeploy with another
    version calls ``reconfigure`` on the live replicas, which swaps one attribute between two
    batches, so no request is dropped.
    """

    def __init__(self, family: str) -> None:
        if family not in DEPLOYMENT_NAMES:
            raise ValueError(f"unknown model family {family!r}")
        self.family = family
        self.model: Any = None
        self.version = ""
        self.threshold: float | None = None
        self.calls_per_batch: list[int] = []  # recent batch sizes, for tests and `stats`

    def reconfigure(self, config: dict[str, Any]) -> None:
        model = load_family(self.family, config["uri"])
        if list(model.feature_names) != list(FEATURE_NAMES):
            raise ModelNotReady(f"{self.family} {config['version']} was trained on other features")
        # One tuple assignment: a batch in flight keeps the model it already read.
        self.model, self.version = model, str(config["version"])
        self.threshold = getattr(model, "threshold", None)
        shared_metrics().set_model_version(METRIC_NAMES[self.family], self.version)

    @serve.batch(max_batch_size=MAX_BATCH_SIZE, batch_wait_timeout_s=BATCH_WAIT_S)
    async def _score(self, matrices: list[np.ndarray]) -> list[tuple[np.ndarray, str]]:
        sizes = [len(m) for m in matrices]
        scores, version = self._score_now(np.concatenate(matrices), calls=len(matrices))
        return [(part, version) for part in np.split(scores, np.cumsum(sizes)[:-1])]

    def _score_now(self, matrix: np.ndarray, calls: int = 1) -> tuple[np.ndarray, str]:
        model, version = self.model, self.version  # one snapshot: a swap lands between batches
        scores = model.score(matrix)
        self.calls_per_batch = [*self.calls_per_batch[-255:], calls]
        shared_metrics().observe_scores(METRIC_NAMES[self.family], scores)
        return scores, version

    async def score(self, matrix: np.ndarray) -> dict[str, Any]:
        """``{"scores": float64 [n], "version", "threshold"}`` for a matrix or a single row."""
        matrix = np.atleast_2d(np.asarray(matrix, dtype=np.float32))
        if matrix.shape[1] != len(FEATURE_NAMES):
            raise ValueError(f"expected {len(FEATURE_NAMES)} features per row, got {matrix.shape[1]}")
        if len(matrix) == 0:
            return {"scores": np.empty(0), "version": self.version, "threshold": self.threshold}
        if len(matrix) >= BATCHED_ROWS:
            scores, version = self._score_now(matrix)
        else:
            scores, version = await self._score(matrix)
        return {"scores": scores, "version": version, "threshold": self.threshold}

    async def explain(self, row: np.ndarray) -> dict[str, Any]:
        """``{"attribution": float64 [n_features], "version"}`` for one row."""
        model, version = self.model, self.version
        return {"attribution": attribution(self.family, model, row), "version": version}

    def stats(self) -> dict[str, Any]:
        return {"family": self.family, "version": self.version, "calls_per_batch": list(self.calls_per_batch)}
