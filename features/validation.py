"""The business rules a transaction must pass before it is scored: one implementation for the
stream (ingest's consumer and replay dead-letter a record that fails, with the reason) and the
HTTP API (``/score`` answers 422 with the same reason).

It lives under features/ because both rooms may import it and because some rules are the
feature store's (the control characters it reserves as separators, amounts its kernel can
divide by).
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.online import RESERVED_CHARACTERS

__all__ = [
    "COUNTRIES",
    "CURRENCIES",
    "MAX_AMOUNT",
    "MAX_FUTURE_MS",
    "MAX_ID_LEN",
    "MIN_AMOUNT",
    "MIN_EVENT_MS",
    "amount_is_valid",
    "validate",
]

_CODES = json.loads((Path(__file__).resolve().parent / "iso_codes.json").read_text())
COUNTRIES: frozenset[str] = frozenset(_CODES["countries"])
CURRENCIES: frozenset[str] = frozenset(_CODES["currencies"])

MIN_EVENT_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_FUTURE_MS = 24 * 3600 * 1000  # clocks drift; a day ahead is already absurd
MAX_AMOUNT = 1e9
# A positive amount below this is noise, and a denormal one (5e-324) made amount/mean overflow
# to inf. Zero is valid (issue #23: card verifications, refunds netted to nothing).
MIN_AMOUNT = 1e-4
MAX_ID_LEN = 128
# The online feature store packs a batch into one string with these separators (0x01,
# 0x1c-0x1f). Other bytes PostgreSQL refuses (NUL) fail the sink deterministically instead,
# and the consumer splits the batch down to that one record and dead-letters it.
_TEXT_FIELDS = ("transaction_id", "user_id", "merchant_id", "device_id", "channel", "merchant_category")
_RESERVED = re.compile(f"[{re.escape(RESERVED_CHARACTERS)}]")


def amount_is_valid(amount: float) -> bool:
    """0, or finite and in [MIN_AMOUNT, MAX_AMOUNT]."""
    return math.isfinite(amount) and (amount == 0 or MIN_AMOUNT <= amount <= MAX_AMOUNT)


def _event_ms(record: dict[str, Any]) -> int:
    t = record["event_time"]  # epoch ms (Avro timestamp-millis) or an aware datetime (fastavro, JSON)
    return int(t.timestamp() * 1000) if isinstance(t, datetime) else int(t)


def validate(record: dict[str, Any], now_ms: int) -> str | None:
    """The reason ``record`` is invalid, or ``None`` when it may be scored."""
    for key in ("transaction_id", "user_id", "merchant_id"):
        value = record[key]
        if not value or len(value) > MAX_ID_LEN:
            return f"{key} must have 1..{MAX_ID_LEN} characters, got {len(value)}"
    for key in _TEXT_FIELDS:
        value = record.get(key)
        if value is not None and _RESERVED.search(value):
            return f"{key} contains a reserved control character (0x01, 0x1c-0x1f)"
    amount = record["amount"]
    if not amount_is_valid(amount):
        return f"amount must be finite and 0 or in [{MIN_AMOUNT:g}, {MAX_AMOUNT:g}], got {amount!r}"
    if record["currency"] not in CURRENCIES:
        return f"currency {record['currency']!r} is not an ISO-4217 code"
    if record["country"] not in COUNTRIES:
        return f"country {record['country']!r} is not an ISO-3166 alpha-2 code"
    t = _event_ms(record)
    if t < MIN_EVENT_MS or t > now_ms + MAX_FUTURE_MS:
        return f"event_time {t} ms is outside [2000-01-01, now + 1 day]"
    lat, lon = record.get("lat"), record.get("lon")
    if (lat is None) != (lon is None):
        return "lat and lon must both be present or both absent"
    if (
        lat is not None
        and lon is not None
        and not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180)
    ):
        return f"lat/lon ({lat!r}, {lon!r}) out of range"
    return None
