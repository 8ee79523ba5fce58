"""Business rules a decodable transaction must pass before it is scored.

A record that fails goes to the dead-letter topic with the reason; the batch goes on.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from features.online import RESERVED_CHARACTERS
from ingest.serde import event_time_ms

_CODES = json.loads((Path(__file__).resolve().parent / "schemas" / "iso_codes.json").read_text())
COUNTRIES: frozenset[str] = frozenset(_CODES["countries"])
CURRENCIES: frozenset[str] = frozenset(_CODES["currencies"])

MIN_EVENT_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)
MAX_FUTURE_MS = 24 * 3600 * 1000  # clocks drift; a day ahead is already absurd
MAX_AMOUNT = 1e9
# Below this an amount is noise, and a denormal one (5e-324) made amount/mean overflow to inf.
MIN_AMOUNT = 1e-4
MAX_ID_LEN = 128
# The online feature store packs a batch into one string with these separators (0x01,
# 0x1c-0x1f). Other bytes PostgreSQL refuses (NUL) fail the sink deterministically instead,
# and the consumer splits the batch down to that one record and dead-letters it.
_TEXT_FIELDS = ("transaction_id", "user_id", "merchant_id", "device_id", "channel", "merchant_category")
_RESERVED = re.compile(f"[{re.escape(RESERVED_CHARACTERS)}]")


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
    if not math.isfinite(amount) or amount <= 0 or amount > MAX_AMOUNT:
        return f"amount must be finite and in (0, {MAX_AMOUNT:g}], got {amount!r}"
    if amount < MIN_AMOUNT:
        return f"amount must be at least {MIN_AMOUNT:g}, got {amount!r}"
    if record["currency"] not in CURRENCIES:
        return f"currency {record['currency']!r} is not an ISO-4217 code"
    if record["country"] not in COUNTRIES:
        return f"country {record['country']!r} is not an ISO-3166 alpha-2 code"
    t = event_time_ms(record)
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
