"""HTTP API on Serve: POST /score validation and batching, GET /models, and a model
hot-swap (user_config → reconfigure) under load without a failed request."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from cluster import serving
from cluster.settings import Settings
from tests.helpers import API_KEY
from training.quick import train_quick_models

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEADERS = {"X-API-Key": API_KEY}


def tx(**over: Any) -> dict[str, Any]:
    base = {
        "transaction_id": "api-t1", "user_id": "u1", "merchant_id": "m1", "amount": 42.5,
        "currency": "EUR", "event_time": datetime.now(UTC).isoformat(), "country": "FR",
        "channel": "online",
    }  # fmt: skip
    return base | over


def test_score_one_and_many(serve_app: str) -> None:
    with httpx.Client(base_url=serve_app, timeout=30, headers=HEADERS) as http:
        one = http.post("/score", json=tx())
        assert one.status_code == 200, one.text
        [row] = one.json()
        assert row["transaction_id"] == "api-t1" and isinstance(row["is_fraud"], bool)
        many = http.post("/score", json=[tx(transaction_id=f"t{i}", amount=10.0 + i) for i in range(50)])
        assert many.status_code == 200 and [r["transaction_id"] for r in many.json()] == [
            f"t{i}" for i in range(50)
        ]
        huge = http.post("/score", json=[tx(transaction_id=f"t{i}") for i in range(1001)])
        assert huge.status_code == 413 and "at most 1000" in huge.json()["detail"]


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"amount": -1}, "amount"),
        ({"amount": "NaN"}, "amount"),
        ({"currency": "euro"}, "currency"),
        ({"country": "France"}, "country"),
        ({"event_time": "2026-01-01T00:00:00"}, "event_time"),  # no time zone
        ({"channel": "fax"}, "channel"),
        ({"unexpected": 1}, "unexpected"),
        ({"lat": 123.0}, "lat"),
    ],
)
def test_score_rejects_bad_input_with_422_naming_the_field(
    serve_app: str, patch: dict[str, Any], field: str
) -> None:
    r = httpx.post(f"{serve_app}/score", json=tx(**patch), headers=HEADERS, timeout=30)
    assert r.status_code == 422, r.text
    assert field in r.text


def test_auth_is_enforced_on_score_and_models(serve_app: str) -> None:
    assert httpx.post(f"{serve_app}/score", json=tx(), timeout=30).status_code == 401
    assert httpx.get(f"{serve_app}/models", timeout=30).status_code == 401


def test_models_lists_production_versions(serve_app: str) -> None:
    r = httpx.get(f"{serve_app}/models", headers=HEADERS, timeout=30)
    assert r.status_code == 200
    names = {m["name"] for m in r.json()}
    assert "if" in names and all(m["stage"] == "production" for m in r.json())


def test_hot_swap_under_load_drops_nothing(serve_app: str, local_stack: Settings) -> None:
    s = local_stack.model_copy(update={"serve": local_stack.serve.model_copy(update={"http_port": 18000})})
    before = httpx.post(f"{serve_app}/score", json=tx(), headers=HEADERS, timeout=30).json()[0][
        "model_version"
    ]
    stop = threading.Event()
    statuses: list[int] = []
    versions: set[str] = set()

    def hammer() -> None:
        with httpx.Client(base_url=serve_app, timeout=30, headers=HEADERS) as http:
            while not stop.is_set():
                r = http.post("/score", json=[tx(transaction_id=f"h{i}") for i in range(20)])
                statuses.append(r.status_code)
                if r.status_code == 200:
                    versions.add(r.json()[0]["model_version"])

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    new = train_quick_models(s, seed=99)["if"]  # promoted to production
    serving.deploy(s, api_keys=[API_KEY])  # same app, new user_config => reconfigure
    after = httpx.post(f"{serve_app}/score", json=tx(), headers=HEADERS, timeout=30).json()[0][
        "model_version"
    ]
    stop.set()
    for t in threads:
        t.join()
    assert after == new.version != before
    assert statuses and set(statuses) == {200}, f"failed requests during the swap: {set(statuses)}"
    assert {before, new.version} <= versions | {after}
