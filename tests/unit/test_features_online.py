"""The online store's engine and its Redis layouts without a Redis: the two scripts played by a
dict (MGET, the guarded SET, BITFIELD INCRBY on big-endian u32/i64 cells), so the store's
packing, the day counters' byte layout and the engine's window arithmetic are checked against
the offline engine in a unit test. The real Redis is the integration skew test's
(tests/integration/test_features_store.py)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import numpy as np
import pytest
import redis

from features import catalogue as cat
from features.catalogue import FEATURE_NAMES, FEATURES
from features.kernel import RAW_KEYS, TxBatch, assemble, empty_raw, raw_from_matrix
from features.offline import frame_from_records
from features.online import OnlineStore, engine
from features.online import store as store_module
from features.online.shards import shard_index

# exact: counts, flags, and the merchant day features (integer cents on both sides)
EXACT = {f.name for f in FEATURES if f.aggregation in {"count", "lifetime_count", "day_count", "day_mean"}}
RTOL, ATOL = 1e-5, 1e-5


class ScriptRedis:
    """read.lua and apply.lua over a dict; labels are not modelled (no label zsets)."""

    def __init__(self) -> None:
        self.kv: dict[bytes, bytes] = {}
        self.ttl: dict[bytes, int] = {}

    def register_script(self, source: str) -> Any:
        if "cmsgpack.pack({users" in source:
            return self._read
        if "GETRANGE" in source:
            return self._apply
        return lambda **_: 0

    def _read(self, keys: list[str], args: list[bytes]) -> bytes:
        ukeys, mkeys, hkeys, lkeys, dkeys, ranges, _cached = msgpack.unpackb(args[0], raw=True)

        def mget(ks: list[bytes]) -> list[bytes | bool]:
            return [self.kv.get(k, False) for k in ks]

        no_labels = [[0, []] for _ in ranges]  # per risk window: core count, edge times
        return msgpack.packb(
            [mget(ukeys), mget(mkeys), mget(hkeys), [[no_labels] * 2 for _ in lkeys], mget(dkeys)]
        )

    def _apply(self, keys: list[str], args: list[bytes]) -> list[int]:
        req = msgpack.unpackb(args[0], raw=True)
        ttls = dict(zip((b"minute", b"hour", b"day"), (req[1], req[2], req[4]), strict=True))
        users, counters, maps = req[5], req[6], req[7]
        failed = [i for i, u in enumerate(users) if self.kv.get(u[0], b"")[:8] != u[1]]
        if failed:
            return failed
        for key, _, value, latest_key, latest in users:
            self.kv[key] = value
            if latest:
                self.kv[latest_key] = latest
        for c in counters:
            cell = bytearray(self.kv.get(c[0], b""))
            ops = c[2:]
            for j in range(0, len(ops), 4):
                assert ops[j] == b"INCRBY"
                kind, off, by = ops[j + 1].decode(), int(ops[j + 2].decode()[1:]), int(ops[j + 3])
                width = int(kind[1:]) // 8
                start = off * width
                cell.extend(bytes(max(0, start + width - len(cell))))
                old = int.from_bytes(cell[start : start + width], "big", signed=kind[0] == "i")
                cell[start : start + width] = (old + by).to_bytes(width, "big", signed=kind[0] == "i")
            self.kv[c[0]] = bytes(cell)
            self.ttl[c[0]] = int(ttls[c[1]])  # PEXPIRE takes the TTL as text, as Redis parses it
        for m in maps:
            self.kv.setdefault(m[0], b"")
        return []


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptRedis]:
    r = ScriptRedis()
    monkeypatch.setattr(redis.Redis, "from_url", staticmethod(lambda *a, **k: r))
    yield r


def world(n: int, days: int, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` transactions of 25 users at 8 merchants over ``days`` days, in event-time order,
    a fifth of them within a minute of midnight UTC, amounts with and without whole cents."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 5, tzinfo=UTC)
    out = []
    for i in range(n):
        day = rng.randrange(days)
        second = rng.choice([rng.randrange(86_400), rng.randrange(60), 86_340 + rng.randrange(60)])
        out.append({
            "transaction_id": f"t{i:05d}", "user_id": f"u{rng.randrange(25)}",
            "merchant_id": f"m{rng.randrange(8)}",
            "amount": rng.choice([round(rng.uniform(1, 300), 2), rng.uniform(0, 50), 0.0, 12.345]),
            "currency": "EUR", "event_time": start + timedelta(days=day, seconds=second), "country": "FR",
            "device_id": "d1", "channel": "online", "merchant_category": "grocery", "lat": None, "lon": None,
        })  # fmt: skip
    return sorted(out, key=lambda r: (r["event_time"], r["transaction_id"]))


def assert_match(online: np.ndarray, offline: np.ndarray) -> None:
    for j, name in enumerate(FEATURE_NAMES):
        a, b = online[:, j].astype(np.float64), offline[:, j].astype(np.float64)
        bad = np.flatnonzero(a != b if name in EXACT else np.abs(a - b) > ATOL + RTOL * np.abs(b))
        assert len(bad) == 0, f"{name} differs on {len(bad)} rows, e.g. {a[bad[:3]]} vs {b[bad[:3]]}"


def test_online_long_windows_equal_offline_over_40_days(fake: ScriptRedis) -> None:
    records = world(1500, days=40)
    store = OnlineStore("redis://fake")
    online = np.vstack([store.update_and_compute(records[i : i + 60]) for i in range(0, len(records), 60)])
    offline = frame_from_records(records)[list(FEATURE_NAMES)].to_numpy()
    assert_match(online, offline)
    for name in ("user_tx_count_30d", "merchant_tx_count_7d", "merchant_amount_mean_30d"):
        j = FEATURE_NAMES.index(name)
        assert np.unique(offline[:, j]).size > 10, name  # the windows filled and emptied
    # the day counters: 32 u32 counts then 32 i64 cent sums per merchant and 32-day block
    blocks = {k: v for k, v in fake.kv.items() if b":dc:" in k}
    assert blocks and all(len(v) <= 384 for v in blocks.values())
    total = sum(int(np.frombuffer(v.ljust(384, b"\0")[:128], ">u4").sum()) for v in blocks.values())
    assert total == len(records)
    cents = sum(int(np.frombuffer(v.ljust(384, b"\0")[128:], ">i8").sum()) for v in blocks.values())
    assert cents == sum(round(r["amount"] * 100) for r in records)
    assert {fake.ttl[k] for k in blocks} == {(32 * 86_400 + 3600) * 1000}


def test_last_seen_times_beyond_the_novelty_horizon_are_pruned_and_count_as_new(fake: ScriptRedis) -> None:
    """A device, country and merchant last seen more than the novelty horizon ago leave the
    user's state at the next write, and meeting them again counts as new, as offline."""
    start = datetime(2026, 1, 5, tzinfo=UTC)
    base = world(1, 1)[0] | {"user_id": "u1", "device_id": "d-old", "country": "FR", "merchant_id": "m-old"}
    later = start + timedelta(seconds=cat.NOVELTY_HORIZON_S + 86_400)
    records = [
        base | {"transaction_id": "a", "event_time": start},
        base | {"transaction_id": "b", "event_time": later, "device_id": "d-new", "country": "DE",
                "merchant_id": "m-new"},
        base | {"transaction_id": "c", "event_time": later + timedelta(minutes=5)},
    ]  # fmt: skip
    store = OnlineStore("redis://fake", namespace="h")
    online = np.vstack([store.update_and_compute([r]) for r in records])
    assert_match(online, frame_from_records(records)[list(FEATURE_NAMES)].to_numpy())
    state = engine.UserState.decode(fake.kv[store.state_key("u1").encode()])
    assert "d:d-new" in state.seen and "m:m-new" in state.seen
    assert {"d:d-old", "m:m-old"} <= set(state.seen)  # seen again by "c", at its time
    assert state.seen["d:d-old"] == int(later.timestamp() * 1000) + 300_000
    pruned = OnlineStore("redis://fake", namespace="p")
    for r in records[:2]:
        pruned.update_and_compute([r])
    after_b = engine.UserState.decode(fake.kv[pruned.state_key("u1").encode()])
    assert set(after_b.seen) == {"d:d-new", "c:DE", "m:m-new"}


