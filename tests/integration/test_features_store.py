"""The online store on the real Redis, the offline engine on the real PostgreSQL, and the proof
that they agree: the skew test, idempotency, point-in-time labels, out-of-order events.

Each test uses its own key namespace and id prefix, and event times in a random past week, so
tests never see each other's (or anybody's) keys and rows; everything is deleted afterwards.
"""

from __future__ import annotations

import hashlib
import json
import random
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg2
import psycopg2.extras
import pytest
import redis

from core.errors import StoreUnavailable
from core.settings import Settings
from features import catalogue as cat
from features.catalogue import FEATURE_NAMES, FEATURES
from features.offline import build_frame, frame_from_records
from features.online import FeatureStoreError, OnlineStore, engine
from features.online import store as store_module
from features.online.decisions import DecisionWriter
from features.rebuild import rebuild
from ingest.simulator import demo_transactions, retag
from ingest.sinks import PostgresSink
from serve_deployments.predict_cache import PredictCache
from tests.helpers import fresh_transactions, private_postgres

pytestmark = pytest.mark.integration

# The documented skew tolerance: |online - offline| <= ATOL + RTOL * |offline| (float32 outputs;
# the engines add the same numbers in different orders). Counts and flags must match exactly, and
# so must the merchant day means (integer cents on both sides).
RTOL, ATOL = 1e-5, 1e-5
EXACT = {f.name for f in FEATURES if f.aggregation in {
    "count", "lifetime_count", "is_new", "distinct", "hour", "weekend", "night", "channel_code",
    "card_not_present", "category_code", "high_risk_category", "day_count", "day_mean"}}  # fmt: skip


@pytest.fixture
def store(local_stack: Settings) -> Iterator[OnlineStore]:
    s = OnlineStore(local_stack.redis.url.get_secret_value(), namespace=f"frtest{uuid.uuid4().hex[:10]}")
    yield s
    r = redis.Redis.from_url(local_stack.redis.url.get_secret_value())
    keys = list(r.scan_iter(f"{s.namespace}:*", count=5000))
    for i in range(0, len(keys), 5000):
        r.delete(*keys[i : i + 5000])


def snapshot(r: redis.Redis, ns: str, *, versions: bool = True) -> dict[bytes, Any]:
    """Every key of the namespace with its value (TTLs aside). ``versions=False``: a user
    state without its version, 8 random bytes each write draws, for comparing the states
    two stores wrote; with them, the same store before and after (nothing rewritten)."""
    out: dict[bytes, Any] = {}
    for key in r.scan_iter(f"{ns}:*", count=5000):
        kind = r.type(key)
        if kind == b"zset":
            out[key] = r.zrange(key, 0, -1, withscores=True)
        elif kind == b"hash":
            out[key] = r.hgetall(key)
        else:
            value = r.get(key)
            out[key] = value[8:] if not versions and key.endswith(b":st") and value else value
    return out


def redis_of(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis.url.get_secret_value())


