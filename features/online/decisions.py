"""The stream's decisions kept for ``GET /predict``: the key format and the writer.

The consumer writes them (ingest may not import serving) and serving reads them
(``serve_deployments/predict_cache.py``), so both live here, beside the keys of the users'
features. ``ns:u:<user>:d`` = ``tx_id 0x1e decision JSON``, the decision of the user's newest
transaction in a batch, written after PostgreSQL has it; TTL as the user's state. With several
Redis instances a user's decision lives on the user's shard, beside the user's features.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

import redis

from features import catalogue as cat
from features.online.shards import Shards
from features.online.store import FeatureStoreError, lua, store_error

RECORD_SEP, UNIT_SEP, TX_SEP = "\x1d", "\x1c", "\x1e"
TTL_MS = (cat.USER_TTL_S + cat.DAY) * 1000


def decision_key(namespace: str, user_id: str) -> str:
    return f"{namespace}:u:{user_id}:d"


class DecisionWriter:
    """Writes ``{user_id: (transaction_id, decision JSON)}`` in one script call per shard (a
    2,000-command redis-py pipeline cost the consumer ~5 µs per decision)."""

    def __init__(self, url: str | Sequence[str], namespace: str = "fr") -> None:
        self.namespace = namespace
        self.shards = Shards(url)
        self._script = self.shards.register_script(lua("decisions.lua"))

    def key(self, user_id: str) -> str:
        return decision_key(self.namespace, user_id)

    def write(self, decisions: Mapping[str, tuple[str, str]]) -> None:
        """A decision of a transaction that is not, or no longer, the user's latest is simply
        never served. JSON escapes control characters and ids cannot hold them."""
        if not decisions:
            return
        by_shard: dict[int, Mapping[str, tuple[str, str]]] = {0: decisions}
        if len(self.shards) > 1:
            groups: dict[int, dict[str, tuple[str, str]]] = {}
            for user_id, decision in decisions.items():
                groups.setdefault(self.shards.index(user_id), {})[user_id] = decision
            by_shard = dict(groups)
        calls = {}
        for s, part in by_shard.items():
            data = RECORD_SEP.join(
                f"{user_id}{UNIT_SEP}{transaction_id}{TX_SEP}{body}"
                for user_id, (transaction_id, body) in part.items()
            )
            if data.count(UNIT_SEP) != len(part) or data.count(RECORD_SEP) != len(part) - 1:
                raise FeatureStoreError("a decision holds a control character the store reserves")
            calls[s] = functools.partial(self._script[s], keys=[], args=[self.namespace, TTL_MS, data])
        try:
            self.shards.run(calls)
        except redis.RedisError as exc:
            raise store_error(exc) from exc
