"""The Serve application ``fraud``: three model deployments (IsolationForest, XGBoost,
Autoencoder; serve_deployments/models.py), the ``Ensemble`` that fans a feature matrix out to
them and stacks their scores, and the FastAPI ingress ``FraudApi`` (/predict, /score, /explain,
/health, /models). ``serve run serve_deployments/config.yaml`` or ``fraudray serve`` deploys it.

Resources are fractional so the whole app fits a 2-core box next to the consumer actors;
docs/serving.md gives the reasoning for every batching and autoscaling number.
"""

# No `from __future__ import annotations` here: FastAPI must resolve the route signatures
# of the @serve.ingress class at definition time.
import asyncio
import contextlib
import hashlib
import hmac
import logging
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator
from ray import serve
from ray.serve.handle import DeploymentHandle

from core import db
from core.contracts import ScoreResult
from core.errors import (
    FraudrayError,
    ModelNotReady,
    PayloadTooLarge,
    StoreUnavailable,
    Unauthorized,
    UnknownUser,
)
from core.families import DEPLOYMENT_NAMES, MEMBER_KEYS, SCORER_DEPLOYMENT
from core.settings import PostgresSettings, Settings, get_settings
from features import validation as rules
from features.online import FEATURE_NAMES, OnlineStore
from monitoring.metrics import HttpMetricsMiddleware, shared_metrics
from serve_deployments import explain as xp
from serve_deployments import models as member_models
from serve_deployments.predict_cache import PredictCache

log = logging.getLogger(__name__)

FAMILIES = MEMBER_KEYS
MAX_SCORE_BATCH = 1000
# Concurrent HTTP requests share one Ensemble call: on this box every handle hop costs ~8 ms of
# Ray round trip, so per-request calls cap the API near 10 rps; merged, a batch pays it once.
API_MAX_BATCH = 256  # rows per merged call (a /score request of up to 1,000 rows goes alone)
API_BATCH_WAIT_S = 0.003
SCORER_AUTOSCALING: dict[str, float] = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 16}
# GET /predict returns the stream's stored decision of the user's latest transaction when it was
# made by the models this replica last saw the Ensemble answer with, at most this long ago (so
# after a hot swap, old decisions stop being served within it); otherwise it scores again.
LIVE_VERSIONS_MAX_AGE_S = 5.0
INGRESS_DEPLOYMENT = "FraudApi"  # its user_config: keys, auth, LLM options (ingress_user_config)


def autoscaling_configs() -> dict[str, dict[str, float]]:
    """The code's ``autoscaling_config`` of each autoscaled deployment, by deployment name.

    Every config fraudray deploys lists them (``serve_deployments.deploy``, ``config.yaml``): Ray 2.60
    folds the number of deployments with an ``autoscaling_config`` entry into the app's code
    version, so an app deployed without them would restart every replica the first time
    ``serving.configure`` gives one; with them listed, a new autoscaling config applies in place."""
    members = {name: dict(member_models.MEMBER_AUTOSCALING) for name in DEPLOYMENT_NAMES.values()}
    return {**members, SCORER_DEPLOYMENT: dict(SCORER_AUTOSCALING)}


class UnknownTransaction(FraudrayError):
    http_status = 404


def decide(
    ensemble: Any, model_scores: dict[str, np.ndarray], if_threshold: float | None
) -> tuple[np.ndarray, float, bool]:
    """``(decision scores, threshold, stacked?)``: the stacked ensemble when it and all its
    members are served, else the Isolation Forest's score and threshold."""
    if ensemble is not None and set(FAMILIES) <= model_scores.keys():
        if len(model_scores["if"]) == 0:
            return np.empty(0), float(ensemble.threshold), True
        return np.asarray(ensemble.predict(model_scores), dtype=np.float64), float(ensemble.threshold), True
    if if_threshold is None:
        raise ModelNotReady("no ensemble and the Isolation Forest has no decision threshold")
    return np.asarray(model_scores["if"], dtype=np.float64), float(if_threshold), False