def prefixed(records: Sequence[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    """``prefix`` (ending in ``-``) before every id: transactions, users and merchants of their own."""
    return list(retag(records, prefix.removesuffix("-"), ("transaction_id", "user_id", "merchant_id")))


def past_week() -> datetime:
    """A random Monday between 2003 and 2012: nobody else's rows live there."""
    return datetime(2003, 1, 6, tzinfo=UTC) + timedelta(weeks=random.randrange(500))


def tx(prefix: str, i: int, t: datetime, **kw: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "transaction_id": f"{prefix}t{i:05d}", "user_id": f"{prefix}u1", "merchant_id": f"{prefix}m1",
        "amount": 10.0 + i, "currency": "EUR", "event_time": t, "country": "FR", "device_id": "d1",
        "channel": "card_present", "merchant_category": "grocery", "lat": 48.85 + i / 1000, "lon": 2.35,
        "ip": None,
    }  # fmt: skip
    rec.update(kw)
    return rec


def by_id(records: Sequence[dict[str, Any]], matrix: np.ndarray) -> dict[str, np.ndarray]:
    return {r["transaction_id"]: row for r, row in zip(records, matrix, strict=True)}


def assert_features_match(online: np.ndarray, offline: np.ndarray, what: str) -> None:
    for j, name in enumerate(FEATURE_NAMES):
        a, b = online[:, j].astype(np.float64), offline[:, j].astype(np.float64)
        if name in EXACT:
            bad = np.flatnonzero(a != b)
        else:
            bad = np.flatnonzero(np.abs(a - b) > ATOL + RTOL * np.abs(b))
        assert len(bad) == 0, f"{what}: {name} differs on {len(bad)} rows, e.g. {a[bad[:3]]} vs {b[bad[:3]]}"


def labels_for(records: Sequence[dict[str, Any]], share: int = 7) -> list[dict[str, Any]]:
    """Deterministic labels for about 1 in ``share`` transactions: a third of them fraud,
    arriving 2 min to 10 days later (after the transaction's batch, as in production)."""
    out = []
    for r in records:
        h = int(hashlib.sha256(r["transaction_id"].encode()).hexdigest()[:12], 16)
        if h % share == 0:
            delay = timedelta(seconds=120 + (h >> 8) % (10 * 86_400))
            fraud = (h >> 4) % 3 == 0
            out.append({"transaction_id": r["transaction_id"], "is_fraud": fraud,
                        "scenario": "account_takeover" if fraud else None,
                        "labelled_at": r["event_time"] + delay})  # fmt: skip
    return sorted(out, key=lambda lab: lab["labelled_at"])


def write_pg(dsn: str, records: Sequence[dict[str, Any]], labels: Sequence[dict[str, Any]]) -> None:
    rows = [
        (r["transaction_id"], r["user_id"], r["merchant_id"], r["amount"], r["currency"], r["event_time"],
         r["country"], r["device_id"], r["channel"], r["merchant_category"], r["lat"], r["lon"], r["ip"],
         None, None)
        for r in records
    ]  # fmt: skip
    sink = PostgresSink(dsn)
    for i in range(0, len(rows), 5000):
        sink.write(rows[i : i + 5000], [])
    sink.close()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO labels (transaction_id, is_fraud, scenario, labelled_at) VALUES %s "
            "ON CONFLICT DO NOTHING",
            [(lab["transaction_id"], lab["is_fraud"], lab["scenario"], lab["labelled_at"]) for lab in labels],
        )
    conn.close()


def delete_pg(dsn: str, tx_ids: Sequence[str]) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM labels WHERE transaction_id = ANY(%s)", (list(tx_ids),))
        cur.execute("DELETE FROM transactions WHERE transaction_id = ANY(%s)", (list(tx_ids),))
    conn.close()


# -- the skew test -------------------------------------------------------------------------------
@pytest.mark.slow
def test_online_and_offline_features_agree_on_20k_transactions(
    store: OnlineStore, local_stack: Settings
) -> None:
    """20,000 simulated transactions through the real online path in batches of 500 (labels
    arriving in between, one batch redelivered), then the offline frame from PostgreSQL: every
    feature of every transaction matches within the documented tolerance."""
    dsn = local_stack.postgres.dsn.get_secret_value()
    prefix = f"sk{uuid.uuid4().hex[:8]}-"
    start = past_week()
    # Four bursts of traffic (~4 min each) by the same 500 users over 34 days: three of them
    # straddle a UTC midnight (Sunday to Monday first), so a merchant's day windows gain a day
    # mid-burst; day 8 drops day -1/0 out of the 7-day windows, and day 34 sees the burst of
    # day 3/4 half inside its 30 days (the user's retained events span 30 d + 1 h).
    offsets = (-timedelta(minutes=2), timedelta(days=4, minutes=-2), timedelta(days=8, hours=10),
               timedelta(days=34, minutes=-2))  # fmt: skip
    records: list[dict[str, Any]] = []
    for k, offset in enumerate(offsets):
        burst = demo_transactions(5000, seed=1000 + k, users=500, start=start + offset)
        records += prefixed(list(burst), prefix)
    records.sort(key=lambda r: r["event_time"])
    labels = labels_for(records)
    try:
        online: dict[str, np.ndarray] = {}
        done: set[str] = set()
        pending = list(labels)
        batches = [records[i : i + 500] for i in range(0, len(records), 500)]
        for b, batch in enumerate(batches):
            t_max = max(r["event_time"] for r in batch)
            due = [lab for lab in pending if lab["labelled_at"] <= t_max]
            pending = [lab for lab in pending if lab["labelled_at"] > t_max]
            assert all(lab["transaction_id"] in done for lab in due)
            store.apply_labels(due)
            online.update(by_id(batch, store.update_and_compute(batch)))
            done.update(r["transaction_id"] for r in batch)
            if b == 17:  # the consumer died before committing: the last two batches come again
                store.update_and_compute(batches[16])
                store.update_and_compute(batch)
            write_pg(dsn, batch, [])
        write_pg(dsn, [], labels)

        frame = build_frame(
            dsn, start=records[0]["event_time"], end=records[-1]["event_time"] + timedelta(milliseconds=1)
        )
        frame = frame[frame["transaction_id"].str.startswith(prefix)].set_index("transaction_id")
        assert len(frame) == len(records)
        ids = [r["transaction_id"] for r in records]
        offline = frame.loc[ids, list(FEATURE_NAMES)].to_numpy()
        assert_features_match(np.vstack([online[i] for i in ids]), offline, "online vs PostgreSQL")

        # the in-memory path is the same engine: identical to the PostgreSQL one
        mem = frame_from_records(records, labels).set_index("transaction_id")
        np.testing.assert_array_equal(mem.loc[ids, list(FEATURE_NAMES)].to_numpy(), offline)
        assert int(frame["is_fraud"].sum()) == sum(lab["is_fraud"] for lab in labels)

        # the data exercised every feature (a silent all-zero column would prove nothing)
        for j, name in enumerate(FEATURE_NAMES):
            if name not in {"is_night", "channel_code"}:
                assert np.unique(offline[:, j]).size > 1, f"{name} is constant in the skew data"
        assert offline[:, FEATURE_NAMES.index("merchant_fraud_risk_30d")].max() > 0.011
        # the long windows reach beyond 7 days and across midnights
        col = {name: offline[:, j] for j, name in enumerate(FEATURE_NAMES)}
        # (the bursts of days 8 and 34 see users' events older than 7 days: 41 % of all rows)
        assert (col["user_tx_count_30d"] > col["user_tx_count_7d"]).mean() > 0.3
        assert (col["merchant_tx_count_30d"] > col["merchant_tx_count_7d"]).any()
        # the first burst's minutes after midnight see its minutes before midnight, and only those
        day = np.array([r["event_time"].date() for r in records])
        sunday, monday = sorted(set(day))[:2]
        assert col["merchant_tx_count_30d"][day == sunday].max() == 0
        assert col["merchant_tx_count_7d"][day == monday].max() > 0
    finally:
        delete_pg(dsn, [r["transaction_id"] for r in records])


# -- idempotency ---------------------------------------------------------------------------------
def test_reapplying_a_batch_leaves_the_state_unchanged(store: OnlineStore, local_stack: Settings) -> None:
    r = redis_of(local_stack)
    prefix = f"id{uuid.uuid4().hex[:8]}-"
    records = prefixed(list(demo_transactions(1500, seed=7, users=150, start=past_week())), prefix)
    store.update_and_compute(records[:1000])

    def labels(fraud: bool, minutes: int) -> list[dict[str, Any]]:
        later = timedelta(minutes=minutes)
        return [
            {"transaction_id": x["transaction_id"], "is_fraud": fraud, "labelled_at": x["event_time"] + later}
            for x in records[:50]
        ]

    store.apply_labels(labels(True, 5))
    first = store.update_and_compute(records[1000:])
    before = snapshot(r, store.namespace)
    again = store.update_and_compute(records[1000:])  # redelivered
    twice = store.update_and_compute(records[1200:1300] + records[1200:1300])  # duplicated inside a batch
    assert store.apply_labels(labels(False, 6)) == 0  # the first label of a transaction wins
    assert snapshot(r, store.namespace) == before
    # A redelivered record is scored as on its first delivery, every feature: windows end before
    # it (below the cap), and its running state (lifetime count, z-score, novelty) is the one
    # kept from when it was applied, not the state that already holds it. Before that was kept,
    # every row differed in those six features.
    np.testing.assert_array_equal(again, first)
    np.testing.assert_array_equal(twice, np.vstack([first[200:300], first[200:300]]))


def test_a_batch_split_into_rounds_gives_the_features_and_state_of_one_round(
    store: OnlineStore, local_stack: Settings
) -> None:
    """A batch may go to Redis in several read-compute-write rounds (a long event-time span, or
    ``round_size``); a user's events spread over several rounds (and one transaction in two)
    must see each other exactly as in one round, and leave the same keys behind."""
    r = redis_of(local_stack)
    prefix = f"sp{uuid.uuid4().hex[:8]}-"
    records = prefixed(list(demo_transactions(2400, seed=11, users=120, start=past_week())), prefix)
    batches = [records[:1700], records[1700:] + records[1690:1700]]  # the last 10 redelivered
    url = local_stack.redis.url.get_secret_value()
    split = OnlineStore(url, namespace=f"{store.namespace}s", round_size=7)
    whole = OnlineStore(url, namespace=f"{store.namespace}w")
    try:
        for batch in batches:
            np.testing.assert_array_equal(split.update_and_compute(batch), whole.update_and_compute(batch))

        def state(ns: str) -> dict[bytes, Any]:  # keys without their namespace, wall-clock TTL marks aside
            snap = snapshot(r, ns, versions=False)
            for value in snap.values():
                if isinstance(value, dict):
                    value.pop(b"x", None)
            return {key.removeprefix(ns.encode()): value for key, value in snap.items()}

        assert state(split.namespace) == state(whole.namespace)
        assert len(state(whole.namespace)) > 120
    finally:
        for key in [*r.scan_iter(f"{split.namespace}:*"), *r.scan_iter(f"{whole.namespace}:*")]:
            r.delete(key)
    with pytest.raises(ValueError, match="round_size"):
        OnlineStore(url, round_size=0)


def test_a_duplicate_inside_the_first_batch_counts_once(store: OnlineStore, local_stack: Settings) -> None:
    prefix = f"dp{uuid.uuid4().hex[:8]}-"
    t = past_week()
    a, b = tx(prefix, 1, t), tx(prefix, 2, t + timedelta(seconds=5))
    m = store.update_and_compute([a, a, b])
    assert m[2, FEATURE_NAMES.index("user_tx_count_1m")] == 1
    assert m[2, FEATURE_NAMES.index("user_tx_count_lifetime")] == 1


# -- point in time -------------------------------------------------------------------------------
def test_a_label_arriving_after_a_transaction_never_reaches_its_features(store: OnlineStore) -> None:
    prefix = f"pt{uuid.uuid4().hex[:8]}-"
    t0 = past_week()
    first = tx(prefix, 1, t0)
    second = tx(prefix, 2, t0 + timedelta(hours=1), user_id=f"{prefix}u2")
    third = tx(prefix, 3, t0 + timedelta(hours=3), user_id=f"{prefix}u3")
    store.update_and_compute([first])
    # the label of `first` arrives at t0 + 2 h, but the store learns it before scoring `second`
    label = {"transaction_id": first["transaction_id"], "is_fraud": True, "scenario": "x",
             "labelled_at": t0 + timedelta(hours=2)}  # fmt: skip
    assert store.apply_labels([label]) == 1
    risk = FEATURE_NAMES.index("merchant_fraud_risk_7d")
    assert store.compute([second])[0, risk] == pytest.approx(0.01)  # not arrived yet at its event time
    m = store.update_and_compute([second, third])
    assert m[0, risk] == pytest.approx(0.01)
    assert m[1, risk] == pytest.approx(2 / 101)  # arrived before the third transaction
    off = frame_from_records([first, second, third], [label])
    np.testing.assert_allclose(off[list(FEATURE_NAMES)].to_numpy()[1:], m, rtol=RTOL, atol=ATOL)


def test_a_label_for_an_unknown_transaction_is_ignored(store: OnlineStore) -> None:
    lab = {"transaction_id": f"nope-{uuid.uuid4().hex}", "is_fraud": True, "labelled_at": past_week()}
    assert store.apply_labels([lab]) == 0


# -- out of order --------------------------------------------------------------------------------
def test_out_of_order_events_follow_the_documented_policy(store: OnlineStore, local_stack: Settings) -> None:
    """Late events get event-time-exact window features; once everything has arrived the state
    is the one in-order delivery gives; an event older than the retention is scored, not stored."""
    r = redis_of(local_stack)
    prefix = f"oo{uuid.uuid4().hex[:8]}-"
    t0 = past_week()
    at = [t0 + timedelta(minutes=m) for m in (0, 10, 30, 50, 20, 20, 70, 71)]
    recs = [tx(prefix, i, t, country="FR" if i != 4 else "DE") for i, t in enumerate(at)]
    recs[5] = tx(prefix, 5, at[5], merchant_id=f"{prefix}m2")  # same instant as the late one
    window_features = [f.name for f in FEATURES if f.aggregation in
                       {"count", "sum", "since_last", "distinct", "geo_distance", "geo_speed"}]  # fmt: skip
    cols = [FEATURE_NAMES.index(n) for n in window_features]

    got = by_id(recs[:4], store.update_and_compute(recs[:4]))
    got |= by_id(recs[4:6], store.update_and_compute(recs[4:6]))  # 30 and 40 minutes late
    got |= by_id(recs[6:], store.update_and_compute(recs[6:]))
    offline = frame_from_records(recs).set_index("transaction_id")
    ids = [x["transaction_id"] for x in recs]
    off = offline.loc[ids, list(FEATURE_NAMES)].to_numpy()
    on = np.vstack([got[i] for i in ids])
    # the late events (4, 5) and everything after them match the event-time truth...
    late_and_after = [4, 5, 6, 7]
    np.testing.assert_allclose(
        on[np.ix_(late_and_after, cols)], off[np.ix_(late_and_after, cols)], rtol=RTOL, atol=ATOL
    )
    # ...the events scored before the late ones arrived keep what was true when they were scored
    assert on[3, FEATURE_NAMES.index("user_tx_count_1h")] == 3
    assert off[3, FEATURE_NAMES.index("user_tx_count_1h")] == 5

    # the state is the one in-order delivery builds (up to float rounding of the sums)
    in_order = OnlineStore(local_stack.redis.url.get_secret_value(), namespace=store.namespace + "b")
    try:
        in_order.update_and_compute(sorted(recs, key=lambda x: (x["event_time"], x["transaction_id"])))
        probe = tx(prefix, 99, t0 + timedelta(minutes=90))
        np.testing.assert_allclose(in_order.compute([probe]), store.compute([probe]), rtol=RTOL, atol=ATOL)
    finally:
        keys = list(r.scan_iter(f"{in_order.namespace}:*"))
        if keys:
            r.delete(*keys)

    # far too late (before the retention of USER_SCAN_S + lateness = 30 d + 1 h): scored, not
    # stored (not counted for its merchant either), no crash
    before = snapshot(r, store.namespace)
    ancient = store.update_and_compute([tx(prefix, 50, t0 - timedelta(days=31))])
    assert np.isfinite(ancient).all()
    assert snapshot(r, store.namespace) == before


def test_compute_does_not_touch_the_store(store: OnlineStore, local_stack: Settings) -> None:
    r = redis_of(local_stack)
    prefix = f"cp{uuid.uuid4().hex[:8]}-"
    records = prefixed(list(demo_transactions(600, seed=3, users=200, start=past_week())), prefix)
    store.update_and_compute(records[:500])
    before = snapshot(r, store.namespace)
    scored = store.compute(records[500:])
    assert snapshot(r, store.namespace) == before
    assert scored.shape == (100, len(FEATURE_NAMES)) and np.isfinite(scored).all()
    # a record scored alone sees the same state as update_and_compute would
    one = records[500]
    np.testing.assert_allclose(store.compute([one]), store.update_and_compute([one]), rtol=RTOL, atol=ATOL)


def test_read_latest_is_the_latest_transactions_vector(store: OnlineStore) -> None:
    prefix = f"rl{uuid.uuid4().hex[:8]}-"
    records = prefixed(list(demo_transactions(800, seed=5, users=200, start=past_week())), prefix)
    m1 = store.update_and_compute(records[:400])
    m2 = store.update_and_compute(records[400:])
    rows = by_id(records, np.vstack([m1, m2]))
    user = records[-1]["user_id"]
    latest = max(
        (x for x in records if x["user_id"] == user), key=lambda x: (x["event_time"], x["transaction_id"])
    )
    vector = store.read_latest(user)
    assert vector is not None and vector.dtype == np.float32
    np.testing.assert_array_equal(vector, rows[latest["transaction_id"]])
    # an older event arriving now does not replace it
    older = latest | {"transaction_id": latest["transaction_id"] + "-old",
                      "event_time": latest["event_time"] - timedelta(minutes=1)}  # fmt: skip
    store.update_and_compute([older])
    np.testing.assert_array_equal(store.read_latest(user), vector)
    assert store.read_latest(f"{prefix}nobody") is None


def test_memory_per_user_is_bounded(store: OnlineStore, local_stack: Settings) -> None:
    """A bot paying every second keeps at most USER_EVENTS_CAP events; windows count those."""
    prefix = f"cap{uuid.uuid4().hex[:8]}-"
    t0 = past_week()
    recs = [tx(prefix, i, t0 + timedelta(seconds=i), merchant_id=f"{prefix}m{i}", device_id=f"d{i}")
            for i in range(cat.USER_EVENTS_CAP + 150)]  # fmt: skip
    online = np.vstack([store.update_and_compute(recs[i : i + 100]) for i in range(0, len(recs), 100)])
    state = store.user_state(f"{prefix}u1")
    assert state is not None and len(state.t) == cat.USER_EVENTS_CAP == len(state.txid)
    assert len(state.seen) <= cat.NOVELTY_CAP + 96
    assert_features_match(online, frame_from_records(recs)[list(FEATURE_NAMES)].to_numpy(), "capped user")


def test_redis_down_raises_store_unavailable() -> None:
    dead = OnlineStore("redis://127.0.0.1:1/0")
    with pytest.raises(StoreUnavailable):
        dead.compute([tx("x-", 1, past_week())])
    with pytest.raises(StoreUnavailable):
        dead.read_latest("u")


def test_reserved_characters_are_refused(store: OnlineStore) -> None:
    with pytest.raises(FeatureStoreError):
        store.update_and_compute([tx("rc-", 1, past_week(), device_id="a\x01b")])


def test_a_stored_decision_is_read_back_only_with_its_own_latest_transaction(
    store: OnlineStore, local_stack: Settings
) -> None:
    prefix = f"dc{uuid.uuid4().hex[:8]}-"
    t = past_week()
    first, second = tx(prefix, 1, t), tx(prefix, 2, t + timedelta(minutes=5))
    user = first["user_id"]
    url = local_stack.redis.url.get_secret_value()
    cache, writer = PredictCache(url, store.namespace), DecisionWriter(url, store.namespace)
    assert cache.read(user) is None  # unknown user
    store.update_and_compute([first])
    vector, decision = cache.read(user) or (None, "unknown")
    assert decision is None and vector is not None  # known, not decided yet
    np.testing.assert_array_equal(vector, store.read_latest(user))

    body = {"anomaly_score": 0.25, "is_fraud": False, "model_versions": {"if": "v1"}}
    writer.write({user: (first["transaction_id"], json.dumps(body))})
    assert (cache.read(user) or (None, None))[1] == body
    r = redis_of(local_stack)
    assert 0 < r.pttl(writer.key(user)) <= (cat.USER_TTL_S + cat.DAY) * 1000

    # a later transaction of the user: the stored decision is no longer its latest one's
    store.update_and_compute([second])
    assert (cache.read(user) or (None, "unknown"))[1] is None
    with pytest.raises(FeatureStoreError, match="control character"):
        writer.write({f"{user}\x1cx": ("t", "{}")})
    # an unreadable entry is as good as none (the API scores instead)
    for junk in ("{not json", "[1, 2]"):
        r.set(writer.key(user), f"{second['transaction_id']}\x1e{junk}")
        assert (cache.read(user) or (None, "unknown"))[1] is None


def test_drop_population_deletes_only_that_prefix(store: OnlineStore, local_stack: Settings) -> None:
    r = redis_of(local_stack)
    week = past_week()
    gone = list(retag(demo_transactions(300, seed=11, users=30, start=week), "gone[1]*",
                      ("transaction_id", "user_id", "merchant_id")))  # fmt: skip
    kept = list(retag(demo_transactions(300, seed=11, users=30, start=week), "gone1"))
    store.update_and_compute(gone)
    store.update_and_compute(kept)
    before = snapshot(r, store.namespace)
    owned = [k for k in before if b":gone[1]*-" in k]
    assert owned and any(b":m:gone[1]*-" in k for k in owned)
    (day,) = [k for k in before if b":txm:" in k]  # the tx -> merchant map of that day
    assert len(before[day]) == 600
    # glob characters in the prefix are literal: as a glob, gone[1]* would match gone1-u…, not gone[1]*-u…
    assert store.drop_population("gone[1]*") == len(owned) + 300
    expected = {k: v for k, v in before.items() if k not in owned}
    expected[day] = {tx: m for tx, m in before[day].items() if not tx.startswith(b"gone[1]*-")}
    assert len(expected[day]) == 300
    assert snapshot(r, store.namespace) == expected
    with pytest.raises(ValueError, match="empty prefix"):
        store.drop_population("")


def test_a_concurrent_writer_never_makes_a_transaction_count_twice(
    store: OnlineStore, local_stack: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two actors on the same records (a rebalance, a zombie): the second one's guarded write
    finds the users' versions moved, computes them again on what the first wrote, and applies
    nothing twice — user state, merchant counters and features as after one delivery."""
    r = redis_of(local_stack)
    prefix = f"cw{uuid.uuid4().hex[:8]}-"
    records = prefixed(list(demo_transactions(600, seed=13, users=60, start=past_week())), prefix)
    url = local_stack.redis.url.get_secret_value()
    once = OnlineStore(url, namespace=f"{store.namespace}o")
    try:
        expected = once.update_and_compute(records)
        other = OnlineStore(url, namespace=store.namespace)
        real = engine.compute
        raced: list[bool] = []

        def compute_then_race(*args: Any, **kwargs: Any) -> engine.Outcome:
            out = real(*args, **kwargs)
            if not raced:  # the other actor applies the batch between our read and our write
                raced.append(True)
                monkeypatch.setattr(store_module.engine, "compute", real)
                other.update_and_compute(records)
                monkeypatch.setattr(store_module.engine, "compute", compute_then_race)
            return out

        monkeypatch.setattr(store_module.engine, "compute", compute_then_race)
        got = store.update_and_compute(records)
        assert raced
        # the loser's features are those of the state it finally saw: every record already
        # applied, so its window features are the first delivery's
        cols = [
            FEATURE_NAMES.index(n)
            for n in ("user_tx_count_1h", "user_amount_sum_24h", "merchant_tx_count_1h")
        ]
        np.testing.assert_allclose(got[:, cols], expected[:, cols], rtol=RTOL, atol=ATOL)

        def state(ns: str) -> dict[bytes, Any]:
            return {k.removeprefix(ns.encode()): v for k, v in snapshot(r, ns, versions=False).items()}

        assert state(store.namespace) == state(once.namespace)
    finally:
        keys = list(r.scan_iter(f"{once.namespace}:*"))
        if keys:
            r.delete(*keys)


class _Contended(OnlineStore):
    """A store whose first ``times`` reads are each followed by ``interloper()``, a second
    writer moving a user of the batch between this round's read and its guarded write (what
    a live consumer does to a rebuild running beside it)."""

    def __init__(self, url: str, namespace: str, interloper: Callable[[], None], times: int) -> None:
        super().__init__(url, namespace, round_size=100)
        read = self._read[0]
        self.moved = 0

        def read_then_move(keys: list[str], args: list[bytes]) -> Any:
            reply = read(keys=keys, args=args)
            if self.moved < times:
                self.moved += 1
                interloper()
            return reply

        self._read = [read_then_move]


def test_rebuild_outlasts_a_writer_that_keeps_moving_its_users(
    local_stack: Settings, store: OnlineStore, tmp_path: Any
) -> None:
    """Seven rounds in a row find a user changed under them: more than one batch's CAS retries
    (store_module._CAS_ROUNDS), so the batch fails with StoreUnavailable; the rebuild waits and
    replays it, and every transaction ends up in its user's state exactly once."""
    records = fresh_transactions(300, users=5)
    users = sorted({r["user_id"] for r in records})
    live = OnlineStore(local_stack.redis.url.get_secret_value(), namespace=store.namespace)
    moves = iter(range(1000))

    def interloper() -> None:  # a live transaction of every user, after the replayed ones
        n = next(moves)
        live.update_and_compute([dict(r, transaction_id=f"{r['transaction_id']}-live{n}",
                                      event_time=records[-1]["event_time"] + timedelta(seconds=1 + n))
                                 for r in records[: len(users) * 3] if r["user_id"] in users])  # fmt: skip

    contended = _Contended(local_stack.redis.url.get_secret_value(), store.namespace, interloper, times=7)
    assert store_module._CAS_ROUNDS < 7
    with private_postgres(local_stack, tmp_path / "var") as s:
        write_pg(s.postgres.dsn.get_secret_value(), records, [])
        since = min(r["event_time"] for r in records)
        stats = rebuild(s, contended, since=since, retry_s=60)
    assert stats.transactions == len(records) and contended.moved == 7
    for u in users:
        state = contended.user_state(u)
        assert state is not None
        mine = sorted(
            (r for r in records if r["user_id"] == u), key=lambda r: (r["event_time"], r["transaction_id"])
        )
        live_n = contended.moved * sum(r["user_id"] == u for r in records[: len(users) * 3])
        assert state.n == len(mine) + live_n  # every transaction counted exactly once
        # the retained events (the newest USER_EVENTS_CAP): the user's newest replayed ones, in order
        replayed = [t for t in state.txid if "-live" not in t]
        assert len(replayed) == min(len(mine), cat.USER_EVENTS_CAP - (len(state.txid) - len(replayed)))
        assert replayed == [r["transaction_id"] for r in mine][len(mine) - len(replayed) :]
