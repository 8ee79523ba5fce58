"""The naming contract end to end: PipelineMetrics records in a Ray actor, Ray's exporter
serves it, a real Prometheus with monitoring/prometheus/prometheus.yml scrapes it, and
Prometheus holds every metric under its contract name; the rules load and evaluate, and every
pipeline/model panel of the dashboards returns data.

A private Ray cluster (own temp dir, so the shared service-discovery file in /tmp/ray is left
alone) and a private Prometheus on free ports; both stopped at the end of the module."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from monitoring.dashboards import DASHBOARDS, promql_for_prometheus
from monitoring.metrics import CATALOGUE, STAGES, LearnMetrics, PipelineMetrics
from tests.integration.test_monitoring_alertmanager import free_port, render_prometheus_config, start, stop

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROM_BIN = shutil.which("prometheus")


class _Recorder:
    """Runs inside a Ray actor: one 'batch' of everything PipelineMetrics records per call."""

    def __init__(self) -> None:
        self.m = PipelineMetrics(seed=0)
        self.learn = LearnMetrics()

    def record(self) -> None:
        m = self.m
        m.observe_batch(
            stage_seconds=dict.fromkeys(STAGES, 0.02), size=100, scored=98, fraud=3,
            dead_letters=["DecodeError", "ValidationError"], latencies_s=np.full(98, 0.2),
            event_latencies_s=np.r_[np.full(49, 0.3), np.full(49, np.nan)],  # half of them live
        )  # fmt: skip
        self.learn.observe("candidate", 0.61, 0.64)  # one round of the learning loop
        m.retry()
        m.set_lag({0: 120, 1: 0})
        m.set_model_version("isolation_forest", "7")
        m.observe_scores("isolation_forest", np.linspace(0.01, 1.0, 50))
        m.observe_drift("log_amount", 0.3)
        m.observe_http("/predict", 200)


@dataclass
class Stack:
    url: str
    record: Callable[[], None]

    def query(self, promql: str) -> list[dict[str, Any]]:
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=10)
        body = r.json()
        assert body["status"] == "success", f"{promql}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def until(self, check: Callable[[], list[str]], timeout: float = 60) -> list[str]:
        """Record a batch a second until ``check`` reports nothing missing (or time is up)."""
        deadline = time.monotonic() + timeout
        missing = check()
        while missing and time.monotonic() < deadline:
            self.record()
            time.sleep(1)
            missing = check()
        return missing


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    import ray

    if PROM_BIN is None:
        pytest.skip("prometheus is not installed (make setup)")
    assert not ray.is_initialized(), "another test left Ray running"
    temp = Path(tempfile.mkdtemp(prefix="frmon", dir="/tmp"))  # short: Ray's socket paths
    export_port = free_port()
    ray.init(
        address="local", num_cpus=1, include_dashboard=False, _temp_dir=str(temp),
        _metrics_export_port=export_port, _system_config={"metrics_report_interval_ms": 1000},
    )  # fmt: skip
    proc = None
    try:
        recorder: Any = ray.remote(num_cpus=0)(_Recorder)
        actor = recorder.remote()

        def record() -> None:
            ray.get(actor.record.remote())

        record()
        sd = temp / "prom_metrics_service_discovery.json"  # the format Ray's head writes
        sd.write_text(json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{export_port}"]}]))
        port = free_port()
        config = render_prometheus_config(
            temp / "prometheus.yml", prometheus_port=port, alertmanager_port=free_port(), sd_file=sd,
            rules_dir=ROOT / "monitoring" / "prometheus",
        )  # fmt: skip
        proc = start(
            [PROM_BIN, f"--config.file={config}", f"--storage.tsdb.path={temp / 'prom-data'}",
             f"--web.listen-address=127.0.0.1:{port}"],
            f"http://127.0.0.1:{port}/-/ready", temp / "prometheus.log",
        )  # fmt: skip
        yield Stack(f"http://127.0.0.1:{port}", record)
    finally:
        if proc is not None:
            stop(proc)
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)


def test_every_metric_is_stored_under_its_contract_name(stack: Stack) -> None:
    wanted = [s for m in CATALOGUE for s in m.series]
    missing = stack.until(lambda: [s for s in wanted if not stack.query(f'count({{__name__="{s}"}})')])
    assert not missing, f"not in Prometheus: {missing}"
    # Renamed, not copied: Ray's prefixed names of ours are gone; Ray's own metrics keep theirs.
    assert not stack.query('count({__name__=~"ray_(fraudray|fraud_summary|http_requests)_.*"})')
    assert stack.query('count({__name__=~"ray_.+", job="ray"})')
    stages = {r["metric"]["stage"] for r in stack.query("fraudray_stage_seconds_count")}
    assert stages == set(STAGES)
    (http,) = stack.query("http_requests_total")
    assert (http["metric"]["handler"], http["metric"]["status"]) == ("/predict", "2xx")
    (info,) = stack.query("fraudray_model_info == 1")
    assert (info["metric"]["model"], info["metric"]["version"]) == ("isolation_forest", "7")
    lag = {r["metric"]["partition"]: float(r["value"][1]) for r in stack.query("fraudray_consumer_lag")}
    assert lag == {"0": 120.0, "1": 0.0}


def test_rules_load_and_evaluate_without_errors(stack: Stack) -> None:
    def unhealthy() -> list[str]:
        groups = httpx.get(f"{stack.url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [r for g in groups for r in g["rules"]]
        assert len(rules) >= 9
        return [f"{r['name']}: {r['health']} {r.get('lastError', '')}" for r in rules if r["health"] != "ok"]

    assert not stack.until(unhealthy, 30)


def _our_panels() -> list[tuple[str, str]]:
    """(title, PromQL) of every panel query built on fraudray's own metrics only."""
    ours = re.compile(r"\b(fraudray_|fraud_summary_|http_requests_total)")
    foreign = re.compile(r"\b(ray_\w+|up)\b")
    out = []
    for _uid, _title, panels in DASHBOARDS.values():
        for p in panels:
            for expr, _legend in p.exprs:
                if ours.search(expr) and not foreign.search(expr):
                    out.append((p.title, promql_for_prometheus(expr)))
    return out


def test_every_pipeline_and_model_panel_returns_data(stack: Stack) -> None:
    panels = _our_panels()
    assert len(panels) >= 20
    missing = stack.until(lambda: [f"{t}: {q}" for t, q in panels if not stack.query(q)])
    assert not missing, "panels without data:\n" + "\n".join(missing)