class ShadowChallenger:
    """A challenger scored beside the champion, never deciding (#23): its member models and its
    stacked ensemble, loaded in the Ensemble replica from ``{family: {"uri", "version"}}`` (every
    member family and ``ensemble``). Each member scores its own feature columns of the served
    matrix (``FEATURE_NAMES`` order), as the learning loop evaluated it."""

    def __init__(self, config: dict[str, dict[str, str]]) -> None:
        from training.ensemble import Ensemble as StackedEnsemble

        missing = {*FAMILIES, "ensemble"} - config.keys()
        if missing:
            raise ModelNotReady(f"shadow challenger without {sorted(missing)}")
        names = list(FEATURE_NAMES)
        self.members: dict[str, tuple[Any, list[int] | None]] = {}
        for fam in FAMILIES:
            model = member_models.load_family(fam, config[fam]["uri"])
            wanted = list(model.feature_names)
            if not set(wanted) <= set(names):
                raise ModelNotReady(f"shadow {fam} {config[fam]['version']} was trained on other features")
            columns = None if wanted == names else [names.index(n) for n in wanted]
            self.members[fam] = (model, columns)
        self.stacked = StackedEnsemble.load(Path(config["ensemble"]["uri"]))
        self.version = str(config["ensemble"]["version"])
        self.versions = {f: str(v["version"]) for f, v in config.items()}

    def score(self, matrix: np.ndarray) -> np.ndarray:
        scores = {
            fam: np.asarray(model.score(matrix if cols is None else matrix[:, cols]), dtype=np.float64)
            for fam, (model, cols) in self.members.items()
        }
        return np.asarray(self.stacked.predict(scores), dtype=np.float64)


