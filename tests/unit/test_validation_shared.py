"""One validator for the stream and the API: /score refuses exactly what the consumer would
dead-letter, with the same reason (features/validation.py)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from features.validation import validate
from ingest import consumer as stream
from serve_deployments.app import TransactionIn


def _tx(**patch: Any) -> dict[str, Any]:
    return {
        "transaction_id": "t-1", "user_id": "u-1", "merchant_id": "m-1", "amount": 12.5,
        "currency": "EUR", "event_time": datetime.now(UTC).isoformat(), "country": "FR",
    } | patch  # fmt: skip


CASES = [
    ({}, True),
    ({"amount": 0.0}, True),  # issue #23: zero is a valid amount
    ({"amount": 1e9}, True),
    ({"amount": -0.01}, False),
    ({"amount": 5e-324}, False),  # a denormal made amount/mean overflow
    ({"amount": 1e9 + 1}, False),
    ({"currency": "ZZZ"}, False),
    ({"currency": "eur"}, False),
    ({"country": "ZZ"}, False),
    ({"country": "France"}, False),
    ({"user_id": ""}, False),
    ({"user_id": "u" * 129}, False),
    ({"merchant_id": "m\x1ex"}, False),  # a separator the online store reserves
    ({"event_time": (datetime.now(UTC) + timedelta(days=2)).isoformat()}, False),
    ({"event_time": "1999-12-31T23:00:00+00:00"}, False),
    ({"lat": 48.8}, False),  # lat without lon
    ({"lat": 48.8, "lon": 2.35}, True),
    ({"lat": 91.0, "lon": 2.35}, False),
]


@pytest.mark.parametrize(("patch", "valid"), CASES)
def test_the_api_and_the_stream_agree(patch: dict[str, Any], valid: bool) -> None:
    body = _tx(**patch)
    record = {**body, "event_time": datetime.fromisoformat(body["event_time"])}
    reason = validate(record, int(time.time() * 1000))
    assert (reason is None) == valid, reason
    assert stream.validate is validate  # the consumer checks records with the same function
    if valid:
        TransactionIn.model_validate(body)
        return
    with pytest.raises(ValidationError) as caught:
        TransactionIn.model_validate(body)
    assert reason is not None and reason in str(caught.value)  # the stream's reason, word for word


def test_the_api_keeps_its_schema_checks() -> None:
    for patch in ({"channel": "fax"}, {"unexpected": 1}, {"event_time": "2026-01-01T00:00:00"}):
        with pytest.raises(ValidationError):
            TransactionIn.model_validate(_tx(**patch))


@pytest.mark.parametrize(
    "key", ["transaction_id", "user_id", "merchant_id", "device_id", "channel", "merchant_category"]
)
def test_a_reserved_character_is_named_with_its_field(key: str) -> None:
    record = {**_tx(device_id="d-1", channel=None), key: "x\x1fy", "event_time": datetime.now(UTC)}
    assert validate(record, int(time.time() * 1000)) == (
        f"{key} contains a reserved control character (0x01, 0x1c-0x1f)"
    )
