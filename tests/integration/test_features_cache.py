"""The online store client's cache of the states it wrote (``cache_bytes``) on the real Redis:
the same features and stored state as a client without it, and never a stale state, whether
another writer moved a user, the store lost its state, or the cache is full."""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import redis

from core.settings import Settings
from features.online import OnlineStore
from ingest.simulator import demo_transactions
from tests.integration.test_features_store import labels_for, past_week, prefixed, snapshot

pytestmark = pytest.mark.integration


@pytest.fixture
def namespaces(local_stack: Settings) -> Iterator[list[str]]:
    """Two fresh namespaces; their keys deleted afterwards."""
    made = [f"frcache{uuid.uuid4().hex[:10]}" for _ in range(2)]
    yield made
    for ns in made:
        _deleted(local_stack.redis.url.get_secret_value(), ns)


def _stream(n: int, users: int, seed: int) -> list[dict[str, Any]]:
    prefix = f"c{uuid.uuid4().hex[:8]}-"
    return prefixed(list(demo_transactions(n, seed=seed, users=users, start=past_week())), prefix)


def _run(store: OnlineStore, records: Sequence[dict[str, Any]], batch: int) -> np.ndarray:
    return np.vstack(
        [store.update_and_compute(records[i : i + batch]) for i in range(0, len(records), batch)]
    )


def _state(url: str, ns: str) -> dict[bytes, Any]:
    """The namespace's keys without the namespace, user states without their versions."""
    return {
        k.removeprefix(ns.encode()): v
        for k, v in snapshot(redis.Redis.from_url(url), ns, versions=False).items()
    }


def _deleted(url: str, ns: str) -> None:
    r = redis.Redis.from_url(url)
    keys = list(r.scan_iter(f"{ns}:*", count=5000))
    for i in range(0, len(keys), 5000):
        r.delete(*keys[i : i + 5000])


def test_a_cached_client_gives_the_features_and_state_of_one_without(
    local_stack: Settings, namespaces: list[str]
) -> None:
    """Batches of a stream whose users come back: the same features and stored state, bit for
    bit, and every returning user's state came from the cache (Redis sent its version alone)."""
    url = local_stack.redis.url.get_secret_value()
    records = _stream(6000, users=300, seed=31)
    labels = labels_for(records)
    plain = OnlineStore(url, namespaces[0])
    cached = OnlineStore(url, namespaces[1], cache_bytes=64 << 20)
    expected = _run(plain, records, 500)
    plain.apply_labels(labels)
    got = _run(cached, records, 500)
    cached.apply_labels(labels)
    assert np.array_equal(got, expected, equal_nan=True)
    assert _state(url, namespaces[1]) == _state(url, namespaces[0])
    returning = sum(
        len({r["user_id"] for r in records[:i]} & {r["user_id"] for r in records[i : i + 500]})
        for i in range(500, len(records), 500)
    )
    assert cached.cache_hits == returning > 0
    assert 0 < len(cached._cache) <= 300


def test_a_cached_state_is_never_used_once_the_stored_one_moved_or_went(
    local_stack: Settings, namespaces: list[str]
) -> None:
    """Another client writes some of the same users between two batches (a rebalance, a
    zombie), then the store loses every state (a flush): each time the cached client reads the
    stored state again (its guarded write would refuse a stale one; ``compute``, which writes
    nothing, relies on the read alone), and its features and state are those of a client that
    never cached."""
    url = local_stack.redis.url.get_secret_value()
    records = _stream(3000, users=100, seed=32)
    parts = [records[:1000], records[1000:2000], records[2000:2500], records[2500:]]
    a = OnlineStore(url, namespaces[0], cache_bytes=64 << 20)
    other = OnlineStore(url, namespaces[0], cache_bytes=64 << 20)
    reference = OnlineStore(url, namespaces[1])

    a.update_and_compute(parts[0])
    reference.update_and_compute(parts[0])
    other.update_and_compute(parts[1])  # the same users, moved under a's cache
    reference.update_and_compute(parts[1])
    # what a's guarded write would catch anyway, compute (no write) must see by itself
    assert np.array_equal(a.compute(parts[2]), reference.compute(parts[2]), equal_nan=True)
    assert np.array_equal(
        a.update_and_compute(parts[2]), reference.update_and_compute(parts[2]), equal_nan=True
    )
    assert _state(url, namespaces[0]) == _state(url, namespaces[1])

    for ns in namespaces[:2]:  # the store lost its state
        _deleted(url, ns)
    assert np.array_equal(a.compute(parts[3]), reference.compute(parts[3]), equal_nan=True)
    assert np.array_equal(
        a.update_and_compute(parts[3]), reference.update_and_compute(parts[3]), equal_nan=True
    )
    assert _state(url, namespaces[0]) == _state(url, namespaces[1])


def test_the_cache_holds_at_most_cache_bytes_and_still_agrees(
    local_stack: Settings, namespaces: list[str]
) -> None:
    """A cache smaller than the states it meets keeps the latest written; the others are read."""
    url = local_stack.redis.url.get_secret_value()
    records = _stream(3000, users=400, seed=33)
    small = OnlineStore(url, namespaces[0], cache_bytes=20_000)
    plain = OnlineStore(url, namespaces[1])
    assert np.array_equal(_run(small, records, 250), _run(plain, records, 250), equal_nan=True)
    assert small.cache_hits > 0 and 0 < len(small._cache) < 400
    assert sum(size for _, size in small._cache.values()) == small.kept_bytes <= 20_000
    assert _state(url, namespaces[0]) == _state(url, namespaces[1])
    with pytest.raises(ValueError, match="cache_bytes"):
        OnlineStore(url, namespaces[0], cache_bytes=-1)
