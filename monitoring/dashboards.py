"""The Grafana dashboards of ``monitoring/grafana/dashboards/`` as code: pipeline overview,
models, and Ray/Serve. ``python -m monitoring.dashboards`` rewrites the JSON files; a test
checks that they match this module and runs every panel's PromQL against Prometheus.

Only ``$__rate_interval`` is used as a Grafana variable, so a query runs unchanged in
Prometheus once it is replaced by a range (see ``promql_for_prometheus``). Counters that
stay absent until their first event (fraud, dead letters, retries) get ``or vector(0)``,
so a quiet pipeline shows 0 instead of "no data".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DASHBOARD_DIR = Path(__file__).resolve().parent / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}  # provisioned in grafana/provisioning
RI = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    title: str
    exprs: tuple[tuple[str, str], ...]  # (PromQL, legend)
    unit: str = "short"
    kind: str = "timeseries"
    width: int = 12
    description: str = ""
    thresholds: tuple[float, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


def _q(expr: str, legend: str = "") -> tuple[str, str]:
    return (" ".join(expr.split()), legend)


FRAUD_RATE = (
    f"(sum(rate(fraud_summary_is_fraud_total[{RI}])) or vector(0))"
    f" / sum(rate(fraud_summary_total_transactions_total[{RI}]))"
)

PIPELINE = [
    Panel("Transactions decided / s", (_q(f"sum(rate(fraud_summary_total_transactions_total[{RI}]))"),),
          "reqps", "stat", 6),
    Panel("Fraud rate (of transactions)", (_q(FRAUD_RATE),), "percentunit", "stat", 6,
          "Share of scored transactions decided as fraud; HighFraudRate fires above 5% / 20%.", (0.05, 0.2)),
    Panel("Consumer lag (records)", (_q("sum(max by (partition) (fraudray_consumer_lag))"),), "short",
          "stat", 6, "Records waiting in the transactions topic; ConsumerLagHigh above 10k / 100k.",
          (10000, 100000)),
    Panel("Dead letters / s", (_q(f"sum(rate(fraudray_dlq_records_total[{RI}])) or vector(0)"),), "reqps",
          "stat", 6),
    Panel("Throughput", (
        _q(f"sum(rate(fraudray_transactions_consumed_total[{RI}]))", "consumed"),
        _q(f"sum(rate(fraudray_transactions_scored_total[{RI}]))", "scored"),
        _q(f"sum(rate(fraudray_alerts_total[{RI}])) or vector(0)", "alerts"),
        _q(f"sum(rate(fraudray_dlq_records_total[{RI}])) or vector(0)", "dead letters"),
    ), "reqps"),
    Panel("Fraud rate", (_q(FRAUD_RATE, "fraud share"),), "percentunit", thresholds=(0.05, 0.2)),
    Panel("Stage seconds per batch, p95", (_q(
        f"histogram_quantile(0.95, sum by (le, stage) (rate(fraudray_stage_seconds_bucket[{RI}])))",
        "{{stage}}"),), "s", description="ScoringLatencyP95High fires when the score stage's p95 > 0.5 s."),
    Panel("Pipeline latency (Kafka timestamp to decision)", tuple(
        _q(f"histogram_quantile({q}, sum by (le) (rate(fraudray_pipeline_latency_seconds_bucket[{RI}])))",
           f"p{round(q * 100)}")
        for q in (0.5, 0.95, 0.99)), "s",
        description="PipelineLatencyP95High fires when p95 > 5 s. True for replays and sped-up streams."),
    Panel("Event to decision latency (live traffic only)", tuple(
        _q(f"histogram_quantile({q}, sum by (le) (rate(fraudray_event_to_decision_seconds_bucket[{RI}])))",
           f"p{round(q * 100)}")
        for q in (0.5, 0.95, 0.99)), "s",
        description="Only records whose event time is within 60 s of their Kafka timestamp."),
    Panel("Lag per partition", (_q("max by (partition) (fraudray_consumer_lag)", "p{{partition}}"),)),
    Panel("Dead letters by error class", (_q(
        f"sum by (error_class) (rate(fraudray_dlq_records_total[{RI}]))"
        ' or label_replace(vector(0), "error_class", "none", "", "")', "{{error_class}}"),), "reqps"),
    Panel("Batch size", tuple(
        _q(f"histogram_quantile({q}, sum by (le) (rate(fraudray_batch_size_bucket[{RI}])))",
           f"p{round(q * 100)}")
        for q in (0.5, 0.95)), "short"),
    Panel("Batch retries / s and firing alerts", (
        _q(f"sum(rate(fraudray_batch_retries_total[{RI}])) or vector(0)", "retries / s"),
        _q('count(ALERTS{alertstate="firing"}) or vector(0)', "firing alerts"),
    )),
]  # fmt: skip

MODELS = [
    Panel("Serving model versions", (_q("max by (model, version) (fraudray_model_info) == 1",
                                        "{{model}} {{version}}"),), kind="table", width=8,
          options={"showHeader": True}),
    Panel("Fraud decisions / s", (
        _q(f"sum(rate(fraud_summary_is_fraud_total[{RI}])) or vector(0)", "fraud"),
        _q(f"sum(rate(fraud_summary_total_transactions_total[{RI}]))", "all"),
    ), "reqps", width=8),
    Panel("Fraud rate", (_q(FRAUD_RATE, "fraud share"),), "percentunit", width=8, thresholds=(0.05, 0.2)),
    Panel("Score distribution (last 15 min)", (_q(
        "sum by (le) (increase(fraudray_model_score_bucket[15m]))", "{{le}}"),), kind="bargauge",
        options={"displayMode": "basic", "orientation": "vertical"}),
    Panel("Score quantiles by model", tuple(
        _q(f"histogram_quantile({q}, sum by (le, model) (rate(fraudray_model_score_bucket[{RI}])))",
           f"{{{{model}}}} p{round(q * 100)}")
        for q in (0.5, 0.95, 0.99))),
    Panel("Feature drift (PSI vs training window)", (_q(
        "max by (feature) (fraudray_feature_drift_psi)", "{{feature}}"),), width=24,
        description="PSI < 0.1 stable, 0.1-0.25 moderate, > 0.25 significant (FeatureDriftHigh: 15 min).",
        thresholds=(0.1, 0.25)),
]  # fmt: skip

RAY_SERVE = [
    Panel("Serve requests / s by deployment", (_q(
        f"sum by (application, deployment) (rate(ray_serve_deployment_request_counter_total[{RI}]))",
        "{{application}}/{{deployment}}"),), "reqps"),
    Panel("Serve processing latency p95", (_q(
        "histogram_quantile(0.95, sum by (le, deployment) "
        f"(rate(ray_serve_deployment_processing_latency_ms_bucket[{RI}])))", "{{deployment}}"),), "ms"),
    Panel("Healthy replicas vs target", (
        _q("sum by (deployment) (ray_serve_deployment_replica_healthy)", "{{deployment}} healthy"),
        _q("max by (deployment) (ray_serve_autoscaling_target_replicas)", "{{deployment}} target"),
    ), description="ServeReplicaUnhealthy fires when healthy < target for 3 min."),
    Panel("Serve errors / s", (_q(
        f"sum by (deployment) (rate(ray_serve_deployment_error_counter_total[{RI}]))"
        ' or label_replace(vector(0), "deployment", "none", "", "")', "{{deployment}}"),), "reqps"),
    Panel("API requests / s (http_requests_total)", (_q(
        f"sum by (handler, status) (rate(http_requests_total[{RI}]))", "{{handler}} {{status}}"),), "reqps",
        description="HighPredictTraffic fires above 50 req/s on /predict for 5 min."),
    Panel("API latency p95 by route", (_q(
        "histogram_quantile(0.95, sum by (le, route) "
        f"(rate(ray_serve_http_request_latency_ms_bucket[{RI}])))",
        "{{route}}"),), "ms"),
    Panel("@serve.batch size p95", (_q(
        f"histogram_quantile(0.95, sum by (le, deployment) (rate(ray_serve_actual_batch_size_bucket[{RI}])))",
        "{{deployment}}"),)),
    Panel("Ongoing requests at replicas", (_q(
        "sum by (deployment) (ray_serve_replica_processing_queries)", "{{deployment}}"),)),
    Panel("Node CPU", (_q("avg by (NodeAddress) (ray_node_cpu_utilization)", "{{NodeAddress}}"),),
          "percent"),
    Panel("Node memory used", (_q("sum by (NodeAddress) (ray_node_mem_used)", "{{NodeAddress}}"),), "bytes"),
    Panel("Actors by state", (_q("sum by (State) (ray_actors)", "{{State}}"),)),
    Panel("Scrape targets up", (_q("sum by (job) (up)", "{{job}}"),),
          description="Prometheus targets answering, per job (prometheus, alertmanager, ray)."),
]  # fmt: skip

DASHBOARDS: dict[str, tuple[str, str, list[Panel]]] = {
    "pipeline.json": ("fraudray-pipeline", "fraudray / Pipeline overview", PIPELINE),
    "models.json": ("fraudray-models", "fraudray / Models", MODELS),
    "ray_serve.json": ("fraudray-ray-serve", "fraudray / Ray and Serve", RAY_SERVE),
}


def _panel(panel_id: int, p: Panel, x: int, y: int) -> dict[str, Any]:
    height = 5 if p.kind == "stat" else 8
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": c, "value": v} for c, v in zip(("orange", "red"), p.thresholds, strict=False)]
    return {
        "id": panel_id,
        "type": p.kind,
        "title": p.title,
        "description": p.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": p.width, "x": x, "y": y},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": expr,
                "legendFormat": legend,
                **({"format": "table", "instant": True} if p.kind == "table" else {}),
                **({"format": "heatmap", "instant": True} if p.kind == "bargauge" else {}),
            }
            for i, (expr, legend) in enumerate(p.exprs)
        ],
        "fieldConfig": {
            "defaults": {"unit": p.unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": p.options,
    }


def build(uid: str, title: str, panels: list[Panel]) -> dict[str, Any]:
    """One dashboard's JSON model (Grafana schema 39), panels laid out left to right."""
    out, x, y, row_h = [], 0, 0, 0
    for i, p in enumerate(panels, start=1):
        if x + p.width > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append(_panel(i, p, x, y))
        x, row_h = x + p.width, max(row_h, out[-1]["gridPos"]["h"])
    return {
        "uid": uid,
        "title": title,
        "tags": ["fraudray"],
        "timezone": "browser",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-30m", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [{"title": "Ray's generated dashboards", "type": "dashboards", "tags": ["rayVersion"]}],
        "panels": out,
    }


def render_all() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        name: json.dumps(build(uid, title, panels), indent=2) + "\n"
        for name, (uid, title, panels) in DASHBOARDS.items()
    }


def promql_for_prometheus(expr: str, rate_interval: str = "1m") -> str:
    """A panel's query as Prometheus runs it, with Grafana's ``$__rate_interval`` replaced."""
    return expr.replace(RI, rate_interval)


def main() -> None:
    DASHBOARD_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in render_all().items():
        (DASHBOARD_DIR / name).write_text(text)
        print(f"wrote {DASHBOARD_DIR / name}")


if __name__ == "__main__":
    main()
