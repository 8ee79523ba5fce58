"""The stream's decisions kept for ``GET /predict``: the key format and the writer.

The consumer writes them (ingest may not import serving) and serving reads them
(``serve_deployments/predict_cache.py``), so both live here, beside the keys of the users'
features. ``ns:u:<user>:d`` = ``tx_id 0x1e decision JSON``, the decision of the user's newest
transaction in a batch, written after PostgreSQL has it; TTL as the user's state.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis

from features import catalogue as cat
from features.online.store import FeatureStoreError, lua, store_error

RECORD_SEP, UNIT_SEP, TX_SEP = "\x1d", "\x1c", "\x1e"
TTL_MS = (cat.USER_TTL_S + cat.DAY) * 1000


def decision_key(namespace: str, user_id: str) -> str:
    return f"{namespace}:u:{user_id}:d"


class DecisionWriter:
    """Writes ``{user_id: (transaction_id, decision JSON)}`` in one script call (a 2,000-command
    redis-py pipeline cost the consumer ~5 µs per decision)."""

    def __init__(self, url: str, namespace: str = "fr") -> None:
        self.namespace = namespace
        self._redis = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5)
        self._script = self._redis.register_script(lua("decisions.lua"))

    def key(self, user_id: str) -> str:
        return decision_key(self.namespace, user_id)

    def write(self, decisions: Mapping[str, tuple[str, str]]) -> None:
        """A decision of a transaction that is not, or no longer, the user's latest is simply
        never served. JSON escapes control characters and ids cannot hold them."""
        if not decisions:
            return
        data = RECORD_SEP.join(
            f"{user_id}{UNIT_SEP}{transaction_id}{TX_SEP}{body}"
            for user_id, (transaction_id, body) in decisions.items()
        )
        if data.count(UNIT_SEP) != len(decisions) or data.count(RECORD_SEP) != len(decisions) - 1:
            raise FeatureStoreError("a decision holds a control character the store reserves")
        try:
            self._script(keys=[], args=[self.namespace, TTL_MS, data])
        except redis.RedisError as exc:
            raise store_error(exc) from exc
