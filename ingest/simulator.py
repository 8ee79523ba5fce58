"""Synthetic card traffic for the thin slice (seeded): a fixed user population with
log-normal amounts, home countries and usual devices."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

COUNTRIES = ("US", "GB", "DE", "FR", "ES", "IT", "NL", "BR", "IN", "JP")
CURRENCY = {"US": "USD", "GB": "GBP", "BR": "BRL", "IN": "INR", "JP": "JPY"}


def demo_transactions(
    n: int, seed: int = 1, users: int = 1000, start: datetime | None = None
) -> Iterator[dict[str, Any]]:
    """``n`` transactions, deterministic for a seed (ids included)."""
    rng = np.random.default_rng(seed)
    start = start or datetime.now(UTC) - timedelta(minutes=10)
    home = rng.choice(len(COUNTRIES), size=users)
    for i in range(n):
        u = int(rng.integers(users))
        country = COUNTRIES[home[u]]
        yield {
            "transaction_id": str(uuid.UUID(int=int(rng.integers(2**63)) << 64 | i)),
            "user_id": f"u{u:06d}",
            "merchant_id": f"m{int(rng.integers(500)):05d}",
            "amount": round(float(rng.lognormal(3.5, 0.8)), 2),
            "currency": CURRENCY.get(country, "EUR"),
            "event_time": start + timedelta(milliseconds=i * 50),
            "country": country,
            "device_id": f"d{u:06d}",
            "channel": "online" if rng.random() < 0.4 else "card_present",
            "merchant_category": None,
            "lat": None,
            "lon": None,
            "ip": None,
        }