@serve.deployment(
    name=SCORER_DEPLOYMENT,
    ray_actor_options={"num_cpus": 0.1},
    # The consumer pipelines one call per micro-batch; Serve's default of 5 would make the
    # router back off while the members are merely batching.
    max_ongoing_requests=64,
    autoscaling_config=SCORER_AUTOSCALING,
    logging_config={"enable_access_log": False},
)
class Ensemble:
    """Scores a matrix with every member (in parallel, through their handles) and stacks the
    scores with the registry's ensemble (logistic stacking, training/ensemble.py).

    ``user_config`` is ``{"uri", "version"}`` of the ensemble model, or ``{}`` when the registry
    has none yet: then the Isolation Forest's score and threshold decide. An optional
    ``"shadow": {family: {"uri", "version"}}`` (every member and ``ensemble``) is a challenger
    the learning loop installed (``serve_deployments.deploy.install_shadow``): it scores every
    matrix too, in a thread while the members answer, and the reply carries its scores as
    ``shadow_scores`` / ``shadow_version``; it never decides, and a shadow that cannot load or
    score is logged and left out of the reply, never failing a decision.
    """

    def __init__(self, members: dict[str, DeploymentHandle]) -> None:
        if "if" not in members:
            raise ModelNotReady("the Isolation Forest member is required")
        self.members = dict(members)
        self.ensemble: Any = None
        self.version = ""
        self.shadow: ShadowChallenger | None = None
        self.shadow_error = ""
        self._shadow_failed = ""  # the version whose scoring failure was logged already

    def reconfigure(self, config: dict[str, Any]) -> None:
        from training.ensemble import Ensemble as StackedEnsemble

        if config.get("uri"):
            ens, version = StackedEnsemble.load(Path(config["uri"])), str(config["version"])
        else:
            ens, version = None, ""
        shadow, error = None, ""
        wanted = config.get("shadow") or None
        if (
            wanted
            and self.shadow is not None
            and self.shadow.versions == {f: str(v["version"]) for f, v in wanted.items()}
        ):
            shadow = self.shadow  # unchanged: no reload
        elif wanted:
            try:
                shadow = ShadowChallenger(wanted)
            except Exception as exc:  # noqa: BLE001 - the champion must load whatever the shadow does
                error = f"{type(exc).__name__}: {exc}"[:300]
                log.error("shadow challenger not installed: %s", error)
        self.ensemble, self.version, self.shadow, self.shadow_error = ens, version, shadow, error
        if version:
            shared_metrics().set_model_version("ensemble", version)

    def shadow_status(self) -> dict[str, Any]:
        """This replica's shadow: ``{"version", "versions", "error"}`` (empty version: none)."""
        shadow = self.shadow
        return {
            "version": shadow.version if shadow else "",
            "versions": dict(shadow.versions) if shadow else {},
            "error": self.shadow_error,
        }

    async def _members(self, method: str, arg: np.ndarray) -> dict[str, dict[str, Any]]:
        calls = [getattr(h, method).remote(arg) for h in self.members.values()]
        return dict(zip(self.members, await asyncio.gather(*calls), strict=True))

    async def score(self, matrix: np.ndarray, shadow: bool = True) -> ScoreResult:
        """The decision of every row (``core.contracts.ScoreResult``): the ensemble's probability,
        or the IF score without an ensemble; ``model_scores`` holds each member's raw score.
        With a shadow challenger installed (and ``shadow``: the HTTP API passes False), its
        scores too, computed in a thread while the members answer."""
        matrix = np.atleast_2d(np.asarray(matrix, dtype=np.float32))
        ensemble, version = self.ensemble, self.version  # one snapshot per call
        challenger = self.shadow if shadow and len(matrix) else None
        shadowed = asyncio.ensure_future(asyncio.to_thread(challenger.score, matrix)) if challenger else None
        if shadowed is not None:  # a member call that raises leaves it unawaited: no asyncio warning
            shadowed.add_done_callback(lambda f: f.cancelled() or f.exception())
        results = await self._members("score", matrix)
        model_scores = {f: np.asarray(r["scores"], dtype=np.float64) for f, r in results.items()}
        versions = {f: str(r["version"]) for f, r in results.items()}
        scores, threshold, stacked = decide(ensemble, model_scores, results["if"]["threshold"])
        if stacked:
            versions["ensemble"] = version
        reply = ScoreResult(
            scores=scores,
            is_fraud=scores > threshold,
            threshold=threshold,
            model_version=version if stacked else versions["if"],
            model_scores=model_scores,
            model_versions=versions,
        )
        if shadowed is not None and challenger is not None:
            try:
                reply["shadow_scores"] = await shadowed
                reply["shadow_version"] = challenger.version
            except Exception as exc:  # noqa: BLE001 - the challenger never fails a decision
                if self._shadow_failed != challenger.version:
                    self._shadow_failed = challenger.version
                    log.error("shadow challenger %s failed to score: %r", challenger.version, exc)
        return reply

    async def explain(self, row: np.ndarray) -> dict[str, Any]:
        """The score of one row plus each member's per-feature attribution."""
        row = np.asarray(row, dtype=np.float32).reshape(1, -1)
        scored, explained = await asyncio.gather(self.score(row, False), self._members("explain", row[0]))
        return scored | {"attributions": {f: r["attribution"] for f, r in explained.items()}}


# -- HTTP boundary ---------------------------------------------------------------------------
class Prediction(BaseModel):
    user_id: str
    anomaly_score: float = Field(description="the decision score (ensemble probability when served)")
    is_fraud: bool
    threshold: float
    model_version: str
    model_scores: dict[str, float]
    model_versions: dict[str, str]
    features: dict[str, float]
    source: Literal["stream", "scored"] = Field(
        description="`stream`: the decision the stream made for the user's latest transaction, "
        "by the models now served (same features, same models); `scored`: scored for this request"
    )


# Printable text only: the online store reserves control characters as separators.
TEXT = r"^[^\x00-\x1f\x7f]*$"


