"""The online store sharded over two real Redis instances (the stack's and a private
``redis-server`` started here): the features of one instance, exactly-once under a concurrent
writer on one shard, and a shard that is down failing the way one Redis does.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from core.errors import StoreUnavailable
from core.ports import free_port
from core.settings import Settings
from features.catalogue import FEATURE_NAMES
from features.offline import frame_from_records
from features.online import OnlineStore
from features.online import store as store_module
from features.online.decisions import DecisionWriter
from features.online.shards import shard_index
from ingest.simulator import demo_transactions
from serve_deployments.predict_cache import PredictCache
from tests.integration.test_features_store import (
    ATOL,
    RTOL,
    assert_features_match,
    labels_for,
    past_week,
    prefixed,
    snapshot,
    tx,
)

pytestmark = pytest.mark.integration


def _redis_server(port: int, workdir: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A private Redis on ``port``, no persistence, answering once this returns."""
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 10
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return proc, url
        except redis.ConnectionError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def second_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private Redis on a free port, no persistence; stopped at the end of the module."""
    proc, url = _redis_server(free_port(), tmp_path_factory.mktemp("redis-shard"))
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def urls(local_stack: Settings, second_redis: str) -> list[str]:
    return [local_stack.redis.url.get_secret_value(), second_redis]


@pytest.fixture
def namespace(urls: list[str]) -> Iterator[str]:
    """A fresh namespace; its keys (and those of namespaces starting with it) deleted afterwards
    on both instances."""
    ns = f"frshard{uuid.uuid4().hex[:10]}"
    yield ns
    for url in urls:
        r = redis.Redis.from_url(url)
        keys = list(r.scan_iter(f"{ns}*", count=5000))
        for i in range(0, len(keys), 5000):
            r.delete(*keys[i : i + 5000])


def state(urls: list[str], ns: str) -> list[dict[bytes, Any]]:
    """Every key of the namespace per instance, without the namespace (user states without
    their versions: each write draws its own)."""
    return [
        {
            k.removeprefix(ns.encode()): v
            for k, v in snapshot(redis.Redis.from_url(u), ns, versions=False).items()
        }
        for u in urls
    ]


def test_two_shards_give_the_features_of_one_instance(urls: list[str], namespace: str) -> None:
    """The same stream (labels arriving between batches, one batch redelivered) through one
    instance and through two: identical features (merchant windows over users of both shards,
    label risk), matching the offline engine; every user's keys on its own shard only."""
    prefix = f"sh{uuid.uuid4().hex[:8]}-"
    start = past_week()
    records: list[dict[str, Any]] = []
    for k, days in enumerate((0, 2, 11)):  # later bursts see the labels of earlier ones
        burst = demo_transactions(1500, seed=21 + k, users=200, start=start + timedelta(days=days))
        records += prefixed(list(burst), prefix)
    labels = labels_for(records, share=4)
    one = OnlineStore(urls[0], namespace=f"{namespace}1")
    two = OnlineStore(urls, namespace=f"{namespace}2")
    pending, got_one, got_two, applied = list(labels), [], [], 0
    batches = [records[i : i + 500] for i in range(0, len(records), 500)]
    for b, batch in enumerate(batches):
        t_max = max(r["event_time"] for r in batch)
        due = [lab for lab in pending if lab["labelled_at"] <= t_max]
        pending = [lab for lab in pending if lab["labelled_at"] > t_max]
        new = two.apply_labels(due)
        assert one.apply_labels(due) == new
        applied += new
        got_one.append(one.update_and_compute(batch))
        got_two.append(two.update_and_compute(batch))
        if b == 3:  # redelivered: counts once on either layout
            two.update_and_compute(batch)
    assert applied > 100
    one_m, two_m = np.vstack(got_one), np.vstack(got_two)
    np.testing.assert_array_equal(two_m, one_m)
    assert_features_match(
        two_m, frame_from_records(records, labels)[list(FEATURE_NAMES)].to_numpy(), "2 shards"
    )
    risk = FEATURE_NAMES.index("merchant_fraud_risk_7d")
    assert two_m[:, risk].max() > 0.011  # the labels reached the features
    # users live on their shard; merchants have partial counters on both
    per_shard = state(urls, f"{namespace}2")
    homes = {r["user_id"]: shard_index(r["user_id"], 2) for r in records}
    for s, keys in enumerate(per_shard):
        users = {k.split(b":")[2].decode() for k in keys if k.startswith(b":u:")}
        assert users == {u for u, home in homes.items() if home == s}
        assert any(b":dc:" in k for k in keys) and any(k.endswith(b":lab") for k in keys)
    # the per-user readers go to the user's shard
    cache, writer = PredictCache(urls, f"{namespace}2"), DecisionWriter(urls, f"{namespace}2")
    both = [next(u for u, home in homes.items() if home == s) for s in (0, 1)]
    body = {"anomaly_score": 0.5, "is_fraud": False}
    latest = {
        u: max((r["event_time"], r["transaction_id"]) for r in records if r["user_id"] == u) for u in both
    }
    writer.write({u: (latest[u][1], json.dumps(body)) for u in both})
    for s, user in enumerate(both):
        vector = two.read_latest(user)
        assert vector is not None
        np.testing.assert_array_equal(vector, one.read_latest(user))
        mine, theirs = two.user_state(user), one.user_state(user)
        assert mine is not None and theirs is not None and mine.encode()[8:] == theirs.encode()[8:]
        hit = cache.read(user)
        assert hit is not None and hit[1] == body
        np.testing.assert_array_equal(hit[0], vector)
        assert redis.Redis.from_url(urls[s]).exists(writer.key(user))
        assert not redis.Redis.from_url(urls[1 - s]).exists(writer.key(user))
    assert two.drop_population(prefix) > 0 and state(urls, f"{namespace}2") == [{}, {}]


