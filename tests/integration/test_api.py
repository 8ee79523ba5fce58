"""HTTP API on Serve (the shared app of tests/conftest.py, `serve run` of the config file): /score
validation, auth on every protected route, /models, /explain of a stored transaction, and a
schemathesis run over the OpenAPI schema (>= 1,000 generated requests, no server error,
every response as documented, 401 without the key)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg2
import pytest

from core.settings import Settings
from tests.helpers import API_KEY
from tests.integration.serve_support import fuzz_api

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HEADERS = {"X-API-Key": API_KEY}
PROTECTED = (
    ("GET", "/predict?user_id=u1"),
    ("POST", "/score"),
    ("GET", "/models"),
    ("GET", "/explain?user_id=u1"),
)


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
        assert set(row["model_scores"]) == {"if", "xgb", "ae"}
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
        ({"user_id": "u\x1fx"}, "user_id"),  # a separator the online store reserves
    ],
)
def test_score_rejects_bad_input_with_422_naming_the_field(
    serve_app: str, patch: dict[str, Any], field: str
) -> None:
    r = httpx.post(f"{serve_app}/score", json=tx(**patch), headers=HEADERS, timeout=30)
    assert r.status_code == 422, r.text
    assert field in r.text


@pytest.mark.parametrize(("method", "path"), PROTECTED)
@pytest.mark.parametrize("key", [None, "wrong-key"])
def test_auth_is_enforced_on_every_protected_route(
    serve_app: str, method: str, path: str, key: str | None
) -> None:
    headers = {} if key is None else {"X-API-Key": key}
    r = httpx.request(method, serve_app + path, json=tx(), headers=headers, timeout=30)
    assert r.status_code == 401, r.text
    assert httpx.get(f"{serve_app}/health", timeout=30).status_code == 200  # health stays open


def test_models_lists_production_versions(serve_app: str) -> None:
    r = httpx.get(f"{serve_app}/models", headers=HEADERS, timeout=30)
    assert r.status_code == 200
    names = {m["name"] for m in r.json()}
    assert {"if", "xgb", "ae", "ensemble"} <= names and all(m["stage"] == "production" for m in r.json())


@pytest.fixture
def stored_transaction(local_stack: Settings) -> Iterator[dict[str, Any]]:
    """A transaction row in PostgreSQL, as the consumer's sink writes it (removed afterwards)."""
    row = tx(transaction_id=f"api-explain-{uuid.uuid4().hex[:10]}", user_id=f"api-u-{uuid.uuid4().hex[:6]}")
    dsn = local_stack.postgres.dsn.get_secret_value()
    cols = (
        "transaction_id",
        "user_id",
        "merchant_id",
        "amount",
        "currency",
        "event_time",
        "country",
        "channel",
    )
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            f"INSERT INTO transactions ({', '.join(cols)}) VALUES ({', '.join(['%s'] * len(cols))})",
            [row[c] for c in cols],
        )
    conn.close()
    yield row
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM transactions WHERE transaction_id = %s", (row["transaction_id"],))
    conn.close()


def test_explain_a_stored_transaction(serve_app: str, stored_transaction: dict[str, Any]) -> None:
    r = httpx.get(
        f"{serve_app}/explain",
        params={"transaction_id": stored_transaction["transaction_id"]},
        headers=HEADERS,
        timeout=30,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["transaction_id"] == stored_transaction["transaction_id"]
    assert body["user_id"] == stored_transaction["user_id"]
    assert body["rationale_source"] in {"llm", "template"} and body["rationale"]
    assert set(body["attributions"]) == {"if", "xgb", "ae"} and body["top_factors"]
    both = httpx.get(
        f"{serve_app}/explain", params={"transaction_id": "a", "user_id": "b"}, headers=HEADERS, timeout=30
    )
    assert both.status_code == 422 and "exactly one" in both.text


def test_schemathesis_fuzzing_finds_no_server_error(serve_app: str) -> None:
    """Positive and negative cases generated from /openapi.json for every operation, with the
    key (checked against the documented statuses and schemas), then with a wrong key (401)."""
    calls, unauthorised = fuzz_api(serve_app, API_KEY)
    print(f"schemathesis calls per operation: {calls}; 401s with a wrong key: {unauthorised}")
    assert sum(calls.values()) >= 1000, calls
    assert len(unauthorised) == len(PROTECTED) and all(unauthorised.values()), unauthorised