class TransactionIn(BaseModel):
    """A transaction as on the Kafka topic (same fields as ingest/schemas/transaction.avsc),
    checked by the stream's own rules (features/validation.py): what the stream would
    dead-letter, ``/score`` refuses with 422 and the same reason."""

    model_config = ConfigDict(extra="forbid")

    transaction_id: str = Field(description=f"1..{rules.MAX_ID_LEN} characters")
    user_id: str = Field(description=f"1..{rules.MAX_ID_LEN} characters")
    merchant_id: str = Field(description=f"1..{rules.MAX_ID_LEN} characters")
    amount: float = Field(description=f"0, or {rules.MIN_AMOUNT:g} to {rules.MAX_AMOUNT:g}")
    currency: str = Field(description="ISO-4217")
    event_time: AwareDatetime = Field(description="at most a day ahead of the server's clock")
    country: str = Field(description="ISO-3166 alpha-2")
    device_id: str | None = None
    channel: Literal["card_present", "online"] | None = None
    merchant_category: str | None = None
    lat: float | None = Field(None, description="with lon, or neither")
    lon: float | None = None
    ip: str | None = None

    @model_validator(mode="after")
    def _stream_rules(self) -> "TransactionIn":
        reason = rules.validate(self.model_dump(), int(time.time() * 1000))
        if reason is not None:
            raise ValueError(reason)
        return self


class ScoreOut(BaseModel):
    transaction_id: str
    anomaly_score: float
    is_fraud: bool
    threshold: float
    model_version: str
    model_scores: dict[str, float]


class ModelOut(BaseModel):
    name: str
    version: str
    stage: str
    metrics: dict[str, Any]


class Health(BaseModel):
    status: str
    model_version: str
    model_versions: dict[str, str]


class FactorOut(BaseModel):
    feature: str
    value: float
    weight: float = Field(description="share of the combined attribution, 0-1")
    text: str


class Explanation(BaseModel):
    user_id: str
    transaction_id: str | None
    anomaly_score: float
    is_fraud: bool
    threshold: float
    model_version: str
    model_scores: dict[str, float]
    attributions: dict[str, dict[str, float]] = Field(
        description="per model: xgb TreeSHAP (log-odds), ae reconstruction error, if isolation credit"
    )
    top_factors: list[FactorOut]
    rationale: str
    rationale_source: Literal["llm", "template"]


class ErrorBody(BaseModel):
    error: str
    detail: str


class BadBody(BaseModel):
    """FastAPI's answer to a body that is not JSON at all (before any validation)."""

    detail: str


api = FastAPI(
    title="fraudray",
    description="Real-time fraud scoring on Ray Serve. Send the API key in `X-API-Key`.",
    version="0.2.0",
)

# http_requests_total{handler,status} (the original pipeline's name), per matched route.
api.add_middleware(HttpMetricsMiddleware)


@api.exception_handler(FraudrayError)
async def _fraudray_error(_request: Request, exc: FraudrayError) -> JSONResponse:
    return JSONResponse(
        status_code=exc.http_status, content={"error": type(exc).__name__, "detail": str(exc)}
    )


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


_PROTECTED: dict[int | str, dict[str, Any]] = {401: {"model": ErrorBody}, 503: {"model": ErrorBody}}
# A security scheme (not a plain header parameter): /docs shows an Authorize button for it.
# auto_error=False: the replica answers a missing key itself, as a wrong one (401, ErrorBody).
API_KEY_HEADER = APIKeyHeader(
    name="X-API-Key", scheme_name="ApiKey", auto_error=False,
    description="one of FRAUDRAY_API_KEYS; every route but /health needs it (unless FRAUDRAY_API_AUTH=off)",
)  # fmt: skip
ApiKey = Annotated[str | None, Security(API_KEY_HEADER)]

_TX_COLUMNS = (
    "transaction_id, user_id, merchant_id, amount, currency, event_time, country, device_id, "
    "channel, merchant_category, lat, lon, ip"
)


