"""Rebuild the online store from PostgreSQL after Redis lost its state (a restart without its
append-only file, a flushed or replaced instance).

Every transaction PostgreSQL holds from the last ``NOVELTY_HORIZON_S`` (+ allowed lateness) is
replayed through :meth:`OnlineStore.update_and_compute` in ``(event_time, transaction_id)``
order, then every label through :meth:`OnlineStore.apply_labels` in arrival order. Both calls
are idempotent per transaction id and exact in any arrival order, so the rebuild can run while
the consumers keep scoring: a transaction applied by both is applied once. The replay writes
everything a live batch writes: users' states (30 days of events), the merchants' minute, hour
and day counters (the 7- and 30-day windows: counts and cent sums) and the tx -> merchant maps.
With shards (``FRAUDRAY_REDIS_SHARDS``) it writes each user's part to the user's shard, so it is
also how a store moves to another number of shards: flush them all, then rebuild.

Running beside the consumers, a replayed round can find a user's state changed under it (the
guarded write then writes nothing) or Redis still loading: the batch is tried again after a
growing pause, as the consumers do, for up to ``retry_s``. Rounds of ``ROUND`` records keep
the users one write guards few, so a live consumer rarely moves one of them.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import psycopg2

from core.errors import StoreUnavailable
from core.settings import Settings
from features import catalogue as cat
from features.online import OnlineStore

_COLUMNS = ("transaction_id", "user_id", "merchant_id", "amount", "currency", "event_time", "country",
            "device_id", "channel", "merchant_category", "lat", "lon", "ip")  # fmt: skip
T = TypeVar("T")
ROUND = 500  # records per read-compute-write round of the replay


@dataclass(frozen=True)
class RebuildStats:
    transactions: int
    labels: int
    seconds: float
    since: datetime


def horizon() -> timedelta:
    """How far back state matters: the longest lookback of any feature, plus lateness."""
    merchant_days = max(cat.MERCHANT_DAY_WINDOWS, default=0) + cat.DAY  # whole days before today's
    longest = max(cat.NOVELTY_HORIZON_S, cat.USER_SCAN_S, merchant_days, cat.LABEL_HORIZON_DAYS * cat.DAY)
    return timedelta(seconds=longest + cat.ALLOWED_LATENESS_S)


def rebuild(
    settings: Settings,
    store: OnlineStore | None = None,
    *,
    since: datetime | None = None,
    batch: int = 5000,
    retry_s: float = 120.0,
) -> RebuildStats:
    """Replay transactions and labels from PostgreSQL into the online store. A batch the store
    refuses for now (StoreUnavailable) is tried again for up to ``retry_s``; then it raises."""
    t0 = time.monotonic()
    store = store or OnlineStore(settings.redis.urls(), round_size=ROUND)
    since = since or datetime.now(UTC) - horizon()
    conn = psycopg2.connect(settings.postgres.dsn.get_secret_value())
    n_tx = n_labels = 0
    try:
        conn.set_session(readonly=True)
        # Server-side cursors: millions of rows stream through in batches, never all in memory.
        with conn.cursor(name="rebuild_transactions") as cur:
            cur.itersize = batch
            cur.execute(
                f"SELECT {', '.join(_COLUMNS)} FROM transactions WHERE event_time >= %s"  # noqa: S608 - fixed columns
                " ORDER BY event_time, transaction_id",
                (since,),
            )
            while rows := cur.fetchmany(batch):
                records: list[dict[str, Any]] = [dict(zip(_COLUMNS, r, strict=True)) for r in rows]
                _patiently(functools.partial(store.update_and_compute, records), retry_s)
                n_tx += len(records)
        with conn.cursor(name="rebuild_labels") as cur:
            cur.itersize = batch
            cur.execute(
                "SELECT transaction_id, is_fraud, labelled_at FROM labels WHERE labelled_at >= %s"
                " ORDER BY labelled_at, transaction_id",
                (since,),
            )
            while rows := cur.fetchmany(batch):
                labels = [{"transaction_id": t, "is_fraud": f, "labelled_at": at} for t, f, at in rows]
                n_labels += _patiently(functools.partial(store.apply_labels, labels), retry_s)
        conn.rollback()
    finally:
        conn.close()
    return RebuildStats(n_tx, n_labels, time.monotonic() - t0, since)


def _patiently(call: Callable[[], T], retry_s: float) -> T:
    """``call()``, again after 0.05, 0.1, … 2 s (jittered) while the store answers
    StoreUnavailable, until ``retry_s`` has passed. Safe because both calls are idempotent per
    transaction id: rounds of a batch that did commit are not applied twice."""
    deadline = time.monotonic() + retry_s
    pause = 0.05
    while True:
        try:
            return call()
        except StoreUnavailable:
            if time.monotonic() + pause > deadline:
                raise
            time.sleep(pause * (1 + random.random()))  # noqa: S311 - jitter, not a secret
            pause = min(2 * pause, 2.0)
