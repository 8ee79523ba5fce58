"""Metrics flow from the consumer actors through Ray's exporter into the real Prometheus,
under the contract names (fraud_summary_* kept from the original pipeline, fraudray_*); a
fraud wave fires HighFraudRate through Prometheus and Alertmanager to a webhook."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cluster.drift import production_reference
from core.settings import Settings
from ingest.consumer import ConsumerPool, group_lag
from ingest.producer import TransactionProducer
from ingest.simulator import DEMO_EVENTS_PER_S, SimConfig, Simulator, demo_transactions, retag
from monitoring.metrics import describe
from tests.helpers import fresh_transactions, produce, stream_tag, with_topics
from tests.integration.test_monitoring_alertmanager import (  # noqa: F401 - fixtures
    PROM_BIN,
    ROOT,
    Webhook,
    alertmanager,
    free_port,
    render_prometheus_config,
    start,
    stop,
    webhook,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _query(prometheus_url: str, promql: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{prometheus_url}/api/v1/query", params={"query": promql}, timeout=10)
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def _session_prometheus(
    tmp_path: Path, alertmanager_url: str, rules_dir: Path, *args: str
) -> tuple[str, Any]:
    """A private Prometheus with the repo's configuration, reading this module's Ray session's
    service-discovery file: ``/tmp/ray/prom_metrics_service_discovery.json`` (what the stack's
    Prometheus reads) follows the newest Ray session on the box, which another cluster (make
    test's isolated modules, a benchmark) may have started. Returns its URL and process."""
    if PROM_BIN is None:
        pytest.skip("prometheus is not installed (make setup)")
    port, am_port = free_port(), int(alertmanager_url.rsplit(":", 1)[1])
    config = render_prometheus_config(
        tmp_path / "prometheus.yml", prometheus_port=port, alertmanager_port=am_port,
        sd_file=_session_dir() / "prom_metrics_service_discovery.json", rules_dir=rules_dir,
    )  # fmt: skip
    process = start(
        [PROM_BIN, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'prom-data'}",
         f"--web.listen-address=127.0.0.1:{port}", *args],
        f"http://127.0.0.1:{port}/-/ready", tmp_path / "prometheus.log",
    )  # fmt: skip
    return f"http://127.0.0.1:{port}", process


@pytest.fixture
def session_prometheus(serve_app: str, alertmanager: str, tmp_path: Path) -> Iterator[str]:  # noqa: F811
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    url, process = _session_prometheus(tmp_path, alertmanager, rules_dir)
    try:
        yield url
    finally:
        stop(process)


def test_pipeline_metrics_reach_prometheus(
    session_prometheus: str, local_stack: Settings, new_topic: Callable[..., str], group_id: str
) -> None:
    prom = session_prometheus
    s = with_topics(local_stack, transactions_topic=new_topic("metrics"), labels_topic=new_topic("labels", 1))
    produce(s, 3000)
    # A few wildly unusual ones (huge amounts at 3 a.m.) so that fraud counters move too.
    night = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0)
    odd = [dict(r, transaction_id=f"odd-{uuid.uuid4().hex}", amount=250_000.0, event_time=night)
           for r in fresh_transactions(30)]  # fmt: skip
    # And live ones (event time = now): only those are observed as event->decision latency.
    live_seed = uuid.uuid4().int % 2**31
    now = datetime.now(UTC)
    live = list(demo_transactions(100, seed=live_seed, users=50, start=now, tag=stream_tag(live_seed)))
    producer = TransactionProducer(s)
    producer.send_many(odd + live)
    producer.flush()
    # With the registry's drift reference, as `fraudray consume` and `make run` start it. The
    # pool stays up while Prometheus is asked: gauges (lag, drift) set by an actor that exits
    # before Ray's next export (~10 s) would never leave it.
    pool = ConsumerPool(s, 1, group_id, drift_reference=production_reference)
    wanted = [m["name"] for m in describe() + describe("drift")
              if m["name"] not in {"fraudray_batch_retries_total", "fraudray_dlq_records_total"}]  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while sum(group_lag(s, group_id).values()) > 0:
            assert time.monotonic() < deadline, "the stream was not consumed in 300 s"
            time.sleep(0.5)
        deadline = time.monotonic() + 120  # Ray flushes every ~10 s, Prometheus scrapes every 5 s
        missing, total = wanted, 0.0
        # Every metric present, and the counters past the last batch: a scrape can land between
        # two of Ray's exports and see only part of the stream.
        while (missing or total < 3130) and time.monotonic() < deadline:
            missing = [
                name for name in wanted
                if not _query(prom, f"{name}_count" if name.endswith(("_seconds", "_size")) else name)
            ]  # fmt: skip
            total = sum(float(r["value"][1]) for r in _query(prom, "fraud_summary_total_transactions_total"))
            time.sleep(3)
    finally:
        pool.stop()
    if missing:
        targets = httpx.get(f"{prom}/api/v1/targets", timeout=10).json()
        health = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets["data"]["activeTargets"]]
        pytest.fail(f"not in Prometheus after 120 s: {missing}; targets: {health}")
    stages = {r["metric"]["stage"] for r in _query(prom, "fraudray_stage_seconds_count")}
    assert {"decode", "features", "score", "sink_pg", "commit"} <= stages
    assert total >= 3130
    assert sum(float(r["value"][1]) for r in _query(prom, "fraud_summary_is_fraud_total")) >= 1