def test_rounds_and_redelivery_change_no_long_window(fake: ScriptRedis) -> None:
    records = world(600, days=35, seed=5)
    whole = OnlineStore("redis://fake", namespace="w")
    split = OnlineStore("redis://fake", namespace="s", round_size=7)
    for i in range(0, len(records), 100):
        part = records[i : i + 100]
        np.testing.assert_array_equal(split.update_and_compute(part), whole.update_and_compute(part))
        split.update_and_compute(part)  # redelivered: nothing counts twice

    def stored(ns: bytes) -> dict[bytes, bytes]:
        """The namespace's keys and values, a user state without its version (a write's nonce)."""
        return {k[1:]: v[8:] if k.endswith(b":st") else v for k, v in fake.kv.items() if k.startswith(ns)}

    assert stored(b"s:") == stored(b"w:")


def test_a_redelivered_record_is_scored_as_on_its_first_delivery(fake: ScriptRedis) -> None:
    """Every feature, the running state too (lifetime count, z-score, novelty: the state that
    already holds the record would count it), for a batch again, split in two, and a record
    twice in one batch. Beyond 3 h of event time behind its user's newest event a record's
    running features are no longer kept (``engine.RECENT_MS``): then only the windows are."""
    start = datetime(2026, 1, 5, 12, tzinfo=UTC)  # 400 transactions 5 s apart: a live stream
    records = [dict(r, event_time=start + timedelta(seconds=5 * i)) for i, r in enumerate(world(400, 1, 9))]
    store = OnlineStore("redis://fake", namespace="r")
    for i in range(0, len(records), 100):
        part = records[i : i + 100]
        first = store.update_and_compute(part)
        np.testing.assert_array_equal(store.update_and_compute(part), first)
        halves = np.vstack([store.update_and_compute(part[:50]), store.update_and_compute(part[50:])])
        np.testing.assert_array_equal(halves, first)
    twice = OnlineStore("redis://fake", namespace="d").update_and_compute(records[:10] + records[:10])
    np.testing.assert_array_equal(twice[10:], twice[:10])