def test_a_concurrent_writer_on_one_shard_never_makes_a_transaction_count_twice(
    urls: list[str], namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another actor applies half of shard 1's records between our read and our write: shard 0
    commits once, shard 1's guarded write finds the versions moved and only its records go round
    again; every key on both instances as after one delivery, the same window features."""
    prefix = f"sc{uuid.uuid4().hex[:8]}-"
    records = prefixed(list(demo_transactions(600, seed=13, users=60, start=past_week())), prefix)
    once = OnlineStore(urls, namespace=f"{namespace}o")
    expected = once.update_and_compute(records)
    store = OnlineStore(urls, namespace=namespace)
    other = OnlineStore(urls, namespace=namespace)
    on_shard_1 = [r for r in records if shard_index(r["user_id"], 2) == 1]
    assert 0 < len(on_shard_1) < len(records)
    # the other writer applies the older half of shard 1's records (the actor that owned the
    # partition before a rebalance), so the retry has the newer half left to write
    zombie = sorted(on_shard_1, key=lambda r: (r["event_time"], r["transaction_id"]))[: len(on_shard_1) // 2]
    real = store_module.engine.compute
    raced: list[bool] = []
    rounds: list[int] = []  # records per computed round

    def compute_then_race(*args: Any, **kwargs: Any) -> Any:
        rounds.append(len(args[0]))
        out = real(*args, **kwargs)
        if not raced:  # the zombie writes shard 1's users after our read
            raced.append(True)
            monkeypatch.setattr(store_module.engine, "compute", real)
            other.update_and_compute(zombie)
            monkeypatch.setattr(store_module.engine, "compute", compute_then_race)
        return out

    writes: list[int] = []

    def counted(shard: int, script: Any) -> Any:
        def call(keys: list[str], args: list[bytes]) -> Any:
            writes.append(shard)
            return script(keys=keys, args=args)

        return call

    store._apply = [counted(s, script) for s, script in enumerate(store._apply)]
    monkeypatch.setattr(store_module.engine, "compute", compute_then_race)
    got = store.update_and_compute(records)
    assert raced
    # shard 0 committed at once; shard 1's write failed, its records alone went round again and
    # wrote what the other writer had not applied
    assert rounds == [len(records), len(on_shard_1)]  # (the other writer computes unrecorded)
    assert sorted(writes) == [0, 1, 1]
    cols = [
        FEATURE_NAMES.index(n) for n in ("user_tx_count_1h", "user_amount_sum_24h", "merchant_tx_count_1h")
    ]
    np.testing.assert_allclose(got[:, cols], expected[:, cols], rtol=RTOL, atol=ATOL)
    # shard 0's records kept the features of their one delivery, all of them
    mine = [i for i, r in enumerate(records) if shard_index(r["user_id"], 2) == 0]
    np.testing.assert_array_equal(got[mine], expected[mine])
    assert state(urls, namespace) == state(urls, f"{namespace}o")


def test_a_shard_that_is_down_raises_store_unavailable(urls: list[str]) -> None:
    dead = "redis://127.0.0.1:1/0"
    store = OnlineStore([urls[0], dead], namespace=f"frdead{uuid.uuid4().hex[:8]}")
    record = tx("x-", 1, past_week())
    with pytest.raises(StoreUnavailable):
        store.compute([record])
    with pytest.raises(StoreUnavailable):
        store.update_and_compute([record])
    with pytest.raises(StoreUnavailable):
        store.apply_labels([{"transaction_id": "x-t1", "is_fraud": True, "labelled_at": past_week()}])
    down = next(f"u{i}" for i in range(100) if shard_index(f"u{i}", 2) == 1)
    up = next(f"u{i}" for i in range(100) if shard_index(f"u{i}", 2) == 0)
    with pytest.raises(StoreUnavailable):
        store.read_latest(down)
    assert store.read_latest(up) is None  # the live shard still answers for its users
    with pytest.raises(StoreUnavailable):
        PredictCache([urls[0], dead]).read(down)
    with pytest.raises(StoreUnavailable):
        DecisionWriter([urls[0], dead]).write({down: ("t", "{}")})


def test_the_store_instance_changes_when_any_shard_is_flushed_or_restarted(
    urls: list[str], namespace: str, tmp_path: Path
) -> None:
    """``instance()`` answers the same until a shard may have lost what it held: a flushed
    shard (its token gone) or a restarted one (a new run id) changes its part alone."""
    store = OnlineStore(urls, namespace)
    first = store.instance()
    assert len(first) == 2 and store.instance() == first
    redis.Redis.from_url(urls[1]).delete(f"{namespace}:instance")  # what FLUSHDB does to it
    flushed = store.instance()
    assert flushed[0] == first[0] and flushed[1] != first[1] and store.instance() == flushed

    port = free_port()
    proc, url = _redis_server(port, tmp_path)
    try:
        alone = OnlineStore(url, namespace)
        before = alone.instance()
        proc.terminate()
        proc.wait(timeout=10)
        with pytest.raises(StoreUnavailable):
            alone.instance()
        proc, _ = _redis_server(port, tmp_path)
        assert alone.instance() != before
    finally:
        proc.terminate()
        proc.wait(timeout=10)
