"""The thin slice end to end on real Kafka, Redis, PostgreSQL, Ray and Serve:
produced N ⇒ exactly N decisions; a redelivered batch (restart before commit) adds none;
/predict answers over HTTP with auth, 404 and 422."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import psycopg2
import pytest
import redis

from core.settings import ConsumerSettings, Settings
from features.online import FEATURE_NAMES, OnlineStore
from features.online.decisions import decision_key
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


def _decision_row(settings: Settings, transaction_id: str) -> tuple[float, str, dict[str, float]]:
    with psycopg2.connect(settings.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT ensemble_score, model_version, scores FROM decisions WHERE transaction_id = %s",
            (transaction_id,),
        )
        row = cur.fetchone()
    conn.close()
    assert row is not None
    return float(row[0]), str(row[1]), dict(row[2])


def test_predict_returns_the_streams_decision_when_the_models_are_the_same(
    serve_app: str, slice_settings: Settings, new_topic: Callable[..., str]
) -> None:
    """/predict for a user the stream has scored answers with the stream's decision of the
    user's latest transaction (the row in PostgreSQL) instead of scoring it again; it scores
    again when that decision is not its latest transaction's or came from other models."""
    s = _with_topic(slice_settings, new_topic, "decided")
    records = _produce(s, 300)
    ConsumerPool(s, 1, f"decided-{topic_suffix(s)}").drain(timeout=300)
    latest = max(records, key=lambda r: (r["event_time"], r["transaction_id"]))
    user = latest["user_id"]
    score, version, model_scores = _decision_row(s, latest["transaction_id"])

    def predict(http: httpx.Client) -> dict[str, Any]:
        answer = http.get("/predict", params={"user_id": user}, headers={"X-API-Key": API_KEY})
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    with httpx.Client(base_url=serve_app, timeout=30) as http:
        # every answer is the stream's, also a replica's first or one after its knowledge of
        # the versions served aged out (it scores to learn them, then answers as the stream)
        bodies = [predict(http) for _ in range(3)]
        assert [b["source"] for b in bodies] == ["stream"] * 3
        stream = bodies[-1]
        assert stream["anomaly_score"] == pytest.approx(score, abs=1e-9)
        assert stream["model_version"] == version
        assert stream["model_scores"] == pytest.approx(model_scores, abs=1e-9)

        # a decision made by other models is not served
        store = OnlineStore(s.redis.url.get_secret_value())
        key = decision_key(store.namespace, user)
        redis_client = redis.Redis.from_url(s.redis.url.get_secret_value())
        stored = redis_client.get(key)
        assert isinstance(stored, bytes)
        txid, _, body = stored.decode().partition("\x1e")
        old = json.loads(body) | {"model_versions": {"if": "retired"}}
        redis_client.set(key, f"{txid}\x1e{json.dumps(old)}")
        rescored = predict(http)
        assert rescored["source"] == "scored" and rescored["features"] == stream["features"]
        # the same features through the same models: the stream's answer
        assert rescored["anomaly_score"] == pytest.approx(score, rel=1e-5, abs=1e-6)

        # nor one that is not the latest transaction's: a newer one reached the store alone
        newer = latest | {"transaction_id": f"{latest['transaction_id']}-n",
                          "event_time": latest["event_time"] + timedelta(seconds=1)}  # fmt: skip
        store.update_and_compute([newer])
        again = predict(http)
        assert again["source"] == "scored" and again["features"] != stream["features"]