@serve.deployment(name=INGRESS_DEPLOYMENT, ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(api)
class FraudApi:
    def __init__(self, scorer: DeploymentHandle, config: dict[str, Any]) -> None:
        """``config``: ``redis_url`` (one URL, or the list of the online store's shards),
        ``postgres_dsn`` and ``llm_api_key`` (a secret: kept out
        of ``user_config``, which Serve shows). The keys, ``auth`` and the LLM options arrive
        as ``user_config`` (``reconfigure``); until then (or without one) every protected route
        refuses."""
        from training.registry import Registry

        self.scorer = scorer
        self.store = OnlineStore(config["redis_url"])
        self.predict_cache = PredictCache(config["redis_url"])
        self.dsn = config["postgres_dsn"]
        self.registry = Registry(Settings(postgres=PostgresSettings(dsn=SecretStr(self.dsn))))
        self._llm_api_key = str(config.get("llm_api_key", ""))
        self._key_digests: list[bytes] = []
        self._auth = "on"
        self.llm = xp.LlmConfig(api_key=self._llm_api_key)
        self._live: tuple[dict[str, str], float] | None = None  # (model versions, when seen)

    def reconfigure(self, config: dict[str, Any]) -> None:
        """``user_config`` (``ingress_user_config``): ``api_key_digests`` (sha256 hex; only
        digests reach the replicas), ``auth`` (``on``: without digests every protected route
        refuses; ``off``: no key asked) and ``llm`` (``base_url``, ``model``, ``timeout_s``).

        Serve calls it on the live replicas when only ``user_config`` changes, so a redeploy
        that changes keys, auth or the LLM options takes effect in place (no replica replaced,
        none of the minutes a rebuild costs). Everything is checked before anything is set:
        a bad config leaves the previous one in force."""
        auth = str(config.get("auth", "on"))
        if auth not in ("on", "off"):
            raise ValueError(f"auth must be 'on' or 'off', not {auth!r}")
        digests = [bytes.fromhex(d) for d in config.get("api_key_digests") or []]
        options: dict[str, Any] = {"api_key": self._llm_api_key} | dict(config.get("llm") or {})
        llm = xp.LlmConfig(**options)
        self._key_digests, self._auth, self.llm = digests, auth, llm

    def _check_key(self, key: str | None) -> None:
        if self._auth == "off":
            return
        if not self._key_digests:  # auth on without keys: closed, never open by accident
            raise Unauthorized(
                "this API has no keys: set FRAUDRAY_API_KEYS (or FRAUDRAY_API_AUTH=off) where it is deployed"
            )
        offered = hashlib.sha256((key or "").encode()).digest()
        # Constant-time comparison against every digest (no early exit on a match).
        if not sum(hmac.compare_digest(offered, d) for d in self._key_digests):
            raise Unauthorized("missing or wrong X-API-Key header")

    @serve.batch(max_batch_size=API_MAX_BATCH, batch_wait_timeout_s=API_BATCH_WAIT_S)
    async def _score_batched(self, matrices: list[np.ndarray]) -> list[dict[str, Any]]:
        """One Ensemble call for the matrices of concurrent requests; each gets its rows back."""
        result = await self.scorer.score.remote(np.concatenate(matrices), False)
        out, start = [], 0
        for matrix in matrices:
            rows = slice(start, start + len(matrix))
            start += len(matrix)
            out.append(result | {
                "scores": result["scores"][rows], "is_fraud": result["is_fraud"][rows],
                "model_scores": {f: s[rows] for f, s in result["model_scores"].items()},
            })  # fmt: skip
        return out

    async def _score(self, matrix: np.ndarray) -> dict[str, Any]:
        if len(matrix) >= API_MAX_BATCH:  # big enough to amortise its own round trip
            result = await self.scorer.score.remote(matrix, False)  # the API: no shadow
        else:
            result = await self._score_batched(matrix)
        self._live = (result["model_versions"], time.monotonic())
        return result

    def _live_versions(self) -> dict[str, str] | None:
        if self._live is None or time.monotonic() - self._live[1] > LIVE_VERSIONS_MAX_AGE_S:
            return None
        return self._live[0]

    @api.get("/health", response_model=Health, responses={503: {"model": ErrorBody}})
    async def health(self) -> Health:
        """Open (no key): the full scoring path answers for a zero row."""
        result = await self._score(np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32))
        return Health(
            status="ok", model_version=result["model_version"], model_versions=result["model_versions"]
        )

    @api.post(
        "/score",
        response_model=list[ScoreOut],
        responses={**_PROTECTED, 400: {"model": BadBody}, 413: {"model": ErrorBody}},
    )
    async def score(
        self, body: TransactionIn | list[TransactionIn], x_api_key: ApiKey = None
    ) -> list[ScoreOut]:
        """Score one transaction or a list (at most 1,000) without changing any stored state."""
        self._check_key(x_api_key)
        txs = body if isinstance(body, list) else [body]
        if not txs:
            return []
        if len(txs) > MAX_SCORE_BATCH:
            raise PayloadTooLarge(f"at most {MAX_SCORE_BATCH} transactions per request, got {len(txs)}")
        matrix = await asyncio.to_thread(self.store.compute, [t.model_dump() for t in txs])
        result = await self._score(matrix)
        per_model = result["model_scores"]
        return [
            ScoreOut(
                transaction_id=t.transaction_id,
                anomaly_score=float(result["scores"][i]),
                is_fraud=bool(result["is_fraud"][i]),
                threshold=result["threshold"],
                model_version=result["model_version"],
                model_scores={f: float(s[i]) for f, s in per_model.items()},
            )
            for i, t in enumerate(txs)
        ]

    @api.get("/models", response_model=list[ModelOut], responses=_PROTECTED)
    async def models(self, x_api_key: ApiKey = None) -> list[ModelOut]:
        """Production model versions in the registry (curves left out)."""
        self._check_key(x_api_key)
        try:
            rows = await asyncio.to_thread(self.registry.list)
        except Exception as exc:  # psycopg2.Error and socket errors alike
            raise StoreUnavailable(f"model registry: {type(exc).__name__}") from exc
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

    async def _latest(self, user_id: str) -> np.ndarray:
        vector = await asyncio.to_thread(self.store.read_latest, user_id)
        if vector is None:
            raise UnknownUser(f"user {user_id!r} has no transactions in the online store")
        return vector

    @api.get("/predict", response_model=Prediction, responses={**_PROTECTED, 404: {"model": ErrorBody}})
    async def predict(
        self,
        user_id: Annotated[
            str, Query(min_length=1, max_length=128, pattern=TEXT, description="the user to score")
        ],
        x_api_key: ApiKey = None,
    ) -> Prediction:
        """Score the user's current features (their latest transaction's vector). When the
        stream has already decided that transaction with the models served now, its decision is
        the answer (``source: stream``): the same features through the same models, without the
        four Serve calls of scoring it again."""
        self._check_key(x_api_key)
        found = await asyncio.to_thread(self.predict_cache.read, user_id)
        if found is None:
            raise UnknownUser(f"user {user_id!r} has no transactions in the online store")
        vector, decided = found
        features = dict(zip(FEATURE_NAMES, map(float, vector), strict=True))
        live, result = self._live_versions(), None
        if decided is not None and live is None:
            # the versions served now are learnt by scoring: the answer is still the stream's
            # when they are its decision's (the same features through the same models)
            result = await self._score(vector[None, :])
            live = result["model_versions"]
        if decided is not None and decided.get("model_versions") == live:
            with contextlib.suppress(ValidationError, TypeError):  # a malformed entry: score instead
                return Prediction(user_id=user_id, features=features, source="stream", **decided)
        if result is None:
            result = await self._score(vector[None, :])
        return Prediction(
            user_id=user_id,
            anomaly_score=float(result["scores"][0]),
            is_fraud=bool(result["is_fraud"][0]),
            threshold=result["threshold"],
            model_version=result["model_version"],
            model_scores={f: float(s[0]) for f, s in result["model_scores"].items()},
            model_versions=result["model_versions"],
            features=features,
            source="scored",
        )

    def _transaction(self, transaction_id: str) -> dict[str, Any]:
        import psycopg2

        try:
            with db.transaction(self.dsn, timeout_s=5) as cur:
                query = f"SELECT {_TX_COLUMNS} FROM transactions WHERE transaction_id = %s"  # noqa: S608
                cur.execute(query, (transaction_id,))
                row = cur.fetchone()
                names = [d[0] for d in cur.description]
        except psycopg2.Error as exc:
            raise StoreUnavailable(f"PostgreSQL: {type(exc).__name__}") from exc
        if row is None:
            raise UnknownTransaction(f"transaction {transaction_id!r} is not in PostgreSQL")
        return dict(zip(names, row, strict=True))

    @api.get(
        "/explain",
        response_model=Explanation,
        responses={**_PROTECTED, 404: {"model": ErrorBody}},
    )
    async def explain(
        self,
        transaction_id: Annotated[str | None, Query(min_length=1, max_length=128, pattern=TEXT)] = None,
        user_id: Annotated[str | None, Query(min_length=1, max_length=128, pattern=TEXT)] = None,
        x_api_key: ApiKey = None,
    ) -> Explanation:
        """Why a transaction (from PostgreSQL, its features recomputed against the online store
        without changing it) or a user's latest transaction scored as it did: attributions per
        model, the top factors in plain words, and a rationale (LLM when configured, else the
        template)."""
        self._check_key(x_api_key)
        if (transaction_id is None) == (user_id is None):
            raise RequestValidationError([
                {"loc": ("query", "transaction_id"), "type": "value_error",
                 "msg": "give exactly one of transaction_id, user_id"}
            ])  # fmt: skip
        if transaction_id is not None:
            tx = await asyncio.to_thread(self._transaction, transaction_id)
            row = (await asyncio.to_thread(self.store.compute, [tx]))[0]
            subject_user = str(tx["user_id"])
        else:
            assert user_id is not None
            row, subject_user = await self._latest(user_id), user_id
        result = await self.scorer.explain.remote(row)
        names = list(FEATURE_NAMES)
        attributions = {f: np.asarray(a, dtype=np.float64) for f, a in result["attributions"].items()}
        factors = xp.top_factors(attributions, names, row)
        score, threshold, flagged = (
            float(result["scores"][0]),
            float(result["threshold"]),
            bool(result["is_fraud"][0]),
        )
        text, source = await xp.rationale(
            self.llm, score=score, threshold=threshold, is_fraud=flagged, factors=factors
        )
        return Explanation(
            user_id=subject_user,
            transaction_id=transaction_id,
            anomaly_score=score,
            is_fraud=flagged,
            threshold=threshold,
            model_version=result["model_version"],
            model_scores={f: float(s[0]) for f, s in result["model_scores"].items()},
            attributions={f: dict(zip(names, map(float, a), strict=True)) for f, a in attributions.items()},
            top_factors=[
                FactorOut(feature=f.feature, value=f.value, weight=f.weight, text=f.text) for f in factors
            ],
            rationale=text,
            rationale_source=source,
        )


