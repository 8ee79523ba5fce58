"""The Serve application ``fraud``: an Isolation Forest scorer (batched) behind a FastAPI
ingress. ``serve run serve_deployments.app:build_app`` or ``fraudray serve`` deploys it.

Resources are fractional so the whole app fits a 2-core box next to the consumer actors.
``max_ongoing_requests`` is raised above Serve's default of 5 because the consumer actors
pipeline one call per micro-batch and the router backs off when replicas look full.
"""

# No `from __future__ import annotations` here: FastAPI must resolve the route signatures
# of the @serve.ingress class at definition time.
import hashlib
import hmac
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster.errors import FraudrayError, ModelNotReady, Unauthorized, UnknownUser
from cluster.settings import get_settings
from features.online import FEATURE_NAMES, OnlineStore

SCORER_NAME = "IsolationForestScorer"


@serve.deployment(
    name=SCORER_NAME,
    ray_actor_options={"num_cpus": 0.25},
    max_ongoing_requests=64,
    autoscaling_config={"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 8},
    # One access-log line per micro-batch call is noise on the hot path.
    logging_config={"enable_access_log": False},
)
class IsolationForestScorer:
    """Scores feature matrices; concurrent calls are merged into one ``score_samples``."""

    def __init__(self, model_uri: str, version: str) -> None:
        from training.isolation_forest import IsolationForestModel

        self.model = IsolationForestModel.load(Path(model_uri))
        if self.model.threshold is None:
            raise ModelNotReady(f"model {version} has no decision threshold")
        self.threshold = float(self.model.threshold)
        self.version = version

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _score(self, matrices: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(m) for m in matrices]
        scores = self.model.score(np.concatenate(matrices))
        return list(np.split(scores, np.cumsum(sizes)[:-1]))

    async def score(self, matrix: np.ndarray) -> dict[str, Any]:
        """``{"scores": float array, "is_fraud": bool array, "threshold", "model_version"}``."""
        matrix = np.atleast_2d(np.asarray(matrix, dtype=np.float32))
        scores = await self._score(matrix)
        return {
            "scores": scores,
            "is_fraud": scores > self.threshold,
            "threshold": self.threshold,
            "model_version": self.version,
        }


class Prediction(BaseModel):
    user_id: str
    anomaly_score: float
    is_fraud: bool
    threshold: float
    model_version: str
    features: dict[str, float]


class Health(BaseModel):
    status: str
    model_version: str


class ErrorBody(BaseModel):
    error: str
    detail: str


api = FastAPI(
    title="fraudray",
    description="Real-time fraud scoring on Ray Serve. Send the API key in `X-API-Key`.",
    version="0.1.0",
)


@api.exception_handler(FraudrayError)
async def _fraudray_error(_request: Request, exc: FraudrayError) -> JSONResponse:
    return JSONResponse(
        status_code=exc.http_status, content={"error": type(exc).__name__, "detail": str(exc)}
    )


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(api)
class FraudApi:
    def __init__(self, scorer: DeploymentHandle, redis_url: str, api_keys: list[str]) -> None:
        self.scorer = scorer
        self.store = OnlineStore(redis_url)
        # Only digests are kept; comparison is constant-time.
        self._key_digests = [_digest(k) for k in api_keys]

    def _check_key(self, key: str | None) -> None:
        if not self._key_digests:
            return
        offered = _digest(key or "")
        if not any(hmac.compare_digest(offered, d) for d in self._key_digests):
            raise Unauthorized("missing or wrong X-API-Key header")

    @api.get("/health", response_model=Health)
    async def health(self) -> Health:
        result = await self.scorer.score.remote(np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32))
        return Health(status="ok", model_version=result["model_version"])

    @api.get(
        "/predict",
        response_model=Prediction,
        responses={401: {"model": ErrorBody}, 404: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def predict(
        self,
        user_id: Annotated[str, Query(min_length=1, max_length=128, description="the user to score")],
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> Prediction:
        """Score the user's current features (their latest transaction's vector)."""
        self._check_key(x_api_key)
        vector = self.store.read_latest(user_id)
        if vector is None:
            raise UnknownUser(f"user {user_id!r} has no transactions in the online store")
        result = await self.scorer.score.remote(vector[None, :])
        return Prediction(
            user_id=user_id,
            anomaly_score=float(result["scores"][0]),
            is_fraud=bool(result["is_fraud"][0]),
            threshold=result["threshold"],
            model_version=result["model_version"],
            features=dict(zip(FEATURE_NAMES, map(float, vector), strict=True)),
        )


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Application builder for ``serve run serve_deployments.app:build_app``.

    ``args`` may carry ``model_uri``/``model_version``/``redis_url``/``api_keys``; what is
    missing comes from the settings and the registry's production model.
    """
    from training.registry import Registry

    args = dict(args or {})
    settings = get_settings()
    if "model_uri" not in args:
        mv = Registry(settings).production("if")
        args.setdefault("model_uri", mv.uri)
        args.setdefault("model_version", mv.version)
    keys = args.get("api_keys", settings.api.key_list())
    if isinstance(keys, str):
        keys = [k for k in keys.split(",") if k]
    redis_url = args.get("redis_url", settings.redis.url.get_secret_value())
    scorer = IsolationForestScorer.bind(args["model_uri"], args["model_version"])  # type: ignore[attr-defined]
    return FraudApi.bind(scorer, redis_url, list(keys))  # type: ignore[attr-defined]