def test_a_kept_state_is_the_stored_one_decoded(fake: ScriptRedis) -> None:
    """What a consumer keeps of the states it wrote (``cache_bytes``) and reads instead of
    decoding them again is, field by field, the stored value decoded (its version included),
    with arrays of its own; the footprints add up to ``kept_bytes`` within the bound."""
    records = world(600, 3, 11)
    store = OnlineStore("redis://fake", namespace="k", cache_bytes=1 << 20)
    for i in range(0, len(records), 150):
        store.update_and_compute(records[i : i + 150])
    assert len(store._cache) == 25  # every user, each the latest written
    for user, (kept, size) in store._cache.items():
        value = fake.kv[store.state_key(user).encode()]
        stored = engine.UserState.decode(value)
        assert size == store_module._footprint(value)
        for name in ("t", "amount", "lat", "lon"):
            got, want = getattr(kept, name), getattr(stored, name)
            assert np.array_equal(got, want, equal_nan=True) and got.dtype == want.dtype
            assert got.base is None  # not a view of a batch's whole history
        for name in ("n", "mean", "m2", "hwm", "lt", "ltx", "country", "txid", "seen", "recent", "version"):
            assert getattr(kept, name) == getattr(stored, name), name
    assert sum(size for _, size in store._cache.values()) == store.kept_bytes <= 1 << 20


