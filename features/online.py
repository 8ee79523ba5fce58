"""Per-batch feature computation and the Redis online store.

This is the thin slice's feature set: stateless features of each transaction, computed for
a whole batch at once, and the latest feature vector per user kept in Redis for
``GET /predict``. Writes are idempotent: a vector only replaces a newer-or-equal one, so a
redelivered batch leaves the store unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis

from cluster.errors import StoreUnavailable

FEATURE_NAMES: tuple[str, ...] = ("log_amount", "hour_sin", "hour_cos", "is_online", "is_night")

_KEY = "fr:latest:{}"
_TTL_S = 30 * 24 * 3600

# Replace the stored vector only when this event is not older than the stored one.
_SET_IF_NEWER = """
local cur = redis.call('HGET', KEYS[1], 'ts')
if cur and tonumber(cur) > tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'ts', ARGV[1], 'tx', ARGV[2], 'v', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


def transaction_features(
    amounts: np.ndarray, event_ms: np.ndarray, channels: Sequence[str | None]
) -> np.ndarray:
    """Feature matrix (n x len(FEATURE_NAMES)), float32, for a batch."""
    hours = (event_ms // 3_600_000) % 24
    angle = 2 * math.pi * hours / 24
    out = np.empty((len(amounts), len(FEATURE_NAMES)), dtype=np.float32)
    out[:, 0] = np.log1p(np.clip(amounts, 0, None))
    out[:, 1] = np.sin(angle)
    out[:, 2] = np.cos(angle)
    out[:, 3] = np.fromiter((c == "online" for c in channels), dtype=np.float32, count=len(channels))
    out[:, 4] = (hours < 6).astype(np.float32)
    return out


def records_features(records: Sequence[dict[str, Any]], event_ms: np.ndarray) -> np.ndarray:
    amounts = np.fromiter((r["amount"] for r in records), dtype=np.float64, count=len(records))
    return transaction_features(amounts, event_ms, [r.get("channel") for r in records])


class OnlineStore:
    """Latest feature vector per user in Redis (one pipeline per batch)."""

    def __init__(self, url: str) -> None:
        self._redis = redis.Redis.from_url(url, socket_timeout=5)
        self._set_if_newer = self._redis.register_script(_SET_IF_NEWER)

    def write_latest(
        self, user_ids: Sequence[str], tx_ids: Sequence[str], event_ms: np.ndarray, matrix: np.ndarray
    ) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for uid, tx, ts, row in zip(user_ids, tx_ids, event_ms, matrix, strict=True):
                self._set_if_newer(
                    keys=[_KEY.format(uid)], args=[int(ts), tx, row.astype(np.float32).tobytes(), _TTL_S],
                    client=pipe,
                )  # fmt: skip
            pipe.execute()
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis online store: {exc}") from exc

    def compute(self, records: Sequence[dict[str, Any]]) -> np.ndarray:
        """Features for ``records`` without changing the store (``POST /score``)."""
        event_ms = np.fromiter(
            (int(r["event_time"].timestamp() * 1000) for r in records), dtype=np.int64, count=len(records)
        )
        return records_features(records, event_ms)

    def read_latest(self, user_id: str) -> np.ndarray | None:
        try:
            raw = self._redis.hget(_KEY.format(user_id), "v")
        except redis.RedisError as exc:
            raise StoreUnavailable(f"Redis online store: {exc}") from exc
        if raw is None:
            return None
        return np.frombuffer(raw, dtype=np.float32).copy()  # type: ignore[arg-type]
