"""Every Grafana panel's PromQL (from the JSON files Grafana loads) runs on the live Prometheus
of the local stack.

Part 1 (always): no query may fail.
Part 2 (NEEDS DATA, opt-in): once a stream has run through the pipeline in the last 15 minutes
(Serve up, some /predict calls, drift wired), set FRAUDRAY_MONITORING_REQUIRE_DATA=1 and every
panel and every app metric must have data. Without the variable it is skipped, since an idle
stack has nothing to show.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from core.settings import Settings
from monitoring.dashboards import DASHBOARD_DIR, promql_for_prometheus
from monitoring.metrics import CATALOGUE, DLQ, RETRIES

pytestmark = [pytest.mark.integration]

REQUIRE_DATA = os.environ.get("FRAUDRAY_MONITORING_REQUIRE_DATA") == "1"
needs_data = pytest.mark.skipif(
    not REQUIRE_DATA,
    reason="needs a stream in the last 15 min: set FRAUDRAY_MONITORING_REQUIRE_DATA=1 after one",
)
WINDOW_S = 15 * 60
# Recorded only on failures (retries) or bad records (dead letters): a clean stream has none.
ONLY_ON_FAILURE = {RETRIES.name, DLQ.name}


def _panel_queries() -> list[tuple[str, str]]:
    out = []
    for path in sorted(Path(DASHBOARD_DIR).glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                out.append((f"{path.name} / {panel['title']}", promql_for_prometheus(target["expr"])))
    return out


def _get(settings: Settings, api: str, **params: Any) -> dict[str, Any]:
    r = httpx.get(f"http://127.0.0.1:{settings.prometheus.port}/api/v1/{api}", params=params, timeout=15)
    body: dict[str, Any] = r.json()
    return body


def test_every_panel_query_runs_on_the_live_prometheus(local_stack: Settings) -> None:
    queries = _panel_queries()
    assert len(queries) >= 35
    errors = []
    for title, promql in queries:
        body = _get(local_stack, "query", query=promql)
        if body["status"] != "success":
            errors.append(f"{title}: {body.get('errorType')}: {body.get('error')}\n  {promql}")
    assert not errors, "\n".join(errors)


@needs_data
def test_every_panel_has_data_after_a_stream(local_stack: Settings) -> None:
    end = time.time()
    empty = []
    for title, promql in _panel_queries():
        body = _get(local_stack, "query_range", query=promql, start=end - WINDOW_S, end=end, step=15)
        assert body["status"] == "success", body
        if not body["data"]["result"]:
            empty.append(f"{title}: {promql}")
    assert not empty, "panels without data in the last 15 min:\n" + "\n".join(empty)


@needs_data
def test_every_app_metric_has_series_after_a_stream(local_stack: Settings) -> None:
    empty = []
    for spec in CATALOGUE:
        if spec.name in ONLY_ON_FAILURE:
            continue
        body = _get(local_stack, "query", query=f"count(count_over_time({spec.series[0]}[{WINDOW_S}s]))")
        if not body["data"]["result"]:
            empty.append(spec.name)
    assert not empty, f"no series in the last 15 min: {empty}"
