"""Hostile input against the real stores.

- The online feature store (real Redis, a private key namespace): any batch of records that
  passed validation is scored with finite features or refused with ``FeatureStoreError`` (only
  for the control characters the store reserves), and re-applying it changes nothing.
- SQL injection on every parameter that reaches SQL: the dashboard queries, the model registry,
  and the consumer's PostgreSQL sink (COPY of transaction fields). Payloads must come back as
  data (no rows, or stored verbatim), never as SQL: the tables survive, nothing sleeps.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import psycopg2
import pytest
import redis
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from core.contracts import DecisionRow, TxRow
from core.errors import ModelNotReady
from core.settings import Settings
from dashboards import queries
from dashboards.timerange import Window
from features.catalogue import FEATURE_NAMES
from features.online import FeatureStoreError, OnlineStore
from features.validation import validate
from ingest.sinks import PostgresSink
from training.registry import Registry

pytestmark = [pytest.mark.integration]

PROFILE = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.filter_too_much,
    ],
)
RESERVED = "\x01\x1c\x1d\x1e\x1f"
STORE_FIELDS = ("transaction_id", "user_id", "merchant_id", "country", "device_id", "channel",
                "merchant_category")  # fmt: skip
NOW = datetime.now(UTC)

PAYLOADS = [
    "' OR '1'='1",
    "' OR 1=1 --",
    "'; DROP TABLE transactions; --",
    '"; DROP TABLE decisions; --',
    "x'); DELETE FROM models; --",
    "' UNION SELECT version(), null, null --",
    "1; SELECT pg_sleep(3)",
    "'||pg_sleep(3)||'",
    "%s",
    "%(start)s",
    "$1",
    "\\'; TRUNCATE labels; --",
    "é' OR 'ü'='ü",
    "' AND 1=(SELECT count(*) FROM pg_catalog.pg_tables) --",
    "a" * 10_000,
]
TABLES = ("transactions", "decisions", "labels", "models", "training_runs")

ids = st.text(min_size=1, max_size=128).filter(lambda s: s.strip() != "")
hostile_record = st.fixed_dictionaries(
    {
        "transaction_id": ids,
        "user_id": st.one_of(ids, st.sampled_from(["u-hostile", "u-hostile-2"])),
        "merchant_id": st.one_of(ids, st.just("m-hostile")),
        "amount": st.one_of(
            st.floats(min_value=5e-324, max_value=1e9), st.sampled_from([1e9, 1e-4, 5e-324, 0.01])
        ),
        "currency": st.just("EUR"),
        "event_time": st.integers(
            min_value=int((NOW - timedelta(days=400)).timestamp() * 1000),
            max_value=int((NOW + timedelta(hours=23)).timestamp() * 1000),
        ),
        "country": st.sampled_from(["DE", "US", "FR"]),
        "device_id": st.one_of(st.none(), st.text(max_size=128)),
        "channel": st.one_of(st.none(), st.text(max_size=64), st.sampled_from(["online", "card_present"])),
        "merchant_category": st.one_of(st.none(), st.text(max_size=64)),
        "lat": st.one_of(st.none(), st.floats(min_value=-90, max_value=90)),
        "lon": st.one_of(st.none(), st.floats(min_value=-180, max_value=180)),
        "ip": st.one_of(st.none(), st.text(max_size=64)),
    }
)


def _consistent(rec: dict[str, Any]) -> dict[str, Any]:
    """Closer to what validation lets through: lat and lon both present or both absent."""
    if (rec["lat"] is None) != (rec["lon"] is None):
        rec = {**rec, "lat": None, "lon": None}
    return rec


def _validated(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records the consumer would hand to the store (the rest go to the DLQ)."""
    now_ms = int(time.time() * 1000)
    return [r for r in batch if validate({**r}, now_ms) is None]


@pytest.fixture(scope="module")
def store(local_stack: Settings) -> Iterator[OnlineStore]:
    ns = f"hostile-{uuid.uuid4().hex[:8]}"
    url = local_stack.redis.url.get_secret_value()
    yield OnlineStore(url, namespace=ns)
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{ns}:*", count=1000):
        client.delete(key)


@PROFILE
@given(st.lists(hostile_record.map(_consistent), min_size=1, max_size=20))
def test_online_store_scores_or_refuses_hostile_batches(
    store: OnlineStore, batch: list[dict[str, Any]]
) -> None:
    batch = _validated(batch)
    assume(batch)
    reserved = any(c in (r[k] or "") for r in batch for k in STORE_FIELDS for c in RESERVED)
    if reserved:
        with pytest.raises(FeatureStoreError, match="control character"):
            store.update_and_compute(batch)
        return
    # Duplicate ids inside one batch are a redelivery within the batch: allowed.
    first = store.update_and_compute(batch)
    assert first.shape == (len(batch), len(FEATURE_NAMES))
    assert np.isfinite(first).all()
    users = {r["user_id"] for r in batch}

    def size(u: str) -> int:
        state = store.user_state(u)
        return 0 if state is None else len(state.txid)

    sizes = {u: size(u) for u in users}
    again = store.update_and_compute(batch)  # a redelivery applies nothing twice
    assert np.isfinite(again).all()
    assert {u: size(u) for u in users} == sizes
    assert (
        store.apply_labels(
            [{"transaction_id": r["transaction_id"], "is_fraud": True, "labelled_at": NOW} for r in batch]
        )
        >= 0
    )
    for u in users:
        latest = store.read_latest(u)
        assert latest is None or np.isfinite(latest).all()


