"""Hostile input, property-based (hypothesis): the Avro decoder, the validation rules and the
feature kernel never crash on what an attacker or a broken producer can put on the topic —
random bytes, huge/NaN/inf/negative amounts, any unicode, very long strings, far-future or
pre-epoch timestamps, missing optional fields. Every rejection carries a readable reason (it
becomes the DLQ's ``error.message``), and every record that passes validation yields a finite
feature row."""

from __future__ import annotations

import io
import math
import struct
import time
from typing import Any

import fastavro
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.errors import DecodeError
from features.catalogue import FEATURE_NAMES
from features.online import records_features
from features.validation import MAX_AMOUNT, MAX_FUTURE_MS, MAX_ID_LEN, MIN_AMOUNT, MIN_EVENT_MS, validate
from ingest.serde import MAGIC, FastRecordEncoder, TransactionSerde, event_time_ms

SERDE = TransactionSerde()
FAST = FastRecordEncoder.for_serde(SERDE)
EXAMPLES = 300
PROFILE = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
NOW_MS = int(time.time() * 1000)
OPTIONAL = ("device_id", "channel", "merchant_category", "lat", "lon", "ip")

# Amounts an attacker would try, plus anything a double can hold.
amounts = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, -1.0, 1e-320, 5e-324, 1e9, 1e9 + 1, 1.7976931348623157e308, math.nan]),
)
# Any unicode the Avro string type can carry (hypothesis leaves surrogates out), short and long.
texts = st.one_of(
    st.text(max_size=40),
    st.text(min_size=100, max_size=5000),
    st.sampled_from(["", " ", "'; DROP TABLE transactions; --", "\x00", "\u202e\u0645", "🙂" * 200]),
)
ids = st.one_of(texts, st.text(alphabet="abcdef0123456789-", min_size=1, max_size=40))
# timestamp-millis as epoch ms: pre-2000, now-ish, far future (up to what fastavro can decode).
event_times = st.one_of(
    st.integers(min_value=-62_135_596_800_000, max_value=253_402_300_799_999),
    st.integers(min_value=NOW_MS - 10**9, max_value=NOW_MS + 2 * MAX_FUTURE_MS),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
coords = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.floats(-90, 90))


HOSTILE: dict[str, st.SearchStrategy[Any]] = {
    "transaction_id": ids,
    "user_id": ids,
    "merchant_id": ids,
    "amount": amounts,
    "currency": st.one_of(st.sampled_from(["eur", "XXX", "", "EURO"]), texts),
    "event_time": event_times,
    "country": st.one_of(st.sampled_from(["de", "XX", "ZZZ", ""]), texts),
    "device_id": st.one_of(st.none(), texts),
    "channel": st.one_of(st.none(), texts),
    "merchant_category": st.one_of(st.none(), texts),
    "lat": coords,
    "lon": coords,
    "ip": st.one_of(st.none(), texts),
}


@st.composite
def records(draw: st.DrawFn) -> dict[str, Any]:
    """A plausible record with up to four fields made hostile, and some optional ones left out."""
    rec: dict[str, Any] = {
        "transaction_id": draw(st.text(alphabet="abcdef0123456789-", min_size=1, max_size=40)),
        "user_id": draw(st.sampled_from(["u-1", "u-2", "u-3"])),
        "merchant_id": "m-1",
        "amount": draw(st.floats(min_value=0.01, max_value=MAX_AMOUNT)),
        "currency": draw(st.sampled_from(["EUR", "USD"])),
        "event_time": draw(st.integers(NOW_MS - 10**8, NOW_MS + 10**6)),
        "country": draw(st.sampled_from(["DE", "US"])),
        "device_id": "d-1",
        "channel": "online",
        "merchant_category": "grocery",
        "lat": 48.1,
        "lon": 11.6,
        "ip": "10.0.0.1",
    }
    for name in draw(st.sets(st.sampled_from(sorted(HOSTILE)), max_size=4)):
        rec[name] = draw(HOSTILE[name])
    for name in draw(st.sets(st.sampled_from(OPTIONAL), max_size=len(OPTIONAL))):
        rec.pop(name)  # missing optional fields: the writer fills in null
    return rec