def test_a_user_state_written_before_the_kept_running_features_still_decodes() -> None:
    """States stored before each applied record kept its running features (2026-12-06) have
    14 fields; they decode with nothing kept (a redelivery of their records is scored on the
    current state, as then) and are written back in the new layout."""
    state = engine.UserState(n=2.0, mean=10.0, m2=8.0, hwm=5, lt=5, ltx="t2", seen={"c:DE": 5})
    state.recent = {"t2": (5, 1.0, 8.0, 0.0, -1.0, 4.0, -1.0)}
    body = msgpack.unpackb(state.encode()[8:], raw=False)
    old = b"\0" * 8 + msgpack.packb(body[:14], use_bin_type=True)
    decoded = engine.UserState.decode(old)
    assert decoded.recent == {} and decoded.n == 2.0 and decoded.seen == {"c:DE": 5}
    assert engine.UserState.decode(state.encode()).recent == state.recent


def test_kept_records_are_stored_by_their_index_among_the_events_and_older_states_still_decode() -> None:
    """A kept record that is a retained event goes as its index in ``txid`` (its id was stored
    twice), one that is not by its id; states written with every id (2026-12-06) decode the same."""
    kept = (5, 1.0, 8.0, 0.0, -1.0, 4.0, -1.0)
    state = engine.UserState(
        n=2.0, mean=10.0, m2=8.0, hwm=5, lt=5, ltx="t2", t=np.array([4, 5]), amount=np.array([8.0, 12.0]),
        lat=np.array([1.0, 1.0]), lon=np.array([2.0, 2.0]), country=["DE", "DE"], txid=["t1", "t2"],
        recent={"t2": kept, "t0": kept},
    )  # fmt: skip
    encoded = state.encode()
    body = msgpack.unpackb(encoded[8:], raw=False)
    assert body[14] == [1, "t0"]
    assert engine.UserState.decode(encoded).recent == state.recent
    by_id = b"\0" * 8 + msgpack.packb([*body[:14], list(state.recent), body[15]], use_bin_type=True)
    assert engine.UserState.decode(by_id).recent == state.recent
    assert len(encoded) < len(by_id)


def test_a_latest_vector_of_the_layout_before_the_30_day_windows_still_decodes() -> None:
    old = store_module._RAW_KEYS_BEFORE_23
    assert set(old) < set(RAW_KEYS) and len(old) == 25
    record = world(1, days=1)[0]
    batch = TxBatch.from_records([record])
    raw = empty_raw(batch)
    raw["user.count.604800"][:] = 3
    raw["user.sum.604800"][:] = 30.0
    raw["merchant.count.3600"][:] = 5
    raw["user.count.2592000"][:] = 9  # not in the old layout: 0 after decoding
    values = np.array([raw[k][0] for k in old], dtype="<f8")
    written = store_module._pack_latest(batch, [0], np.zeros((1, len(RAW_KEYS))))[0]
    stored = written[: written.index(b"\x1e")] + b"\x1e\x1e" + values.tobytes()
    row = dict(zip(FEATURE_NAMES, store_module.decode_latest(stored), strict=True))
    assert row["user_tx_count_7d"] == 3 and row["user_amount_mean_7d"] == 10
    assert row["merchant_tx_count_1h"] == 5
    assert row["user_tx_count_30d"] == 0 and row["user_amount_mean_30d"] == 0
    # today's layout round-trips exactly
    full = np.array([raw[k][0] for k in RAW_KEYS])
    np.testing.assert_array_equal(
        store_module.decode_latest(store_module._pack_latest(batch, [0], full.reshape(1, -1))[0]),
        assemble(batch, raw_from_matrix(full.reshape(1, -1)))[0],
    )