@PROFILE
@given(st.text(max_size=300))
def test_unknown_users_read_as_none(store: OnlineStore, user_id: str) -> None:
    """``GET /predict?user_id=`` goes to Redis with any text: never an error, just unknown."""
    assert store.read_latest(f"never-seen-{user_id}") is None


# -- SQL injection ---------------------------------------------------------------------------------


def _table_counts(dsn: str) -> dict[str, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        counts = {}
        for t in TABLES:
            cur.execute(f"SELECT count(*) FROM {t}")  # fixed names above
            counts[t] = cur.fetchone()[0]
    conn.close()
    return counts


@pytest.fixture
def dsn(local_stack: Settings) -> Iterator[str]:
    dsn = local_stack.postgres.dsn.get_secret_value()
    before = _table_counts(dsn)
    yield dsn
    after = _table_counts(dsn)
    # Others write to the shared stack meanwhile: tables may grow, never vanish or shrink.
    assert set(after) == set(TABLES)
    assert all(after[t] >= before[t] for t in ("transactions", "decisions", "models")), (before, after)


def _fast(call: Callable[[], Any]) -> Any:
    t0 = time.monotonic()
    result = call()
    assert time.monotonic() - t0 < 2.5, "an injected pg_sleep ran"
    return result


@pytest.mark.parametrize("payload", PAYLOADS)
def test_dashboard_queries_treat_payloads_as_data(dsn: str, payload: str) -> None:
    window = Window(NOW - timedelta(hours=1), NOW)
    assert _fast(lambda: queries.user_timeline(dsn, payload, window)).empty
    assert _fast(lambda: queries.transaction(dsn, payload)).empty
    with pytest.raises(ValueError, match="bucket unit"):
        queries.trends(dsn, window, payload)
    with pytest.raises(psycopg2.DataError):  # a LIMIT/bins that is not a number is refused
        _fast(lambda: queries.top_users(dsn, window, limit=payload))  # type: ignore[arg-type]
    with pytest.raises(psycopg2.DataError):
        _fast(lambda: queries.score_histogram(dsn, window, bins=payload))  # type: ignore[arg-type]
    try:  # a step that is not an interval is refused, or read as one ('1' = 1 second): data either way
        _fast(lambda: queries.throughput(dsn, window, step=payload))  # type: ignore[arg-type]
    except psycopg2.Error as exc:
        assert exc.pgcode in {"22007", "22008", "22023", "22P02", "22003", "54000"}, exc.pgcode


@PROFILE
@given(st.text(alphabet=st.characters(blacklist_characters="\x00"), max_size=200))
def test_dashboard_user_and_transaction_lookups_with_any_text(local_stack: Settings, text: str) -> None:
    dsn = local_stack.postgres.dsn.get_secret_value()
    window = Window(NOW - timedelta(minutes=5), NOW)
    assert queries.user_timeline(dsn, f"hostile-{text}", window).empty
    assert queries.transaction(dsn, f"hostile-{text}").empty


@pytest.mark.parametrize("payload", PAYLOADS)
def test_registry_treats_payloads_as_data(dsn: str, local_stack: Settings, payload: str) -> None:
    registry = Registry(local_stack)
    with pytest.raises(ModelNotReady):
        _fast(lambda: registry.get(payload, payload))
    with pytest.raises(ModelNotReady):
        _fast(lambda: registry.production(payload))
    assert _fast(lambda: registry.list(payload)) == []
    stages = {(m.name, m.version): m.stage for m in registry.list()}
    with contextlib.suppress(ModelNotReady):  # matches no row: refused, or a no-op
        _fast(lambda: registry.promote(payload, payload))
    assert {(m.name, m.version): m.stage for m in registry.list()} == stages


def test_sink_stores_payloads_verbatim(dsn: str) -> None:
    """Every text column of a consumed transaction, via COPY + INSERT … SELECT: stored as written."""
    sink = PostgresSink(dsn)
    tag = uuid.uuid4().hex[:8]
    tx_rows, decision_rows, expected = [], [], {}
    for i, p in enumerate([*PAYLOADS, "tab\there", "new\nline", "back\\slash", "\\N", "\\."]):
        tx_id = f"inj-{tag}-{i}-{p[:50]}"
        tx_rows.append(TxRow(tx_id, p, p, 12.5, "EUR", NOW, "DE", p, p, p, None, None, p, 0, i))
        decision_rows.append(DecisionRow(tx_id, p, '{"if": 0.5}', 0.5, False, p[:100], 1.0, None))
        expected[tx_id] = p
    try:
        assert sink.write(tx_rows, decision_rows) == len(tx_rows)
    finally:
        sink.close()
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT t.transaction_id, t.user_id, t.merchant_id, t.device_id, t.channel,"
            " t.merchant_category, t.ip, d.user_id, d.model_version"
            " FROM transactions t JOIN decisions d USING (transaction_id) WHERE t.transaction_id = ANY(%s)",
            (list(expected),),
        )
        rows = cur.fetchall()
        assert len(rows) == len(expected)
        for tx_id, *values in rows:
            p = expected[tx_id]
            assert values[:-1] == [p] * 7 and values[-1] == p[:100]
        cur.execute("DELETE FROM decisions WHERE transaction_id = ANY(%s)", (list(expected),))
        cur.execute("DELETE FROM transactions WHERE transaction_id = ANY(%s)", (list(expected),))
    conn.close()
