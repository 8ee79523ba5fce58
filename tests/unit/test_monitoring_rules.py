"""Prometheus configuration and alerting rules, checked by the real `promtool`: the rendered
config, the rules, and the rule unit tests (a firing and a quiet case for every alert)."""

from __future__ import annotations

import json
import re
import shutil
import string
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring.metrics import CATALOGUE

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "monitoring" / "prometheus"
DOCS = ROOT / "docs" / "monitoring.md"
REQUIRED = {
    "HighPredictTraffic", "HighFraudRate", "ConsumerLagHigh", "ScoringLatencyP95High", "DLQRateHigh",
    "FeatureDriftHigh", "ServeReplicaUnhealthy", "PipelineLatencyP95High",
}  # fmt: skip
PROMTOOL = shutil.which("promtool")
pytestmark = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (make setup)")


def _promtool(*args: str, cwd: Path | None = None) -> str:
    out = subprocess.run(
        [PROMTOOL or "promtool", *args], capture_output=True, text=True, cwd=cwd, check=False
    )
    assert out.returncode == 0, f"promtool {' '.join(args)}:\n{out.stdout}{out.stderr}"
    return out.stdout + out.stderr


def _alerts() -> list[dict[str, Any]]:
    doc = yaml.safe_load((PROM_DIR / "rules.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def render_prometheus_config(
    tmp_path: Path, alertmanager_port: int = 9093, prometheus_port: int = 9090
) -> Path:
    """The config as cluster/stack.py renders it (same placeholders), with a real SD file."""
    sd = tmp_path / "prom_metrics_service_discovery.json"
    sd.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": ["127.0.0.1:1"]}]))
    text = string.Template((PROM_DIR / "prometheus.yml").read_text()).substitute(
        ALERTMANAGER_PORT=alertmanager_port,
        PROMETHEUS_PORT=prometheus_port,
        RAY_SD_FILE=sd,
        RULES_DIR=PROM_DIR,
    )
    dest = tmp_path / "prometheus.yml"
    dest.write_text(text)
    return dest


def test_rendered_config_passes_promtool_check_config(tmp_path: Path) -> None:
    out = _promtool("check", "config", str(render_prometheus_config(tmp_path)))
    assert "SUCCESS" in out and "rules.yml" in out  # the rule file is found and checked too


def test_config_as_the_stack_renders_it_passes_promtool(tmp_path: Path) -> None:
    from cluster.stack import Prometheus
    from core.settings import Settings

    base = Settings()
    ray_temp = tmp_path / "ray"  # not there yet, as /tmp/ray on a fresh machine
    s = base.model_copy(update={
        "stack": base.stack.model_copy(update={"var_dir": tmp_path}),
        "ray": base.ray.model_copy(update={"temp_dir": str(ray_temp)}),
    })  # fmt: skip
    svc = Prometheus("prometheus", s.prometheus.port, s)
    svc.prepare()  # renders only: creates folders and writes the config, starts nothing
    out = _promtool("check", "config", str(svc.data_dir / "prometheus.yml"))
    assert "SUCCESS" in out and "rules.yml" in out
    # The service-discovery file's folder exists before Ray does, so that Prometheus can watch it.
    assert ray_temp.is_dir() and ray_temp.stat().st_mode & 0o777 == 0o777


def test_config_uses_only_the_placeholders_stack_py_renders() -> None:
    found = set(re.findall(r"\$\{(\w+)\}", (PROM_DIR / "prometheus.yml").read_text()))
    assert found <= {"ALERTMANAGER_PORT", "PROMETHEUS_PORT", "RAY_SD_FILE", "RULES_DIR"}


def test_rules_pass_promtool_check_rules() -> None:
    out = _promtool("check", "rules", str(PROM_DIR / "rules.yml"))
    assert "SUCCESS" in out


def test_rules_pass_promtool_test_rules() -> None:
    out = _promtool("test", "rules", "rules_test.yml", cwd=PROM_DIR)
    assert "SUCCESS" in out


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    doc = yaml.safe_load((PROM_DIR / "rules_test.yml").read_text())
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in doc["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names >= REQUIRED
    assert fires >= names, f"no firing case for {names - fires}"
    assert quiet >= names, f"no quiet case for {names - quiet}"
    assert f"holds {len(doc['tests'])} `promtool test rules` cases" in DOCS.read_text()


def test_alerts_are_routable_and_documented() -> None:
    docs = DOCS.read_text().lower()
    for alert in _alerts():
        name = alert["alert"]
        assert alert["labels"]["severity"] in {"warning", "critical"}, name
        assert re.fullmatch(r"\d+m", alert["for"]) and int(alert["for"][:-1]) >= 3, name
        assert {"summary", "description", "runbook_url"} <= alert["annotations"].keys(), name
        anchor = alert["annotations"]["runbook_url"].split("#")[1]
        assert f"### {name.lower()}" in docs and anchor == name.lower(), name


def test_rules_only_use_metrics_that_exist() -> None:
    ours = {s for m in CATALOGUE for s in m.series}
    text = (PROM_DIR / "rules.yml").read_text()
    for alert in _alerts():
        for metric in re.findall(r"\b((?:fraud_summary|fraudray|http|ray)_[a-z0-9_]+)\b", alert["expr"]):
            assert metric in ours or metric.startswith("ray_serve_"), metric
    assert "http_requests_total" not in text.split("HighFraudRate")[1].split("alert:")[0]  # on transactions
