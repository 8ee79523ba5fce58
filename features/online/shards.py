"""Users spread over several Redis instances: which instance holds a user, and one call per
instance run side by side.

A user lives on shard ``crc32(user_id) % n`` (``FRAUDRAY_REDIS_URL`` is shard 0, then
``FRAUDRAY_REDIS_SHARDS`` in order): a hash every process computes alike, unlike Python's
``hash()``, which is salted per process. With one instance nothing is hashed and every call
runs inline, so a single Redis costs what it did before sharding.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import redis

T = TypeVar("T")


def shard_index(user_id: str, n: int) -> int:
    """The shard of ``user_id`` among ``n``."""
    return 0 if n == 1 else zlib.crc32(user_id.encode()) % n


class Shards:
    """One client per Redis instance, and a pool that calls them in parallel."""

    def __init__(self, urls: str | Sequence[str]) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("the online store needs at least one Redis URL")
        self.clients = [
            redis.Redis.from_url(u, socket_timeout=10, socket_connect_timeout=5) for u in self.urls
        ]
        # A thread per instance: redis-py blocks on its socket without the GIL, so the instances
        # run their scripts at the same time and a round costs the slowest one, not their sum.
        self._pool = (
            ThreadPoolExecutor(len(self.urls), thread_name_prefix="redis-shard")
            if len(self.urls) > 1
            else None
        )

    def __len__(self) -> int:
        return len(self.clients)

    def index(self, user_id: str) -> int:
        return shard_index(user_id, len(self.clients))

    def indices(self, user_ids: Sequence[Any]) -> np.ndarray:
        """The shard of each user id (zeros without hashing for one instance)."""
        n = len(self.clients)
        if n == 1:
            return np.zeros(len(user_ids), np.int64)
        return np.fromiter((zlib.crc32(str(u).encode()) % n for u in user_ids), np.int64, len(user_ids))

    def client(self, user_id: str) -> redis.Redis:
        return self.clients[self.index(user_id)]

    def register_script(self, source: str) -> list[Any]:
        return [c.register_script(source) for c in self.clients]

    def run(self, calls: Mapping[int, Callable[[], T]]) -> dict[int, T]:
        """``{shard: call}`` -> ``{shard: result}``, the calls in parallel. When any call raised,
        the first error (by shard) is raised once all have finished: a caller never leaves a
        call running behind its back."""
        if self._pool is None or len(calls) == 1:
            return {s: call() for s, call in calls.items()}
        futures = {s: self._pool.submit(call) for s, call in calls.items()}
        errors = [f.exception() for f in futures.values()]
        for exc in errors:
            if exc is not None:
                raise exc
        return {s: f.result() for s, f in futures.items()}
