"""The metric catalogue, its naming contract with Prometheus, PSI, the drift window, label
bounding and the HTTP middleware (pure: no Ray cluster, no Prometheus)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from monitoring.drift import DriftWindow, psi
from monitoring.metrics import (
    CATALOGUE,
    STAGES,
    HttpMetricsMiddleware,
    PipelineMetrics,
    describe,
)

PROMETHEUS_YML = Path(__file__).resolve().parents[2] / "monitoring" / "prometheus" / "prometheus.yml"
rng = np.random.default_rng(7)


# -- catalogue and names ---------------------------------------------------------------------
def test_contract_names_are_kept() -> None:
    names = {m.name for m in CATALOGUE}
    assert {
        "fraud_summary_total_transactions_total",
        "fraud_summary_is_fraud_total",
        "http_requests_total",
    } <= names
    http = next(m for m in CATALOGUE if m.name == "http_requests_total")
    assert http.labels == ("handler", "status")


def test_names_follow_prometheus_conventions() -> None:
    names = [m.name for m in CATALOGUE]
    assert len(names) == len(set(names))
    for m in CATALOGUE:
        assert re.fullmatch(r"[a-z_][a-z0-9_]*", m.name), m.name
        assert m.name.endswith("_total") == (m.kind == "counter"), m.name
        assert m.help
        if m.kind == "histogram":
            assert m.buckets and list(m.buckets) == sorted(set(m.buckets)) and m.buckets[0] > 0, m.name
        else:
            assert not m.buckets
        if "latency" in m.help.lower() or m.name.endswith("_seconds"):
            assert m.name.endswith("_seconds"), m.name
        # Unbounded identifiers never become labels.
        assert not set(m.labels) & {"transaction_id", "user_id", "merchant_id", "le", "quantile"}


def test_ray_names_give_the_contract_names_after_export() -> None:
    for m in CATALOGUE:
        # Ray 2.60: "ray_" + name, and "_total" appended to counters.
        exported = "ray_" + m.ray_name + ("_total" if m.kind == "counter" else "")
        assert exported == m.exported_name


def test_scrape_job_renames_ours_and_leaves_ray_metrics_alone() -> None:
    job = next(
        j for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"] if j["job_name"] == "ray"
    )
    (rule,) = job["metric_relabel_configs"]
    pattern = rule["regex"]
    replacement = rule["replacement"].replace("$$", "$")  # string.Template escape
    assert replacement == "$1" and rule["target_label"] == "__name__"
    for m in CATALOGUE:
        for stored in m.series:  # name, or name_bucket / _count / _sum
            match = re.fullmatch(pattern, "ray_" + stored)
            assert match and match.group(1) == stored, stored
    for theirs in ("ray_serve_num_http_requests_total", "ray_node_cpu_utilization", "ray_tasks", "up"):
        assert not re.fullmatch(pattern, theirs)


def test_every_metric_is_documented() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "monitoring.md").read_text()
    for m in CATALOGUE:
        assert f"| `{m.name}` | {m.kind}" in docs, m.name


def test_describe_defaults_to_what_the_consumer_emits() -> None:
    consumer = {d["name"] for d in describe()}
    assert "fraud_summary_total_transactions_total" in consumer
    assert "http_requests_total" not in consumer
    assert {d["name"] for d in describe(None)} == {m.name for m in CATALOGUE}


# -- PSI -------------------------------------------------------------------------------------
def test_psi_is_zero_for_the_same_sample_and_small_for_the_same_distribution() -> None:
    x = rng.normal(size=20_000)
    assert psi(x, x) == pytest.approx(0.0, abs=1e-12)
    assert psi(x, rng.normal(size=5_000)) < 0.02


def test_psi_grows_with_the_shift() -> None:
    x = rng.normal(size=20_000)
    small, large = psi(x, rng.normal(0.2, 1, 5_000)), psi(x, rng.normal(1.0, 1, 5_000))
    assert 0.02 < small < 0.1
    assert large > 0.25


def test_psi_counts_values_beyond_the_training_range() -> None:
    x = rng.uniform(0, 1, 10_000)
    assert psi(x, rng.uniform(5, 6, 1_000)) > 5  # all in the top open bin


def test_psi_of_flags_and_unseen_categories() -> None:
    flags = (rng.random(10_000) < 0.4).astype(float)
    assert psi(flags, (rng.random(5_000) < 0.4).astype(float)) < 0.01
    assert psi(flags, (rng.random(5_000) < 0.8).astype(float)) > 0.25
    assert psi(flags, np.full(1_000, 2.0)) > 5  # a value training never saw


def test_psi_ignores_non_finite_values_and_rejects_empty_input() -> None:
    x = rng.normal(size=1_000)
    assert psi(np.append(x, [np.nan, np.inf]), x) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="finite"):
        psi(x, np.array([np.nan]))
    with pytest.raises(ValueError, match="bins"):
        psi(x, x, bins=1)


def test_drift_window_keeps_the_last_rows_of_the_tracked_columns() -> None:
    ref = rng.normal(size=5_000)
    window = DriftWindow({"amount": ref}, ("hour", "amount"), size=1_000, min_samples=500)
    assert window.psi_by_feature() == {}
    for _ in range(7):  # 2,100 rows through a 1,000-row ring: wraps twice
        window.add(np.column_stack([np.zeros(300), rng.normal(size=300)]))
    assert window.psi_by_feature()["amount"] < 0.1
    window.add(np.column_stack([np.zeros(1_000), rng.normal(3, 1, 1_000)]))  # fully replaced
    assert window.psi_by_feature()["amount"] > 1
    with pytest.raises(ValueError, match="lacks"):
        DriftWindow({"nope": ref}, ("amount",))


# -- PipelineMetrics bookkeeping (Ray's metric objects replaced by recorders) ----------------
class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[str, float, dict[str, str]]] = []

    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("inc", value, tags or {}))

    def set(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("set", value, tags or {}))

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        self.calls.append(("observe", value, tags or {}))


@pytest.fixture
def recorded() -> PipelineMetrics:
    m = PipelineMetrics(seed=1)
    for attr, value in list(vars(m).items()):
        if type(value).__module__.startswith("ray."):
            setattr(m, attr, _Recorder())
    return m


def _calls(m: PipelineMetrics, attr: str) -> list[tuple[str, float, dict[str, str]]]:
    rec: Any = getattr(m, attr)
    return list(rec.calls)


def test_observe_batch_records_once_per_batch(recorded: PipelineMetrics) -> None:
    recorded.observe_batch(
        stage_seconds={**dict.fromkeys(STAGES, 0.01), "poll": 0.0, "typo": 0.5},
        size=500, scored=497, fraud=4,
        dead_letters=["DecodeError", "ValidationError", "ValidationError"],
        latencies_s=np.linspace(0, 10, 500),
        event_latencies_s=np.r_[np.full(490, np.nan), np.linspace(0, 1, 10)],
    )  # fmt: skip
    assert _calls(recorded, "consumed") == [("inc", 500, {})]
    assert _calls(recorded, "total") == _calls(recorded, "scored") == [("inc", 497, {})]
    assert _calls(recorded, "is_fraud") == _calls(recorded, "alerts") == [("inc", 4, {})]
    assert sorted(_calls(recorded, "dlq")) == [
        ("inc", 1, {"error_class": "DecodeError"}),
        ("inc", 2, {"error_class": "ValidationError"}),
    ]
    stages = [c[2]["stage"] for c in _calls(recorded, "stage")]
    assert "poll" not in stages and stages.count("other") == 1  # zero skipped, unknown bounded
    assert len(_calls(recorded, "latency")) == 64  # a sample, not 500 observations
    # event -> decision: only the 10 live records (NaN = not live), never a NaN observation
    assert sorted(c[1] for c in _calls(recorded, "event_latency")) == np.linspace(0, 1, 10).tolist()
    assert _calls(recorded, "batch_size") == [("observe", 500.0, {})]


def test_empty_batch_records_nothing_but_stages(recorded: PipelineMetrics) -> None:
    recorded.observe_batch(stage_seconds={"poll": 0.5}, size=0, scored=0, fraud=0, latencies_s=np.empty(0))
    assert not _calls(recorded, "consumed") and not _calls(recorded, "latency")
    assert _calls(recorded, "stage") == [("observe", 0.5, {"stage": "poll"})]


def test_a_stage_on_its_own_is_recorded_unless_zero(recorded: PipelineMetrics) -> None:
    recorded.observe_stage("commit", 0.007)
    recorded.observe_stage("commit", 0.0)  # a flush with nothing of ours to commit
    assert _calls(recorded, "stage") == [("observe", 0.007, {"stage": "commit"})]


def test_set_lag_zeroes_partitions_lost_in_a_rebalance(recorded: PipelineMetrics) -> None:
    recorded.set_lag({0: 10, 1: 20})
    recorded.set_lag({1: 5, 2: 7})
    assert _calls(recorded, "lag")[2:] == [
        ("set", 0, {"partition": "0"}),
        ("set", 5, {"partition": "1"}),
        ("set", 7, {"partition": "2"}),
    ]


def test_model_version_swap_clears_the_old_version(recorded: PipelineMetrics) -> None:
    recorded.set_model_version("isolation_forest", "3")
    recorded.set_model_version("isolation_forest", "3")
    recorded.set_model_version("isolation_forest", "4")
    assert _calls(recorded, "model_info")[-2:] == [
        ("set", 0, {"model": "isolation_forest", "version": "3"}),
        ("set", 1, {"model": "isolation_forest", "version": "4"}),
    ]


def test_label_values_stay_bounded(recorded: PipelineMetrics) -> None:
    for i in range(100):
        recorded.observe_batch(stage_seconds={}, size=1, scored=0, fraud=0, dead_letters=[f"Err{i}"])
        recorded.observe_drift(f"feature_{i}", 0.1)
    assert len({c[2]["error_class"] for c in _calls(recorded, "dlq")}) == 16 + 1  # 16 new + "other"
    assert len({c[2]["feature"] for c in _calls(recorded, "drift")}) == 64 + 1
    recorded.observe_drift("x", float("nan"))
    assert all(np.isfinite(c[1]) for c in _calls(recorded, "drift"))


def test_drift_window_results_are_recorded(recorded: PipelineMetrics) -> None:
    window = DriftWindow({"amount": rng.normal(size=2_000)}, ("amount",), size=600, min_samples=500)
    window.add(rng.normal(2, 1, (600, 1)))
    values = recorded.observe_drift_window(window)
    assert values["amount"] > 0.25
    assert _calls(recorded, "drift") == [("set", values["amount"], {"feature": "amount"})]


# -- the FastAPI middleware ------------------------------------------------------------------
def test_http_middleware_counts_route_templates_and_status_classes(recorded: PipelineMetrics) -> None:
    app = FastAPI()

    @app.get("/predict")
    def predict(user_id: str) -> dict[str, str]:
        if user_id == "missing":
            raise HTTPException(404, "unknown user")
        if user_id == "boom":
            raise RuntimeError("bug")
        return {"user_id": user_id}

    @app.get("/items/{item_id}")
    def item(item_id: int) -> dict[str, int]:
        return {"item_id": item_id}

    app.add_middleware(HttpMetricsMiddleware, metrics=recorded)
    client = TestClient(app, raise_server_exceptions=False)
    for path in ("/predict?user_id=u1", "/predict?user_id=missing", "/predict?user_id=boom",
                 "/items/1", "/items/2", "/nope/1", "/predict"):  # fmt: skip
        client.get(path)
    tags = [c[2] for c in _calls(recorded, "http_requests")]
    assert tags == [
        {"handler": "/predict", "status": "2xx"},
        {"handler": "/predict", "status": "4xx"},
        {"handler": "/predict", "status": "5xx"},
        {"handler": "/items/{item_id}", "status": "2xx"},
        {"handler": "/items/{item_id}", "status": "2xx"},
        {"handler": "none", "status": "4xx"},
        {"handler": "/predict", "status": "4xx"},  # 422: missing query parameter
    ]
