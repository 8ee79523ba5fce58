"""Grafana files: the dashboard JSON matches monitoring/dashboards.py, panels refer to the
provisioned datasource and to metrics that exist (ours in the catalogue, Ray's in Ray 2.60)."""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

import ray
import yaml

from monitoring.dashboards import DASHBOARD_DIR, DATASOURCE, render_all
from monitoring.metrics import CATALOGUE

GRAFANA = Path(DASHBOARD_DIR).parent


def _dashboards() -> dict[str, dict[str, object]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(Path(DASHBOARD_DIR).glob("*.json"))}


def test_json_files_are_generated_from_the_module() -> None:
    expected = render_all()
    assert sorted(expected) == sorted(p.name for p in Path(DASHBOARD_DIR).glob("*.json"))
    for name, text in expected.items():
        assert (Path(DASHBOARD_DIR) / name).read_text() == text, (
            f"run python -m monitoring.dashboards ({name})"
        )


def test_dashboards_cover_pipeline_models_and_ray_serve() -> None:
    titles = {name: [p["title"] for p in d["panels"]] for name, d in _dashboards().items()}  # type: ignore[attr-defined]
    assert set(titles) == {"pipeline.json", "models.json", "ray_serve.json"}
    text = json.dumps(_dashboards())
    needles = (
        "fraud_summary_total_transactions_total", "fraudray_consumer_lag", "fraudray_dlq_records_total",
        "fraudray_stage_seconds_bucket", "fraudray_model_score_bucket", "fraudray_feature_drift_psi",
        "fraudray_model_info", "ray_serve_deployment_replica_healthy", "http_requests_total",
    )  # fmt: skip
    for needle in needles:
        assert needle in text, needle


def test_panels_are_well_formed_and_use_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (ds,) = provisioned["datasources"]
    assert ds["uid"] == DATASOURCE["uid"] and ds["type"] == "prometheus"
    assert "${FRAUDRAY_PROMETHEUS_PORT}" in ds["url"]
    uids = set()
    for name, d in _dashboards().items():
        uids.add(d["uid"])
        panels: list[dict[str, object]] = d["panels"]  # type: ignore[assignment]
        assert len({p["id"] for p in panels}) == len(panels), name
        for p in panels:
            grid: dict[str, int] = p["gridPos"]  # type: ignore[assignment]
            assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, (name, p["title"])
            for t in p["targets"]:  # type: ignore[attr-defined]
                assert t["datasource"] == DATASOURCE and t["expr"].strip(), (name, p["title"])
    assert len(uids) == len(_dashboards())


def test_dashboard_providers_point_at_ours_and_at_rays_generated_dashboards() -> None:
    doc = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "fraudray.yml").read_text())
    paths = {p["name"]: p["options"]["path"] for p in doc["providers"]}
    assert paths["fraudray"] == "${GRAFANA_FRAUDRAY_DASHBOARDS}"
    assert paths["ray"].endswith("/session_latest/metrics/grafana/dashboards")


@cache
def _ray_source() -> str:
    root = Path(ray.__file__).parent
    return "\n".join(
        p.read_text(errors="ignore")
        for d in ("serve", "_private", "dashboard")
        for p in (root / d).rglob("*.py")
    )


def test_panel_metrics_exist() -> None:
    ours = {s for m in CATALOGUE for s in m.series}
    for name, d in _dashboards().items():
        for p in d["panels"]:  # type: ignore[attr-defined]
            for t in p["targets"]:
                for metric in set(
                    re.findall(r"\b((?:fraud_summary|fraudray|http|ray)_[a-z0-9_]+)\b", t["expr"])
                ):
                    if metric.startswith("ray_"):
                        # Ray defines its metrics without the prefix (suffixes come with the type);
                        # its own dashboard panels use the exported name.
                        base = re.sub(r"_(bucket|count|sum|total)$", "", metric.removeprefix("ray_"))
                        src = _ray_source()
                        assert f'"{base}"' in src or metric in src, (
                            f"{name}: {metric} is not a Ray 2.60 metric"
                        )
                    else:
                        assert metric in ours, f"{name}: {metric} is not in monitoring.metrics.CATALOGUE"
