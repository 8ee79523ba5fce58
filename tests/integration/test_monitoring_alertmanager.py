"""Alerts reach a webhook: a real `prometheus-alertmanager` (and, end to end, a real
Prometheus firing a rule) on free ports, configured by the rendered templates, notifying an
HTTP server inside the test. Each test gets its own processes, stopped by their pid."""

from __future__ import annotations

import json
import queue
import shutil
import string
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from core.ports import free_port
from monitoring.alertmanager_config import TEMPLATE, render_alertmanager_config

pytestmark = [pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
AM_BIN = shutil.which("prometheus-alertmanager")
PROM_BIN = shutil.which("prometheus")


def wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"{url} not ready after {timeout} s:\n{log.read_text()[-3000:]}")


def start(argv: list[str], ready_url: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_ready(ready_url, proc, log)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def render_prometheus_config(dest: Path, *, prometheus_port: int, alertmanager_port: int, sd_file: Path,
                             rules_dir: Path) -> Path:  # fmt: skip
    """monitoring/prometheus/prometheus.yml rendered with the placeholders cluster/stack.py fills."""
    text = string.Template((ROOT / "monitoring" / "prometheus" / "prometheus.yml").read_text()).substitute(
        ALERTMANAGER_PORT=alertmanager_port, PROMETHEUS_PORT=prometheus_port, RAY_SD_FILE=sd_file,
        RULES_DIR=rules_dir,
    )  # fmt: skip
    dest.write_text(text)
    return dest


class Webhook:
    """An HTTP server collecting Alertmanager's webhook payloads."""

    def __init__(self) -> None:
        self.payloads: queue.Queue[dict[str, Any]] = queue.Queue()
        received = self.payloads

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.put(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def alerts(self, seconds: float) -> list[dict[str, Any]]:
        """Every (payload receiver, alert) delivered within ``seconds``."""
        out, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                payload = self.payloads.get(timeout=left)
            except queue.Empty:
                break
            out += [{"receiver": payload["receiver"], **a} for a in payload["alerts"]]
        return out

    def wait_for(self, alertname: str, seconds: float = 30) -> dict[str, Any]:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for alert in self.alerts(min(1.0, deadline - time.monotonic())):
                if alert["labels"].get("alertname") == alertname:
                    return alert
        raise AssertionError(f"the webhook got no {alertname} within {seconds} s")


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.server.shutdown()


@pytest.fixture
def alertmanager(webhook: Webhook, tmp_path: Path) -> Iterator[str]:
    """A real Alertmanager with the repo's template, rendered for the test webhook. Only the
    waiting times shrink (30 s / 10 s group_wait would make a slow test); routing, grouping and
    inhibition are the template's."""
    if AM_BIN is None:
        pytest.skip("prometheus-alertmanager is not installed (make setup)")
    doc = yaml.safe_load(render_alertmanager_config(TEMPLATE.read_text(), {
        "FRAUDRAY_ALERTMANAGER_WEBHOOK_URL": webhook.url}))  # fmt: skip
    for route in (doc["route"], *doc["route"]["routes"]):
        route["group_wait"] = "1s"
    config = tmp_path / "alertmanager.yml"
    config.write_text(yaml.safe_dump(doc))
    port = free_port()
    proc = start(
        [AM_BIN, f"--config.file={config}", f"--storage.path={tmp_path / 'am-data'}",
         f"--web.listen-address=127.0.0.1:{port}", "--cluster.listen-address="],
        f"http://127.0.0.1:{port}/-/ready", tmp_path / "alertmanager.log",
    )  # fmt: skip
    yield f"http://127.0.0.1:{port}"
    stop(proc)


def post_alerts(am_url: str, *alerts: dict[str, str]) -> None:
    now = datetime.now(UTC)
    body = [
        {
            "labels": labels,
            "annotations": {"summary": f"test {labels['alertname']}"},
            "startsAt": now.isoformat(),
            "endsAt": (now + timedelta(minutes=5)).isoformat(),
        }
        for labels in alerts
    ]
    httpx.post(f"{am_url}/api/v2/alerts", json=body, timeout=5).raise_for_status()


def test_a_critical_alert_reaches_the_webhook(alertmanager: str, webhook: Webhook) -> None:
    post_alerts(alertmanager, {"alertname": "HighFraudRate", "severity": "critical"})
    alert = webhook.wait_for("HighFraudRate", 15)
    assert alert["receiver"] == "critical" and alert["status"] == "firing"
    assert alert["annotations"]["summary"] == "test HighFraudRate"


def test_warnings_route_to_the_warning_receiver(alertmanager: str, webhook: Webhook) -> None:
    post_alerts(alertmanager, {"alertname": "DLQRateHigh", "severity": "warning"})
    assert webhook.wait_for("DLQRateHigh", 15)["receiver"] == "warning"


def test_inhibition_keeps_only_the_cause(alertmanager: str, webhook: Webhook) -> None:
    # Sources first, so they are in Alertmanager's store when the targets' groups flush.
    post_alerts(
        alertmanager,
        {"alertname": "ConsumerLagHigh", "severity": "critical"},
        {"alertname": "ServeReplicaUnhealthy", "severity": "critical", "deployment": "Scorer"},
    )
    time.sleep(0.5)
    post_alerts(
        alertmanager,
        {"alertname": "ConsumerLagHigh", "severity": "warning"},
        {"alertname": "ScoringLatencyP95High", "severity": "warning"},
    )
    got = {(a["labels"]["alertname"], a["labels"]["severity"]) for a in webhook.alerts(4)}
    assert ("ServeReplicaUnhealthy", "critical") in got
    assert ("ConsumerLagHigh", "warning") not in got  # its critical twin is firing
    assert ("ScoringLatencyP95High", "warning") not in got  # explained by the unhealthy replicas
    state = {
        a["labels"]["alertname"] + "/" + a["labels"]["severity"]: a["status"]
        for a in httpx.get(f"{alertmanager}/api/v2/alerts", timeout=5).json()
    }
    assert state["ConsumerLagHigh/warning"]["state"] == "suppressed"
    assert state["ConsumerLagHigh/warning"]["inhibitedBy"]
    assert state["ScoringLatencyP95High/warning"]["state"] == "suppressed"


@pytest.mark.slow
def test_prometheus_fires_a_rule_through_to_the_webhook(
    alertmanager: str, webhook: Webhook, tmp_path: Path
) -> None:
    """The rendered prometheus.yml's alerting section: Prometheus evaluates the rule file at
    ${RULES_DIR}/rules.yml (here the real rules plus one that always fires) and notifies the
    Alertmanager at ${ALERTMANAGER_PORT}, which calls the webhook."""
    if PROM_BIN is None:
        pytest.skip("prometheus is not installed (make setup)")
    rules = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "rules.yml").read_text())
    rules["groups"].append({"name": "test", "rules": [{
        "alert": "MonitoringPathTest", "expr": "vector(1)", "labels": {"severity": "critical"},
        "annotations": {"summary": "always firing"}}]})  # fmt: skip
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "rules.yml").write_text(yaml.safe_dump(rules))
    sd = tmp_path / "sd.json"
    sd.write_text("[]")
    port = free_port()
    am_port = int(alertmanager.rsplit(":", 1)[1])
    config = render_prometheus_config(
        tmp_path / "prometheus.yml", prometheus_port=port, alertmanager_port=am_port, sd_file=sd,
        rules_dir=rules_dir,
    )  # fmt: skip
    proc = start(
        [PROM_BIN, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'prom-data'}",
         f"--web.listen-address=127.0.0.1:{port}",
         # The first evaluation can beat the Alertmanager's discovery; resend soon, not after 1 min.
         "--rules.alert.resend-delay=1s"],
        f"http://127.0.0.1:{port}/-/ready", tmp_path / "prometheus.log",
    )  # fmt: skip
    try:
        alert = webhook.wait_for("MonitoringPathTest", 40)
        assert alert["receiver"] == "critical"
        assert alert["generatorURL"].startswith("http")  # sent by Prometheus, not by the test
    finally:
        stop(proc)
