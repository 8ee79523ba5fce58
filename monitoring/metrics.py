"""Every metric fraudray exports, defined once (``CATALOGUE``), and the small API that records
them from the consumer actors, the Serve deployments and the FastAPI ingress.

Metrics are recorded with ``ray.util.metrics``, so each Ray node's exporter serves them on its
metrics export port, which the head lists in ``prom_metrics_service_discovery.json`` for
Prometheus. Ray 2.60 exports a metric named ``x`` as ``ray_x`` (counters as ``ray_x_total``);
the Prometheus scrape job strips the ``ray_`` prefix from our names again
(``monitoring/prometheus/prometheus.yml``), so Prometheus stores exactly ``MetricSpec.name``.

Everything is recorded per batch, never per record: histograms of per-record values
(pipeline and event-to-decision latency, model scores) observe a uniform sample of at most
``SAMPLE_PER_BATCH`` values, so their ``_count`` counts samples, not transactions.
Label values are bounded: known sets where there is one (stages), otherwise the first
``limit`` distinct values, then ``other``.
"""

from __future__ import annotations

from collections import Counter as _Tally
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from monitoring.drift import DriftWindow, psi

if TYPE_CHECKING:
    from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = [
    "CATALOGUE",
    "STAGES",
    "HttpMetricsMiddleware",
    "LearnMetrics",
    "MetricSpec",
    "PipelineMetrics",
    "describe",
    "psi",
    "shared_metrics",
]

Kind = Literal["counter", "gauge", "histogram"]
Emitter = Literal["consumer", "serve", "ingress", "drift", "learn"]

RAY_PREFIX = "ray_"
STAGES = ("poll", "decode", "features", "score", "sink_pg", "sink_kafka", "commit")
SAMPLE_PER_BATCH = 64

