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
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2

from core.settings import Settings
from features import catalogue as cat
from features.online import OnlineStore

_COLUMNS = ("transaction_id", "user_id", "merchant_id", "amount", "currency", "event_time", "country",
            "device_id", "channel", "merchant_category", "lat", "lon", "ip")  # fmt: skip


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
) -> RebuildStats:
    """Replay transactions and labels from PostgreSQL into the online store."""
    t0 = time.monotonic()
    store = store or OnlineStore(settings.redis.urls())
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
                store.update_and_compute(records)
                n_tx += len(records)
        with conn.cursor(name="rebuild_labels") as cur:
            cur.itersize = batch
            cur.execute(
                "SELECT transaction_id, is_fraud, labelled_at FROM labels WHERE labelled_at >= %s"
                " ORDER BY labelled_at, transaction_id",
                (since,),
            )
            while rows := cur.fetchmany(batch):
                n_labels += store.apply_labels(
                    [{"transaction_id": t, "is_fraud": f, "labelled_at": at} for t, f, at in rows]
                )
        conn.rollback()
    finally:
        conn.close()
    return RebuildStats(n_tx, n_labels, time.monotonic() - t0, since)