# -- application builder ---------------------------------------------------------------------
def production_versions(settings: Settings) -> dict[str, dict[str, str]]:
    """``{family: {"uri", "version"}}`` of the registry's production models (``if`` at least).
    Serving only loads: ``cluster.first_start`` trains the first-start models."""
    from training.registry import Registry

    registry = Registry(settings)

    found = {}
    for name in (*FAMILIES, "ensemble"):
        try:
            mv = registry.production(name)
        except ModelNotReady:
            continue
        if name == "ensemble" or mv.feature_names == list(FEATURE_NAMES):
            found[name] = {"uri": mv.uri, "version": mv.version}
    if "if" not in found:
        raise ModelNotReady(
            "no production Isolation Forest on the current features: run `fraudray train --quick`"
            " (first-start models) or `fraudray train`"
        )
    return found


def ingress_user_config(
    settings: Settings, *, digests: list[str], auth: str, llm: dict[str, Any] | None = None
) -> dict[str, Any]:
    """``FraudApi``'s ``user_config``: the API key digests, ``auth`` and the LLM options
    (``llm`` overrides the settings'; its ``api_key`` is left out: a secret, it reaches the
    replicas through ``build_app``'s bound config instead).

    Kept out of the app's ``args`` on purpose: Serve derives the app's code version from its
    import path and ``args``, so a key in ``args`` made every key change replace every replica
    (~4 min on this box); as ``user_config`` it is ``FraudApi.reconfigure`` on the live replica."""
    if auth not in ("on", "off"):
        raise ValueError(f"auth must be 'on' or 'off', not {auth!r}")
    base = settings.llm
    options = {"base_url": base.base_url, "model": base.model, "timeout_s": float(base.timeout_s)}
    options |= {k: v for k, v in (llm or {}).items() if k != "api_key"}
    return {"api_key_digests": list(digests), "auth": auth, "llm": options}