def _encode(rec: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    buf.write(struct.pack(">bI", MAGIC, SERDE.schema_id))
    fastavro.schemaless_writer(buf, SERDE.schema, rec)
    return buf.getvalue()


@PROFILE
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_the_decoder(value: bytes) -> None:
    good, bad = SERDE.decode_many([value])
    assert len(good) + len(bad) == 1
    for failure in bad:
        assert failure.error == "DecodeError" and failure.message


@PROFILE
@given(records(), st.binary(max_size=8), st.integers(min_value=0, max_value=60))
def test_mutated_records_are_decoded_or_rejected_with_a_reason(
    rec: dict[str, Any], noise: bytes, cut: int
) -> None:
    """Truncated, extended, or bit-flipped bodies: a record dict or a DecodeError, nothing else."""
    value = _encode(rec)
    variants = [value[: max(0, len(value) - cut)], value + noise, bytes([1]) + value[1:]]
    if len(value) > 5 + cut:
        flipped = bytearray(value)
        flipped[5 + cut] ^= 0xFF
        variants.append(bytes(flipped))
    good, bad = SERDE.decode_many(variants)
    assert len(good) + len(bad) == len(variants)
    assert all(f.message for f in bad)
    for _i, decoded in good:
        assert isinstance(decoded, dict) and set(decoded) >= {"transaction_id", "amount", "event_time"}


@PROFILE
@given(records())
def test_hostile_records_decode_then_validate_with_a_clear_reason(rec: dict[str, Any]) -> None:
    value = _encode(rec)
    assert FAST.encode(rec) == value  # the producer's fast path writes the same bytes
    try:
        decoded = SERDE.decode(value)
    except DecodeError as exc:  # e.g. a timestamp beyond year 9999: fastavro cannot build it
        assert str(exc)
        return
    for name in OPTIONAL:
        assert decoded[name] == rec.get(name) or (decoded[name] != decoded[name])  # NaN != NaN
    reason = validate(decoded, NOW_MS)
    if reason is not None:
        assert isinstance(reason, str) and len(reason) > 10
        return
    # Accepted: every business rule really holds, and the feature row is finite.
    for key in ("transaction_id", "user_id", "merchant_id"):
        assert 1 <= len(decoded[key]) <= MAX_ID_LEN
    amount = decoded["amount"]
    assert math.isfinite(amount) and (amount == 0 or MIN_AMOUNT <= amount <= MAX_AMOUNT)
    assert MIN_EVENT_MS <= event_time_ms(decoded) <= NOW_MS + MAX_FUTURE_MS
    matrix = records_features([decoded], np.array([event_time_ms(decoded)]))
    assert matrix.shape == (1, len(FEATURE_NAMES))
    assert np.isfinite(matrix).all(), dict(zip(FEATURE_NAMES, matrix[0], strict=True))


@PROFILE
@given(amounts)
def test_every_invalid_amount_is_named_in_the_reason(amount: float) -> None:
    rec = SERDE.decode(_encode({**_valid(), "amount": amount}))
    reason = validate(rec, NOW_MS)
    ok = math.isfinite(amount) and (amount == 0 or MIN_AMOUNT <= amount <= MAX_AMOUNT)  # 0: issue #23
    assert (reason is None) == ok
    if not ok:
        assert reason is not None and reason.startswith("amount must be")


@PROFILE
@given(st.integers(min_value=NOW_MS + MAX_FUTURE_MS + 1, max_value=253_402_300_799_999))
def test_far_future_timestamps_are_rejected(t: int) -> None:
    reason = validate(SERDE.decode(_encode({**_valid(), "event_time": t})), NOW_MS)
    assert reason is not None and "event_time" in reason


@PROFILE
@given(st.lists(records(), min_size=1, max_size=30))
def test_batches_of_valid_records_give_finite_features(batch: list[dict[str, Any]]) -> None:
    """The kernel over whole batches: whatever mix passed validation, no NaN/inf reaches a model."""
    decoded = []
    for rec in batch:
        try:
            r = SERDE.decode(_encode(rec))
        except DecodeError:
            continue
        if validate(r, NOW_MS) is None:
            decoded.append(r)
    assume(decoded)
    matrix = records_features(decoded, np.array([event_time_ms(r) for r in decoded]))
    assert matrix.shape == (len(decoded), len(FEATURE_NAMES)) and np.isfinite(matrix).all()


def _valid() -> dict[str, Any]:
    return {"transaction_id": "t-1", "user_id": "u-1", "merchant_id": "m-1", "amount": 10.0,
            "currency": "EUR", "event_time": NOW_MS, "country": "DE"}  # fmt: skip
