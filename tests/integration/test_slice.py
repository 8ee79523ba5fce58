"""The thin slice end to end on real Kafka, Redis, PostgreSQL, Ray and Serve:
produced N ⇒ exactly N decisions; a redelivered batch (restart before commit) adds none;
/predict answers over HTTP with auth, 404 and 422."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from cluster.settings import ConsumerSettings, Settings
from features.online import FEATURE_NAMES
from ingest.consumer import ConsumerPool
from tests.helpers import API_KEY, count_rows, produce, with_topics

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def slice_settings(local_stack: Settings) -> Settings:
    return local_stack.model_copy(update={"consumer": ConsumerSettings(batch_size=200, poll_timeout_s=0.2)})


def _with_topic(
    settings: Settings, new_topic: Callable[..., str], prefix: str, partitions: int = 3
) -> Settings:
    """Fresh transactions and labels topics (the consumer group reads both)."""
    return with_topics(
        settings,
        transactions_topic=new_topic(prefix, partitions=partitions),
        labels_topic=new_topic("labels", 1),
    )


def topic_suffix(settings: Settings) -> str:
    return settings.kafka.transactions_topic.rsplit("-", 1)[-1]


def _produce(settings: Settings, n: int) -> list[dict[str, Any]]:
    return produce(settings, n)


def _decisions_for(settings: Settings, tx_ids: list[str]) -> int:
    return count_rows(settings.postgres.dsn.get_secret_value(), "decisions", tx_ids)


def test_n_produced_means_n_decisions(
    serve_app: str, slice_settings: Settings, new_topic: Callable[..., str], group_id: str
) -> None:
    s = _with_topic(slice_settings, new_topic, "slice", partitions=6)
    records = _produce(s, 3000)
    t0 = time.monotonic()
    stats = ConsumerPool(s, 1, group_id).drain(timeout=300)
    elapsed = time.monotonic() - t0
    assert sum(x["scored"] for x in stats) == 3000
    assert sum(x["dead_lettered"] for x in stats) == 0
    assert _decisions_for(s, [r["transaction_id"] for r in records]) == 3000
    print(f"slice: 3000 tx in {elapsed:.1f} s incl. group join")


def test_redelivery_before_commit_adds_no_rows(
    serve_app: str, slice_settings: Settings, new_topic: Callable[..., str], group_id: str
) -> None:
    s = _with_topic(slice_settings, new_topic, "redeliver")
    records = _produce(s, 1000)
    ids = [r["transaction_id"] for r in records]

    # First consumer writes every sink but dies before committing any offset.
    crashed = ConsumerPool(s, 1, group_id, stop_after_idle_s=2.0, commit=False)
    first = crashed.wait(timeout=300)
    crashed.stop()
    assert sum(x["scored"] for x in first) == 1000
    assert sum(x["commits"] for x in first) == 0
    assert _decisions_for(s, ids) == 1000

    # Its replacement gets the whole batch again; the idempotent sinks add nothing.
    second = ConsumerPool(s, 1, group_id).drain(timeout=300)
    assert sum(x["polled"] for x in second) == 1000
    assert sum(x["new_decisions"] for x in second) == 0
    assert _decisions_for(s, ids) == 1000


def test_predict_over_http(serve_app: str, slice_settings: Settings, new_topic: Callable[..., str]) -> None:
    s = _with_topic(slice_settings, new_topic, "predict")
    records = _produce(s, 200)
    ConsumerPool(s, 1, f"predict-{topic_suffix(s)}").drain(timeout=300)
    user = records[-1]["user_id"]
    with httpx.Client(base_url=serve_app, timeout=30) as http:
        ok = http.get("/predict", params={"user_id": user}, headers={"X-API-Key": API_KEY})
        assert ok.status_code == 200, ok.text
        body = ok.json()
        assert body["user_id"] == user and 0.0 <= body["anomaly_score"] <= 1.0
        assert isinstance(body["is_fraud"], bool) and body["model_version"]
        assert list(body["features"]) == list(FEATURE_NAMES)

        assert http.get("/predict", params={"user_id": user}).status_code == 401
        assert (
            http.get("/predict", params={"user_id": user}, headers={"X-API-Key": "wrong"}).status_code == 401
        )
        missing = http.get("/predict", params={"user_id": "nobody-" + user}, headers={"X-API-Key": API_KEY})
        assert missing.status_code == 404 and missing.json()["error"] == "UnknownUser"
        bad = http.get("/predict", headers={"X-API-Key": API_KEY})
        assert bad.status_code == 422 and "user_id" in bad.text
        assert http.get("/health").json()["status"] == "ok"