def build_app(args: dict[str, Any] | None = None) -> Any:
    """Application builder for ``serve run serve_deployments.app:build_app``.

    ``args`` may carry ``families`` (the member deployments to bind; default: every family
    with a production version), ``models`` (``{family: {"uri", "version"}}``; the legacy
    ``model_uri``/``model_version`` pin the Isolation Forest), ``redis_url``, ``postgres_dsn``,
    ``api_keys`` (list or comma-separated) or ``api_key_digests``, and ``llm`` (``base_url``,
    ``model``, ``timeout_s``), ``auth`` (``on``/``off``). What is missing comes from the
    settings (FRAUDRAY_*) and the registry's production models.

    Config files may override each deployment's ``user_config``: ``{"uri", "version"}`` of
    the models (``serve_deployments.deploy.hot_swap`` swaps versions so) and ``FraudApi``'s
    keys, auth and LLM options (``ingress_user_config``; ``serve_deployments.deploy.deploy``
    sends them so, with ``args`` left as ``{}``). The keys, auth and LLM options built here
    (from ``args`` or the settings) are only the ``user_config`` a config without a ``FraudApi``
    entry gets, e.g. ``serve run serve_deployments/config.yaml``.
    """
    args = dict(args or {})
    settings = get_settings()
    versions: dict[str, dict[str, str]] = dict(args.get("models") or {})
    if "model_uri" in args:
        versions["if"] = {"uri": args["model_uri"], "version": args["model_version"]}
    if not versions or not {*args.get("families", ()), "if"} <= versions.keys():
        versions = production_versions(settings) | versions
    if "families" in args:
        missing = set(args["families"]) - versions.keys()
        if missing:
            raise ModelNotReady(f"no production version of {sorted(missing)}")
        versions = {f: v for f, v in versions.items() if f in args["families"] or f == "ensemble"}
    if "api_key_digests" in args:
        digests = list(args["api_key_digests"])
    else:
        keys = args.get("api_keys", settings.api.key_list())
        if isinstance(keys, str):
            keys = [k for k in keys.split(",") if k]
        digests = [digest(k) for k in keys]
    auth = str(args.get("auth", settings.api.auth))
    if auth == "on" and not digests:
        log.warning(
            "no API keys (FRAUDRAY_API_KEYS): every route but /health answers 401; "
            "set FRAUDRAY_API_KEYS, or FRAUDRAY_API_AUTH=off to serve without auth"
        )
    llm = dict(args.get("llm") or {})
    user_config = ingress_user_config(settings, digests=digests, auth=auth, llm=llm)
    config = {
        "redis_url": args.get("redis_url", settings.redis.urls()),
        "postgres_dsn": args.get("postgres_dsn", settings.postgres.dsn.get_secret_value()),
        "llm_api_key": llm.get("api_key", settings.llm.api_key.get_secret_value()),
    }
    members = {
        fam: member_models.ModelScorer.options(  # type: ignore[attr-defined]
            name=DEPLOYMENT_NAMES[fam], user_config=versions[fam]
        ).bind(fam)
        for fam in FAMILIES
        if fam in versions
    }
    ensemble = Ensemble.options(user_config=versions.get("ensemble", {})).bind(members)  # type: ignore[attr-defined]
    return FraudApi.options(user_config=user_config).bind(ensemble, config)  # type: ignore[attr-defined]
