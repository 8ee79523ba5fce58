"""The Serve application ``fraud``: an Isolation Forest scorer (batched) behind a FastAPI
ingress. ``serve run serve_deployments.app:build_app`` or ``fraudray serve`` deploys it.

Resources are fractional so the whole app fits a 2-core box next to the consumer actors.
``max_ongoing_requests`` is raised above Serve's default of 5 because the consumer actors
pipeline one call per micro-batch and the router backs off when replicas look full.
"""

# No `from __future__ import annotations` here: FastAPI must resolve the route signatures
# of the @serve.ingress class at definition time.
import asyncio
import hashlib
import hmac
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr
from ray import serve
from ray.serve.handle import DeploymentHandle

from cluster.errors import FraudrayError, ModelNotReady, PayloadTooLarge, Unauthorized, UnknownUser
from cluster.settings import PostgresSettings, Settings, get_settings
from features.online import FEATURE_NAMES, OnlineStore
from monitoring.metrics import HttpMetricsMiddleware, shared_metrics

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
    """Scores feature matrices; concurrent calls are merged into one ``score_samples``.

    The model version arrives as ``user_config`` (``{"model_uri", "model_version"}``), so a
    redeploy with another version calls ``reconfigure`` on the live replicas: the swap is
    one attribute assignment between two batches, and no request is dropped.
    """

    def __init__(self) -> None:
        self.model: Any = None
        self.threshold = 0.0
        self.version = ""

    def reconfigure(self, config: dict[str, Any]) -> None:
        from training.isolation_forest import IsolationForestModel

        model = IsolationForestModel.load(Path(config["model_uri"]))
        if model.threshold is None:
            raise ModelNotReady(f"model {config['model_version']} has no decision threshold")
        if model.feature_names != list(FEATURE_NAMES):
            raise ModelNotReady(f"model {config['model_version']} was trained on other features")
        # Swap all three together: a batch in flight keeps the objects it already read.
        self.model, self.threshold, self.version = model, float(model.threshold), config["model_version"]
        shared_metrics().set_model_version("isolation_forest", self.version)

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005)
    async def _score(self, matrices: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(m) for m in matrices]
        scores = self.model.score(np.concatenate(matrices))
        shared_metrics().observe_scores("isolation_forest", scores)
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


class TransactionIn(BaseModel):
    """A transaction as on the Kafka topic (same fields as ingest/schemas/transaction.avsc)."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(min_length=1, max_length=128)
    user_id: str = Field(min_length=1, max_length=128)
    merchant_id: str = Field(min_length=1, max_length=128)
    amount: float = Field(gt=0, le=1e9, allow_inf_nan=False)
    currency: str = Field(pattern=r"^[A-Z]{3}$", description="ISO-4217")
    event_time: AwareDatetime
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO-3166 alpha-2")
    device_id: str | None = Field(None, max_length=128)
    channel: Literal["card_present", "online"] | None = None
    merchant_category: str | None = Field(None, max_length=64)
    lat: float | None = Field(None, ge=-90, le=90, allow_inf_nan=False)
    lon: float | None = Field(None, ge=-180, le=180, allow_inf_nan=False)
    ip: str | None = Field(None, max_length=64)


class ScoreOut(BaseModel):
    transaction_id: str
    anomaly_score: float
    is_fraud: bool
    threshold: float
    model_version: str


class ModelOut(BaseModel):
    name: str
    version: str
    stage: str
    metrics: dict[str, Any]


MAX_SCORE_BATCH = 1000


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

# http_requests_total{handler,status} (the original pipeline's name), per matched route.
api.add_middleware(HttpMetricsMiddleware)


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
    def __init__(
        self, scorer: DeploymentHandle, redis_url: str, postgres_dsn: str, api_keys: list[str]
    ) -> None:
        from training.registry import Registry

        self.scorer = scorer
        self.store = OnlineStore(redis_url)
        self.registry = Registry(Settings(postgres=PostgresSettings(dsn=SecretStr(postgres_dsn))))
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

    @api.post(
        "/score",
        response_model=list[ScoreOut],
        responses={401: {"model": ErrorBody}, 413: {"model": ErrorBody}, 503: {"model": ErrorBody}},
    )
    async def score(
        self,
        body: TransactionIn | list[TransactionIn],
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> list[ScoreOut]:
        """Score one transaction or a list (at most 1,000) without changing any stored state."""
        self._check_key(x_api_key)
        txs = body if isinstance(body, list) else [body]
        if not txs:
            return []
        if len(txs) > MAX_SCORE_BATCH:
            raise PayloadTooLarge(f"at most {MAX_SCORE_BATCH} transactions per request, got {len(txs)}")
        matrix = self.store.compute([t.model_dump() for t in txs])
        result = await self.scorer.score.remote(matrix)
        return [
            ScoreOut(
                transaction_id=t.transaction_id,
                anomaly_score=float(sc),
                is_fraud=bool(f),
                threshold=result["threshold"],
                model_version=result["model_version"],
            )
            for t, sc, f in zip(txs, result["scores"], result["is_fraud"], strict=True)
        ]

    @api.get("/models", response_model=list[ModelOut], responses={401: {"model": ErrorBody}})
    async def models(self, x_api_key: Annotated[str | None, Header()] = None) -> list[ModelOut]:
        """Production model versions in the registry (curves left out)."""
        self._check_key(x_api_key)
        rows = await asyncio.to_thread(self.registry.list)
        return [
            ModelOut(
                name=m.name,
                version=m.version,
                stage=m.stage,
                metrics={k: v for k, v in m.metrics.items() if not k.endswith("_curve")},
            )
            for m in rows
            if m.stage == "production"
        ]

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

    ``args`` may carry ``model_uri``/``model_version``/``redis_url``/``postgres_dsn``/``api_keys``; what is
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
    scorer = IsolationForestScorer.options(  # type: ignore[attr-defined]
        user_config={"model_uri": args["model_uri"], "model_version": args["model_version"]}
    ).bind()
    dsn = args.get("postgres_dsn", settings.postgres.dsn.get_secret_value())
    return FraudApi.bind(scorer, redis_url, dsn, list(keys))  # type: ignore[attr-defined]