def test_latest_vectors_of_a_batch_pack_as_each_record_alone() -> None:
    """The batch's latest vectors are packed column-wise for all its users at once: each is its
    record's fields (missing device, place, channel, category as empty) and raw aggregates."""
    records = world(60, days=1, seed=7)
    for i, r in enumerate(records):
        r.update({"device_id": None} if i % 3 == 0 else {})
        r.update({"lat": None, "lon": None} if i % 4 == 0 else {})
        r.update({"channel": None, "merchant_category": None} if i % 5 == 0 else {})
    batch = TxBatch.from_records(records)
    raw = np.random.default_rng(7).random((len(records), len(RAW_KEYS))) * 100
    rows = [59, 0, 12, 3, 44, 8]
    for packed, i in zip(store_module._pack_latest(batch, rows, raw), rows, strict=True):
        alone = TxBatch.from_records([records[i]])
        np.testing.assert_array_equal(
            store_module.decode_latest(packed), assemble(alone, raw_from_matrix(raw[i].reshape(1, -1)))[0]
        )
        fields = packed[: packed.index(b"\x1e\x1e")].decode().split("\x1f")
        assert fields[:3] == [records[i]["transaction_id"], records[i]["user_id"], records[i]["merchant_id"]]
        assert fields[6] == (records[i]["device_id"] or "")
        assert (fields[7] == "") == (records[i]["lat"] is None)
    assert store_module._pack_latest(batch, [], raw) == []


def test_a_batch_taken_at_rows_is_those_records_batch() -> None:
    records = world(40, days=1, seed=8)
    records[5]["lat"] = None
    batch = TxBatch.from_records(records)
    rows = np.array([5, 39, 0, 17])
    taken, built = batch.take(rows), TxBatch.from_records([records[i] for i in rows])
    for name in batch.__dataclass_fields__:
        np.testing.assert_array_equal(getattr(taken, name), getattr(built, name))


def test_state_versions_are_drawn_together_and_stored_in_front() -> None:
    drawn = engine.versions(500)
    assert len(drawn) == len(set(drawn)) == 500 and {len(v) for v in drawn} == {8}
    state = engine.UserState(n=1.0, mean=2.0, hwm=5, lt=5, ltx="t0")
    value = state.encode(drawn[0])
    assert value[:8] == drawn[0] and value[8:] == state.encode()[8:]
    assert engine.UserState.decode(value).version == drawn[0]
    with pytest.raises(ValueError, match="8 bytes"):
        state.encode(b"short")


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, ScriptRedis]]:
    """A dict-played Redis per URL: the instances of a sharded store."""
    by_url: dict[str, ScriptRedis] = {}
    monkeypatch.setattr(
        redis.Redis, "from_url", staticmethod(lambda url, **_: by_url.setdefault(url, ScriptRedis()))
    )
    yield by_url


def test_users_sharded_over_two_instances_give_the_features_of_one(fakes: dict[str, ScriptRedis]) -> None:
    """Each user's state on the shard of crc32(user) % 2, each shard counting its own users'
    transactions for the merchants: the caller's sums give the features of one instance."""
    records = world(1500, days=40, seed=9)
    one = OnlineStore("redis://one", namespace="w")
    two = OnlineStore(["redis://a", "redis://b"], namespace="w")
    for i in range(0, len(records), 60):
        part = records[i : i + 60]
        np.testing.assert_array_equal(two.update_and_compute(part), one.update_and_compute(part))
    users = {r["user_id"] for r in records}
    homes = {u: shard_index(u, 2) for u in users}
    assert set(homes.values()) == {0, 1}  # both shards hold users
    for shard, url in enumerate(("redis://a", "redis://b")):
        held = {k.split(b":")[2].decode() for k in fakes[url].kv if k.startswith(b"w:u:")}
        assert held == {u for u, s in homes.items() if s == shard}
    # the counters: each shard a part, their sum that of one instance
    single = {k: v for k, v in fakes["redis://one"].kv.items() if b":dc:" in k}
    for key, value in single.items():
        parts = [fakes[u].kv.get(key, b"").ljust(384, b"\0") for u in ("redis://a", "redis://b")]
        assert sum(int.from_bytes(p[j : j + 4], "big") for p in parts for j in range(0, 128, 4)) == sum(
            int.from_bytes(value.ljust(384, b"\0")[j : j + 4], "big") for j in range(0, 128, 4)
        )
    assert all(any(b":dc:" in k for k in fakes[u].kv) for u in ("redis://a", "redis://b"))
    # one instance: no hashing, the users' keys as before
    assert shard_index("anyone", 1) == 0