# Seconds per batch and stage: a 2,000-record batch costs ~5-250 ms per stage on the dev box.
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# Kafka timestamp (or live event time) to decision: sub-second when caught up, minutes when a
# backlog drains. What each latency means: monitoring/latency.py.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
BATCH_BUCKETS = (1.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
# Probabilities and Isolation Forest scores live in [0, 1]; autoencoder errors go above.
SCORE_BUCKETS = (*(round(0.05 * i, 2) for i in range(1, 21)), 1.5, 2.0, 5.0, 10.0)


@dataclass(frozen=True)
class MetricSpec:
    """One metric: ``name`` is what Prometheus stores (and what rules and dashboards use)."""

    name: str
    kind: Kind
    help: str
    emitted_by: Emitter
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()

    @property
    def ray_name(self) -> str:
        """The name handed to ``ray.util.metrics`` (Ray appends ``_total`` to counters)."""
        return self.name.removesuffix("_total") if self.kind == "counter" else self.name

    @property
    def exported_name(self) -> str:
        """The name Ray's exporter serves, before the scrape job renames it to ``name``."""
        return RAY_PREFIX + self.name

    @property
    def series(self) -> tuple[str, ...]:
        """The series names Prometheus holds for this metric."""
        if self.kind == "histogram":
            return (f"{self.name}_bucket", f"{self.name}_count", f"{self.name}_sum")
        return (self.name,)


TOTAL = MetricSpec(
    "fraud_summary_total_transactions_total", "counter",
    "Transactions decided (name kept from the original pipeline).", "consumer",
)  # fmt: skip
IS_FRAUD = MetricSpec(
    "fraud_summary_is_fraud_total", "counter",
    "Transactions decided as fraud (name kept from the original pipeline).", "consumer",
)  # fmt: skip
CONSUMED = MetricSpec(
    "fraudray_transactions_consumed_total", "counter",
    "Records taken from Kafka in committed batches, dead letters included.", "consumer",
)  # fmt: skip
SCORED = MetricSpec("fraudray_transactions_scored_total", "counter", "Transactions scored.", "consumer")
ALERTS = MetricSpec("fraudray_alerts_total", "counter", "Alerts published to the alerts topic.", "consumer")
DLQ = MetricSpec(
    "fraudray_dlq_records_total", "counter", "Records sent to the dead-letter topic.", "consumer",
    ("error_class",),
)  # fmt: skip
RETRIES = MetricSpec(
    "fraudray_batch_retries_total", "counter", "Batches retried after a transient failure.", "consumer"
)
STAGE = MetricSpec(
    "fraudray_stage_seconds", "histogram", "Seconds per batch spent in each pipeline stage.", "consumer",
    ("stage",), STAGE_BUCKETS,
)  # fmt: skip
PIPELINE_LATENCY = MetricSpec(
    "fraudray_pipeline_latency_seconds", "histogram",
    "Seconds from a record's Kafka timestamp to its decision (sampled per batch).", "consumer",
    (), LATENCY_BUCKETS,
)  # fmt: skip
EVENT_TO_DECISION = MetricSpec(
    "fraudray_event_to_decision_seconds", "histogram",
    "Seconds from a live transaction's event time to its decision (sampled per batch; records "
    "whose event time is far from their Kafka timestamp, as in replays, are left out).", "consumer",
    (), LATENCY_BUCKETS,
)  # fmt: skip
BATCH_SIZE = MetricSpec(
    "fraudray_batch_size", "histogram", "Records per committed batch.", "consumer", (), BATCH_BUCKETS
)
LAG = MetricSpec(
    "fraudray_consumer_lag", "gauge", "Records between the consumer position and the high watermark.",
    "consumer", ("partition",),
)  # fmt: skip
MODEL_SCORE = MetricSpec(
    "fraudray_model_score", "histogram", "Scores given by each model (sampled per batch).", "serve",
    ("model",), SCORE_BUCKETS,
)  # fmt: skip
MODEL_INFO = MetricSpec(
    "fraudray_model_info", "gauge", "1 for the model version a process serves, 0 for the one it replaced.",
    "serve", ("model", "version"),
)  # fmt: skip
DRIFT = MetricSpec(
    "fraudray_feature_drift_psi", "gauge",
    "Population stability index of a feature's recent values against the training window.", "drift",
    ("feature",),
)  # fmt: skip
HTTP_REQUESTS = MetricSpec(
    "http_requests_total", "counter", "HTTP requests answered by the API (name kept from the original "
    "pipeline); handler is the route template, status the class (2xx, 4xx, 5xx).", "ingress",
    ("handler", "status"),
)  # fmt: skip

LEARN_DECISIONS = MetricSpec(
    "fraudray_learn_decisions_total", "counter",
    "Rounds of the champion/challenger loop by what they decided (promoted, candidate, refused).",
    "learn", ("action",),
)  # fmt: skip
LEARN_AUCPR = MetricSpec(
    "fraudray_learn_aucpr", "gauge",
    "Average precision on the recent labelled window of the last round's champion and challenger.",
    "learn", ("model",),
)  # fmt: skip

CATALOGUE: tuple[MetricSpec, ...] = (
    TOTAL, IS_FRAUD, CONSUMED, SCORED, ALERTS, DLQ, RETRIES, STAGE, PIPELINE_LATENCY, EVENT_TO_DECISION,
    BATCH_SIZE, LAG, MODEL_SCORE, MODEL_INFO, DRIFT, HTTP_REQUESTS, LEARN_DECISIONS, LEARN_AUCPR,
)  # fmt: skip


def describe(emitted_by: Emitter | None = "consumer") -> list[dict[str, Any]]:
    """Names as Prometheus stores them, of one emitter's metrics (``None``: all of them).

    The default is the consumer's set: what a stream through the consumer actors produces.
    """
    return [
        {"name": m.name, "type": m.kind, "labels": m.labels, "emitted_by": m.emitted_by}
        for m in CATALOGUE
        if emitted_by is None or m.emitted_by == emitted_by
    ]


class _Bounded:
    """Keeps a label's values bounded: ``allowed`` values pass; without a fixed set the first
    ``limit`` distinct values pass. Everything else is reported as ``other``."""

    def __init__(self, allowed: Iterable[str] = (), limit: int = 0) -> None:
        self._seen = set(allowed)
        self._limit = len(self._seen) + limit

    def __call__(self, value: object) -> str:
        text = str(value)
        if text in self._seen:
            return text
        if len(self._seen) < self._limit:
            self._seen.add(text)
            return text
        return "other"


def _make(spec: MetricSpec) -> Any:
    from ray.util import metrics as ray_metrics

    if spec.kind == "counter":
        return ray_metrics.Counter(spec.ray_name, spec.help, spec.labels)
    if spec.kind == "gauge":
        return ray_metrics.Gauge(spec.ray_name, spec.help, spec.labels)
    return ray_metrics.Histogram(spec.ray_name, spec.help, list(spec.buckets), spec.labels)


class PipelineMetrics:
    """Records fraudray's metrics from one process (Ray metrics are per process: create one per
    actor or replica, or use ``shared_metrics()``). Every method is meant to run once per batch
    (or request), never once per record."""

    def __init__(self, seed: int | None = None) -> None:
        self.total, self.is_fraud, self.consumed = _make(TOTAL), _make(IS_FRAUD), _make(CONSUMED)
        self.scored, self.alerts, self.dlq = _make(SCORED), _make(ALERTS), _make(DLQ)
        self.retries, self.stage = _make(RETRIES), _make(STAGE)
        self.latency, self.event_latency = _make(PIPELINE_LATENCY), _make(EVENT_TO_DECISION)
        self.batch_size, self.lag = _make(BATCH_SIZE), _make(LAG)
        self.model_score, self.model_info = _make(MODEL_SCORE), _make(MODEL_INFO)
        self.drift, self.http_requests = _make(DRIFT), _make(HTTP_REQUESTS)
        self._rng = np.random.default_rng(seed)
        self._stage = _Bounded(STAGES)
        self._error_class = _Bounded(("DecodeError", "ValidationError"), limit=16)
        self._partition = _Bounded(limit=1024)
        self._model = _Bounded(limit=16)
        self._version = _Bounded(limit=256)
        self._feature = _Bounded(limit=64)
        self._handler = _Bounded(limit=64)
        self._lag_partitions: set[str] = set()
        self._versions: dict[str, str] = {}

    def _sample(self, values: np.ndarray) -> np.ndarray:
        values = np.asarray(values, dtype=np.float64).ravel()
        if len(values) > SAMPLE_PER_BATCH:
            values = values[self._rng.integers(0, len(values), SAMPLE_PER_BATCH)]
        return values[np.isfinite(values)]

    # -- consumer actors: once per committed batch -------------------------------------------
    def observe_stage(self, stage: str, seconds: float) -> None:
        """One stage's seconds on their own: the offset commit, which finishes behind the next
        batch (ingest/consumer.py), is recorded when it does. Zero is not recorded."""
        if seconds > 0:
            self.stage.observe(float(seconds), tags={"stage": self._stage(stage)})

    def observe_batch(
        self,
        *,
        stage_seconds: Mapping[str, float],
        size: int,
        scored: int,
        fraud: int,
        dead_letters: Iterable[str] = (),
        latencies_s: np.ndarray | None = None,
        event_latencies_s: np.ndarray | None = None,
    ) -> None:
        """Record one committed batch: seconds per stage, records taken (``size``, dead letters
        included), transactions scored and decided as fraud (= alerts published), the error
        class of each dead letter, the pipeline latency (Kafka timestamp to decision) of the
        scored records and their event-to-decision seconds (NaN where not live: skipped)."""
        if size > 0:
            self.batch_size.observe(float(size))
            self.consumed.inc(size)
        for stage, seconds in stage_seconds.items():
            self.observe_stage(stage, seconds)
        if scored > 0:
            self.total.inc(scored)
            self.scored.inc(scored)
        if fraud > 0:
            self.is_fraud.inc(fraud)
            self.alerts.inc(fraud)
        for error_class, n in _Tally(self._error_class(e) for e in dead_letters).items():
            self.dlq.inc(n, tags={"error_class": error_class})
        if latencies_s is not None:
            for value in self._sample(latencies_s):
                self.latency.observe(max(float(value), 0.0))
        if event_latencies_s is not None:
            live = np.asarray(event_latencies_s, dtype=np.float64)
            for value in self._sample(live[np.isfinite(live)]):
                self.event_latency.observe(max(float(value), 0.0))

    def retry(self) -> None:
        """A batch is retried after a transient failure."""
        self.retries.inc()

    def set_lag(self, lag: Mapping[int, int]) -> None:
        """Lag of every partition this consumer owns now. Partitions it reported before and no
        longer owns are set to 0, so a rebalance leaves no stale value behind (the new owner
        reports the real one; dashboards take the max per partition)."""
        now = {self._partition(p): int(v) for p, v in lag.items()}
        for partition in self._lag_partitions - now.keys():
            self.lag.set(0, tags={"partition": partition})
        for partition, value in now.items():
            self.lag.set(max(value, 0), tags={"partition": partition})
        self._lag_partitions = set(now)

    # -- Serve model deployments -------------------------------------------------------------
    def set_model_version(self, model: str, version: str) -> None:
        """The model version this process serves now (call on load and on every hot swap)."""
        model, version = self._model(model), self._version(version)
        previous = self._versions.get(model)
        if previous is not None and previous != version:
            self.model_info.set(0, tags={"model": model, "version": previous})
        self.model_info.set(1, tags={"model": model, "version": version})
        self._versions[model] = version

    def observe_scores(self, model: str, scores: np.ndarray) -> None:
        """Scores of one batch (a uniform sample of at most ``SAMPLE_PER_BATCH`` is kept)."""
        tags = {"model": self._model(model)}
        for value in self._sample(scores):
            self.model_score.observe(float(value), tags=tags)

    # -- drift -------------------------------------------------------------------------------
    def observe_drift(self, feature: str, value: float) -> None:
        """PSI of one feature's recent values against the training window (see ``psi``)."""
        if np.isfinite(value):
            self.drift.set(float(value), tags={"feature": self._feature(feature)})

    def observe_drift_window(self, window: DriftWindow) -> dict[str, float]:
        """Compute and record the PSI of every feature ``window`` tracks (every few seconds)."""
        values = window.psi_by_feature()
        for feature, value in values.items():
            self.observe_drift(feature, value)
        return values

    # -- FastAPI ingress ---------------------------------------------------------------------
    def observe_http(self, handler: str, status: int) -> None:
        """One answered request: ``handler`` is the route template (``/predict``), never the
        raw path; ``status`` the HTTP status code, reported as its class (``2xx``)."""
        self.http_requests.inc(tags={"handler": self._handler(handler), "status": f"{status // 100}xx"})


_shared: PipelineMetrics | None = None


def shared_metrics() -> PipelineMetrics:
    """This process's ``PipelineMetrics``, created on first use (inside the actor or replica,
    never at import, so nothing Ray-bound is pickled with a deployment)."""
    global _shared  # noqa: PLW0603 - one recorder per process is the point
    if _shared is None:
        _shared = PipelineMetrics()
    return _shared


class HttpMetricsMiddleware:
    """ASGI middleware counting ``http_requests_total{handler,status}`` for a FastAPI app:
    ``app.add_middleware(HttpMetricsMiddleware)``. The handler is the matched route's template
    (``none`` when no route matched), so the label stays bounded whatever paths clients send."""

    def __init__(self, app: ASGIApp, metrics: PipelineMetrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception before the response started becomes a 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            handler = getattr(scope.get("route"), "path", None) or "none"
            (self.metrics or shared_metrics()).observe_http(handler, status)


class LearnMetrics:
    """The learning loop's metrics (training/learning.py). Ray metrics need a Ray process: in
    a process without Ray the loop's decisions are still in ``training_runs``, and this records
    nothing (``recorded`` stays 0)."""

    _shared: LearnMetrics | None = None

    def __init__(self) -> None:
        self.decisions: Any = None
        self.aucpr: Any = None
        self.recorded = 0

    @classmethod
    def shared(cls) -> LearnMetrics:
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def observe(self, action: str, champion: float | None, challenger: float | None) -> None:
        import ray

        if not ray.is_initialized():
            return
        if self.decisions is None:
            self.decisions, self.aucpr = _make(LEARN_DECISIONS), _make(LEARN_AUCPR)
        self.decisions.inc(1, tags={"action": action})
        for model, value in (("champion", champion), ("challenger", challenger)):
            if value is not None:
                self.aucpr.set(float(value), tags={"model": model})
        self.recorded += 1