# -- HighFraudRate end to end ---------------------------------------------------------------
# The simulator's fraud rate turned up → the consumer actors decide more fraud → Ray's exporter
# → a private Prometheus (free port) evaluating the repo's rules on this module's Ray session's
# service-discovery file (`/tmp/ray/prom_metrics_service_discovery.json` is a symlink to the
# newest session's, which another cluster on the box may have taken over) → the real
# Alertmanager → the webhook receiver. Only the rule's `for:` shrinks (5 min would make a slow
# test); its expression and threshold are the repo's.

STREAM_S = 45.0
RATE = 150.0  # tx/s offered: the rule also wants more than 1 tx/s


def _session_dir() -> Path:
    import ray._private.worker

    node = ray._private.worker._global_node
    assert node is not None, "the serve_app fixture starts Ray"
    return Path(node.get_session_dir_path())


def _stream(settings: Settings, fraud_rate: float, stop_at: float, done: threading.Event) -> None:
    """Paced simulated traffic with ``fraud_rate`` until ``stop_at`` (monotonic) or ``done``."""
    users = 2000
    config = SimConfig(
        seed=uuid.uuid4().int % 2**31, users=users, fraud_rate=fraud_rate,
        tx_per_user_day=SimConfig.tx_per_user_day_for(DEMO_EVENTS_PER_S, users, fraud_rate),
        start=datetime.now(UTC) - timedelta(minutes=10),
    )  # fmt: skip
    producer = TransactionProducer(settings)
    t0 = time.monotonic()
    for sent, record in enumerate(retag(Simulator(config).records(), stream_tag(config.seed))):
        if time.monotonic() > stop_at or done.is_set():
            break
        producer.send_many([record])
        ahead = sent / RATE - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
    producer.flush()


def test_a_fraud_wave_fires_high_fraud_rate_at_the_webhook(
    serve_app: str,
    local_stack: Settings,
    new_topic: Callable[..., str],
    group_id: str,
    alertmanager: str,  # noqa: F811
    webhook: Webhook,  # noqa: F811
    tmp_path: Path,
) -> None:
    if PROM_BIN is None:
        pytest.skip("prometheus is not installed (make setup)")
    rules = yaml.safe_load((ROOT / "monitoring" / "prometheus" / "rules.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == "HighFraudRate":
                rule["for"] = "0s"
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "rules.yml").write_text(yaml.safe_dump(rules))
    _url, prometheus = _session_prometheus(tmp_path, alertmanager, rules_dir, "--rules.alert.resend-delay=1s")
    s = with_topics(local_stack, transactions_topic=new_topic("wave", 3), labels_topic=new_topic("labels", 1))
    pool = ConsumerPool(s, 1, group_id)
    # 40 % of the traffic is fraud (the default is 0.75 %): the models flag far more than 5 %.
    done = threading.Event()  # the alert came: the stream has served its purpose
    producer = threading.Thread(target=_stream, args=(s, 0.4, time.monotonic() + STREAM_S, done), daemon=True)
    try:
        producer.start()
        alert = webhook.wait_for("HighFraudRate", STREAM_S + 90)
        assert alert["status"] == "firing"
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert "decided as fraud" in alert["annotations"]["summary"]
        assert alert["generatorURL"].startswith("http")  # sent by Prometheus, not by the test
    finally:
        done.set()
        producer.join(STREAM_S + 30)
        pool.stop()
        stop(prometheus)
