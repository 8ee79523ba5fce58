"""GET /predict's read: the features of the user's latest transaction and the stream's decision
of *that* transaction, when the consumer stored one (features/online/decisions.py), in one
round trip, to the user's Redis shard."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import redis

from features.online.decisions import TX_SEP, decision_key
from features.online.shards import Shards
from features.online.store import decode_latest, store_error


class PredictCache:
    def __init__(self, url: str | Sequence[str], namespace: str = "fr") -> None:
        self.namespace = namespace
        self.shards = Shards(url)

    def read(self, user_id: str) -> tuple[np.ndarray, dict[str, Any] | None] | None:
        """(features, decision or None); None for an unknown user. An unreadable decision
        entry is as good as none (the API scores instead)."""
        try:
            replies: list[bytes | None] = self.shards.client(user_id).mget(
                f"{self.namespace}:u:{user_id}:l", decision_key(self.namespace, user_id)
            )  # type: ignore[assignment]
        except redis.RedisError as exc:
            raise store_error(exc) from exc
        latest, decided = replies
        if latest is None:
            return None
        decision = None
        if decided is not None:
            transaction_id, _, body = decided.decode().partition(TX_SEP)
            if transaction_id == latest.split(b"\x1f", 1)[0].decode():
                with contextlib.suppress(ValueError):
                    parsed = json.loads(body)
                    decision = parsed if isinstance(parsed, dict) else None
        return decode_latest(latest), decision