def test_a_shard_whose_users_moved_is_computed_again_alone(
    fakes: dict[str, ScriptRedis], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failed compare-and-set on one shard: that shard wrote nothing and only its records go
    round again; the other shard is not written twice and the features are one instance's."""
    start = datetime(2026, 1, 5, 23, 40, tzinfo=UTC)  # one round (< CHUNK_SPAN_MS), across midnight
    records = [
        r | {"event_time": start + timedelta(seconds=5 * i)} for i, r in enumerate(world(400, 1, seed=4))
    ]
    one = OnlineStore("redis://one", namespace="w")
    two = OnlineStore(["redis://a", "redis://b"], namespace="w")
    expected = one.update_and_compute(records)
    b = fakes["redis://b"]
    real_apply = b._apply
    calls: list[int] = []

    def apply_once_failing(keys: list[str], args: list[bytes]) -> list[int]:
        calls.append(len(msgpack.unpackb(args[0], raw=True)[5]))
        return [0] if len(calls) == 1 else real_apply(keys, args)

    two._apply[1] = apply_once_failing
    writes_a: list[int] = []
    real_a = two._apply[0]

    def apply_a(keys: list[str], args: list[bytes]) -> list[int]:
        writes_a.append(1)
        return real_a(keys=keys, args=args)

    two._apply[0] = apply_a
    got = two.update_and_compute(records)
    assert len(calls) == 2 and len(writes_a) == 1  # shard b twice, shard a once
    np.testing.assert_array_equal(got, expected)
    merged = {**fakes["redis://a"].kv, **b.kv}
    assert {k for k in merged if b":u:" in k} == {k for k in fakes["redis://one"].kv if b":u:" in k}


@pytest.mark.parametrize("span_s", [0, 1, 45, 3 * 3600])
def test_label_ranges_count_every_window_as_the_full_list_of_arrivals_would(
    monkeypatch: pytest.MonkeyPatch, span_s: int
) -> None:
    """read.lua counts a risk window's core and returns only the edge arrivals: core + the edge
    times inside ``[t - w, t]`` is, for every record, the count over every arrival. A window
    shorter than the batch's span (60 s here against 45 s and 3 h) has no core."""
    monkeypatch.setattr(cat, "RISK_WINDOWS", (60, 7 * 86_400))
    rng = np.random.default_rng(span_s)
    t0 = 1_790_000_000_000
    t_ms = t0 + rng.integers(0, span_s * 1000 + 1, 300)
    t_ms[:2] = t0, t0 + span_s * 1000  # both ends of the span
    # arrivals around every bound the ranges use, and anywhere in the longest window
    bounds = [t0, t0 + span_s * 1000] + [
        t0 + d * 1000 - w * 1000 for w in cat.RISK_WINDOWS for d in (0, span_s)
    ]
    near = np.concatenate([np.array(bounds)[:, None] + np.arange(-2, 3)]).ravel()
    arrivals = np.concatenate(
        [near, t0 - rng.integers(0, 8 * 86_400_000, 2000), t0 + rng.integers(0, 4_000_000, 50)]
    )
    for w, (core, edges) in engine.label_ranges(t_ms).items():
        assert (core is None) == (span_s >= w)
        n_core = 0 if core is None else int(((arrivals >= core[0]) & (arrivals < core[1])).sum())
        edge = np.concatenate(
            [arrivals[(arrivals >= lo) & (arrivals < hi)] for lo, hi in edges] or [np.empty(0)]
        )
        got = n_core + ((edge[None, :] >= t_ms[:, None] - w * 1000) & (edge[None, :] <= t_ms[:, None])).sum(1)
        want = ((arrivals[None, :] >= t_ms[:, None] - w * 1000) & (arrivals[None, :] <= t_ms[:, None])).sum(1)
        np.testing.assert_array_equal(got, want)
        assert len(edge) <= ((arrivals >= t_ms.min() - w * 1000) & (arrivals <= t_ms.max())).sum()
