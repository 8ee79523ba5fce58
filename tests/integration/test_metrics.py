"""Metrics flow from the consumer actors through Ray's exporter into the real Prometheus,
under the contract names (fraud_summary_* kept from the original pipeline, fraudray_*)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from cluster.settings import Settings
from ingest.consumer import ConsumerPool
from ingest.producer import TransactionProducer
from ingest.simulator import demo_transactions
from monitoring.metrics import describe
from tests.helpers import produce, with_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _query(settings: Settings, promql: str) -> list[dict[str, Any]]:
    r = httpx.get(
        f"http://127.0.0.1:{settings.prometheus.port}/api/v1/query", params={"query": promql}, timeout=10
    )
    r.raise_for_status()
    body = r.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def test_pipeline_metrics_reach_prometheus(
    serve_app: str, local_stack: Settings, new_topic: Callable[..., str], group_id: str
) -> None:
    s = with_topics(local_stack, transactions_topic=new_topic("metrics"), labels_topic=new_topic("labels", 1))
    produce(s, 3000)
    # A few wildly unusual ones (huge amounts at 3 a.m.) so that fraud counters move too.
    night = datetime.now(UTC).replace(hour=3, minute=0, second=0, microsecond=0)
    odd = [dict(r, transaction_id=f"odd-{uuid.uuid4().hex}", amount=250_000.0, event_time=night)
           for r in demo_transactions(30, seed=uuid.uuid4().int % 2**31)]  # fmt: skip
    producer = TransactionProducer(s)
    producer.send_many(odd)
    producer.flush()
    ConsumerPool(s, 1, group_id).drain(timeout=300)
    wanted = [m["name"] for m in describe() if m["name"] not in {"fraudray_batch_retries_total",
                                                                 "fraudray_dlq_records_total"}]  # fmt: skip
    deadline = time.monotonic() + 120  # Ray flushes every ~10 s, Prometheus scrapes every 5 s
    missing = wanted
    while missing and time.monotonic() < deadline:
        missing = [
            name for name in wanted
            if not _query(s, f"{name}_count" if name.endswith(("_seconds", "_size")) else name)
        ]  # fmt: skip
        time.sleep(3)
    if missing:
        targets = httpx.get(f"http://127.0.0.1:{s.prometheus.port}/api/v1/targets", timeout=10).json()
        health = [(t["scrapeUrl"], t["health"], t.get("lastError")) for t in targets["data"]["activeTargets"]]
        pytest.fail(f"not in Prometheus after 120 s: {missing}; targets: {health}")
    stages = {r["metric"]["stage"] for r in _query(s, "fraudray_stage_seconds_count")}
    assert {"decode", "features", "score", "sink_pg", "commit"} <= stages
    total = sum(float(r["value"][1]) for r in _query(s, "fraud_summary_total_transactions_total"))
    assert total >= 3030
    assert sum(float(r["value"][1]) for r in _query(s, "fraud_summary_is_fraud_total")) >= 1
