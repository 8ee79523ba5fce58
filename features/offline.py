"""The offline engine: point-in-time feature frames from PostgreSQL (``transactions`` +
``labels``) or from in-memory records, for training.

It computes the same raw aggregates as the online engine, vectorised over the whole history
(sorted arrays + ``searchsorted``), and hands them to :func:`features.kernel.assemble`, the one
copy of the feature math. Point in time: a transaction's aggregates use only transactions
before it (see :mod:`features.catalogue` for the exact order) and only labels whose
``labelled_at`` is at or before its event time; the label columns of the frame (``is_fraud``,
``scenario``) are the training target, never an input.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg2

from features import catalogue as cat
from features.catalogue import FEATURE_NAMES
from features.kernel import MS_PER_DAY, NONE, NOT_APPLICABLE, RAW_KEYS, TxBatch, assemble, to_cents, to_ms

RECORD_COLUMNS = (
    "transaction_id", "user_id", "merchant_id", "amount", "event_time", "country", "device_id",
    "channel", "merchant_category", "lat", "lon",
)  # fmt: skip
LABEL_COLUMNS = ("is_fraud", "scenario")
ID_COLUMNS = ("transaction_id", "user_id", "merchant_id", "event_time")


class _Groups:
    """Rows sorted by (group, time) with range search per group, via one composite sorted key."""

    def __init__(self, group: np.ndarray, t: np.ndarray, n_groups: int) -> None:
        counts = np.bincount(group, minlength=n_groups)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.tmin = np.zeros(n_groups, dtype=np.int64)
        tmax = np.zeros(n_groups, dtype=np.int64)
        has = counts > 0
        self.tmin[has] = t[starts[has]]
        tmax[has] = t[starts[has] + counts[has] - 1]
        self.span = tmax - self.tmin
        # A gap of 2 between groups keeps clipped queries strictly between neighbours.
        widths = self.span + 2
        if widths.sum(dtype=np.float64) > 2**62:
            raise OverflowError("time span x entities too large for one frame: pass start/end")
        self.offset = np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(np.int64)
        self.key = self.offset[group] + (t - self.tmin[group])
        self.starts = starts

    def search(self, group: np.ndarray, t: np.ndarray, side: str) -> np.ndarray:
        """Index of the first row of ``group`` with time >= t (``left``) or > t (``right``)."""
        rel = np.clip(t - self.tmin[group], -1, self.span[group] + 1)
        return np.searchsorted(self.key, self.offset[group] + rel, side=side)  # type: ignore[call-overload]


def _prev_same(entity: np.ndarray, values: np.ndarray) -> np.ndarray:
    """For each row (in processing order), the previous row of the same entity with the same
    value; -1 when none. ``values`` are non-negative integer codes."""
    n = len(values)
    order = np.lexsort((np.arange(n), values, entity))
    prev = np.full(n, -1, dtype=np.int64)
    same = (entity[order[1:]] == entity[order[:-1]]) & (values[order[1:]] == values[order[:-1]])
    prev[order[1:]] = np.where(same, order[:-1], -1)
    return prev


@dataclass(frozen=True)
class _History:
    """The users' transactions in processing order (user, event time, tx id), with for each row
    the bounds of what the online store holds for it: the row's entity (a user; a new one
    after ``USER_TTL_S`` idle), ``s`` = first row at the same instant (windows stop before it)
    and ``retained`` = first of the newest ``USER_EVENTS_CAP`` rows processed before it."""

    t: np.ndarray
    entity: np.ndarray
    groups: _Groups
    start: np.ndarray
    s: np.ndarray
    retained: np.ndarray

    @classmethod
    def of(cls, df: pd.DataFrame, t: np.ndarray) -> _History:
        n = len(df)
        user_codes = pd.factorize(df["user_id"], sort=False)[0]
        new_user = np.ones(n, dtype=bool)
        new_user[1:] = user_codes[1:] != user_codes[:-1]
        gap = np.zeros(n, dtype=np.int64)
        gap[1:] = t[1:] - t[:-1]
        entity = np.cumsum(new_user | (gap > cat.USER_TTL_S * 1000)) - 1
        groups = _Groups(entity, t, int(entity[-1]) + 1)
        start = groups.starts[entity]
        retained = np.maximum(start, np.arange(n, dtype=np.int64) - cat.USER_EVENTS_CAP)
        return cls(t, entity, groups, start, groups.search(entity, t, "left"), retained)

    def lower(self, window_s: int) -> np.ndarray:
        """First retained row inside ``[t - window, t)``."""
        return np.maximum(self.groups.search(self.entity, self.t - window_s * 1000, "left"), self.retained)


def _windows(h: _History, amount: np.ndarray, raw: dict[str, np.ndarray]) -> None:
    n = len(amount)
    ex_amount = pd.Series(amount).groupby(h.entity).cumsum().to_numpy() - amount  # sum before row
    for w in cat.USER_WINDOWS:
        a = h.lower(w)
        has = h.s > a
        raw[f"user.count.{w}"] = np.where(has, h.s - a, 0).astype(np.float64)
        a_c, s_c = np.minimum(a, n - 1), np.minimum(h.s, n - 1)
        raw[f"user.sum.{w}"] = np.where(has, ex_amount[s_c] - ex_amount[a_c], 0.0)


def _previous(h: _History, batch: TxBatch, raw: dict[str, np.ndarray]) -> None:
    a_scan = h.lower(cat.USER_SCAN_S)
    has_prev = h.s > a_scan
    before = np.maximum(h.s - 1, 0)
    raw["user.prev_ms"] = np.where(has_prev, h.t[before], NONE).astype(np.float64)
    located = ~np.isnan(batch.lat) & ~np.isnan(batch.lon)
    last_loc = np.maximum.accumulate(np.where(located, np.arange(len(h.t)), -1))[before]
    ok = has_prev & (last_loc >= a_scan)
    j = np.maximum(last_loc, 0)
    raw["user.prev_loc_ms"] = np.where(ok, h.t[j], NONE).astype(np.float64)
    raw["user.prev_lat"] = np.where(ok, batch.lat[j], 0.0)
    raw["user.prev_lon"] = np.where(ok, batch.lon[j], 0.0)


def _distinct_countries(h: _History, country: pd.Series, raw: dict[str, np.ndarray]) -> None:
    prev_c = _prev_same(h.entity, pd.factorize(country)[0])
    for w in cat.DISTINCT_WINDOWS:
        a = h.lower(w)
        length = np.maximum(h.s - a, 0)
        distinct = np.zeros(len(a), dtype=np.int64)
        # a row of [a, s) is a country's first occurrence there when its previous one is before a
        for d in range(1, int(length.max(initial=0)) + 1):
            rows = np.flatnonzero(length >= d)
            distinct[rows] += prev_c[h.s[rows] - d] < a[rows]
        # the transaction's own country counts unless it occurs in the window already
        q = prev_c.copy()
        while True:
            later = q >= h.s
            if not later.any():
                break
            q[later] = prev_c[q[later]]
        raw[f"user.distinct.{w}"] = (distinct + (q < a)).astype(np.float64)


def _welford(h: _History, amount: np.ndarray, raw: dict[str, np.ndarray]) -> None:
    """n, mean and M2 of the entity's amounts before each row (what Welford's update holds)."""
    pos = (np.arange(len(amount)) - h.start).astype(np.float64)
    first = amount[h.start]
    y = amount - first  # centred on the entity's first amount: no cancellation in m2
    grouped = pd.DataFrame({"y": y, "y2": y * y}).groupby(h.entity).cumsum().to_numpy()
    s1, s2 = grouped[:, 0] - y, grouped[:, 1] - y * y
    safe = np.maximum(pos, 1.0)
    raw["user.n"] = pos
    raw["user.mean"] = np.where(pos > 0, first + s1 / safe, 0.0)
    raw["user.m2"] = np.where(pos > 0, np.maximum(s2 - s1 * s1 / safe, 0.0), 0.0)


def _novelty(h: _History, df: pd.DataFrame, raw: dict[str, np.ndarray]) -> None:
    """When each key was last seen before the row (-1 never, -2 the row has no value)."""
    for fld in cat.NOVELTY_FIELDS:
        col = df[fld]
        missing = col.isna().to_numpy() | (col.astype(str) == "").to_numpy()
        codes, uniques = pd.factorize(col)
        prev = _prev_same(h.entity, np.where(missing | (codes < 0), len(uniques), codes))
        seen = np.where(prev >= 0, h.t[np.maximum(prev, 0)], NONE).astype(np.float64)
        raw[f"user.seen.{fld}"] = np.where(missing, NOT_APPLICABLE, seen)


def _user_raw(df: pd.DataFrame, batch: TxBatch, raw: dict[str, np.ndarray]) -> None:
    """User aggregates; ``df``/``batch`` are in processing order (user, event time, tx id)."""
    h = _History.of(df, batch.t_ms)
    _windows(h, batch.amount, raw)
    _previous(h, batch, raw)
    _distinct_countries(h, df["country"], raw)
    _welford(h, batch.amount, raw)
    _novelty(h, df, raw)


def _merchant_raw(df: pd.DataFrame, labels: pd.DataFrame, raw: dict[str, np.ndarray]) -> None:
    """Merchant counts and label counts; ``df`` in any order, results aligned to it."""
    t = df["t_ms"].to_numpy(dtype=np.int64)
    codes, uniques = pd.factorize(df["merchant_id"])
    n_m = len(uniques)
    order = np.lexsort((t, codes))
    groups = _Groups(codes[order], t[order], n_m)
    # whole minutes [m - w, m) before the event's minute m: what per-minute counters give
    minute_start = t - t % 60_000
    for w in cat.MERCHANT_WINDOWS:
        lo = groups.search(codes, minute_start - w * 1000, "left")
        hi = groups.search(codes, minute_start, "left")
        raw[f"merchant.count.{w}"] = (hi - lo).astype(np.float64)
    # whole UTC days [d - w, d) before the event's day d, amounts in integer cents: what the
    # per-day counters give (exact, so the engines agree to the cent)
    day_start = t - t % MS_PER_DAY
    cents = np.concatenate([[0], np.cumsum(to_cents(df["amount"].to_numpy(dtype=np.float64))[order])])
    hi = groups.search(codes, day_start, "left")
    for w in cat.MERCHANT_DAY_WINDOWS:
        lo = groups.search(codes, day_start - w * 1000, "left")
        raw[f"merchant.dcount.{w}"] = (hi - lo).astype(np.float64)
        raw[f"merchant.dsum.{w}"] = (cents[hi] - cents[lo]).astype(np.float64)

    # Labels count for the merchant of their transaction when they arrive within the horizon.
    lab = labels.merge(df[["transaction_id", "merchant_id", "t_ms"]], on="transaction_id", how="inner")
    lag_days = lab["labelled_ms"] // MS_PER_DAY - lab["t_ms"] // MS_PER_DAY
    lab = lab[(lag_days >= 0) & (lag_days <= cat.LABEL_HORIZON_DAYS)]
    lab_codes = pd.Index(uniques).get_indexer(lab["merchant_id"])
    lab_t = lab["labelled_ms"].to_numpy(dtype=np.int64)
    fraud = lab["is_fraud"].to_numpy(dtype=bool)
    for name, mask in (("labels", np.ones(len(lab), dtype=bool)), ("fraud", fraud)):
        c, lt = lab_codes[mask], lab_t[mask]
        o = np.lexsort((lt, c))
        lg = _Groups(c[o], lt[o], n_m)
        for w in cat.RISK_WINDOWS:
            lo = lg.search(codes, t - w * 1000, "left")
            hi = lg.search(codes, t, "right")  # a label stamped at the event's instant has arrived
            raw[f"merchant.{name}.{w}"] = (hi - lo).astype(np.float64)


def _normalise_labels(labels: pd.DataFrame) -> pd.DataFrame:
    out = labels[["transaction_id", "is_fraud", "scenario", "labelled_ms"]].copy()
    out["is_fraud"] = out["is_fraud"].astype(bool)
    # The first label of a transaction is final (labels.transaction_id is the primary key).
    return out.drop_duplicates("transaction_id", keep="first").reset_index(drop=True)


def features_frame(tx: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """Point-in-time features of ``tx`` (record columns + ``t_ms``) given ``labels``
    (``transaction_id``, ``is_fraud``, ``scenario``, ``labelled_ms``); rows in ``tx`` order."""
    tx = tx.drop_duplicates("transaction_id", keep="first").reset_index(drop=True)
    labels = _normalise_labels(labels)
    n = len(tx)
    if n == 0:
        return pd.DataFrame(
            columns=[*FEATURE_NAMES, *ID_COLUMNS, *LABEL_COLUMNS]
        )  # fmt: skip
    order = tx.sort_values(["user_id", "t_ms", "transaction_id"], kind="stable").index.to_numpy()
    ordered = tx.loc[order].reset_index(drop=True)
    batch = TxBatch.from_frame(ordered)
    raw: dict[str, np.ndarray] = {}
    _user_raw(ordered, batch, raw)
    _merchant_raw(ordered, labels, raw)
    missing = set(RAW_KEYS) - set(raw)
    if missing:
        raise RuntimeError(f"offline engine lacks raw aggregates {sorted(missing)}")
    matrix = assemble(batch, raw)

    out = pd.DataFrame(matrix, columns=list(FEATURE_NAMES))
    out["transaction_id"] = ordered["transaction_id"].to_numpy()
    out["user_id"] = ordered["user_id"].to_numpy()
    out["merchant_id"] = ordered["merchant_id"].to_numpy()
    out["event_time"] = pd.to_datetime(ordered["t_ms"].to_numpy(), unit="ms", utc=True)
    target = labels.set_index("transaction_id")
    out["is_fraud"] = out["transaction_id"].map(target["is_fraud"]).eq(True).astype(np.int8)
    out["scenario"] = out["transaction_id"].map(target["scenario"]).astype(object)
    out["scenario"] = out["scenario"].where(out["scenario"].notna(), None)
    back = np.empty(n, dtype=np.int64)
    back[order] = np.arange(n)
    return out.iloc[back].reset_index(drop=True)


def frame_from_records(
    records: Iterable[Mapping[str, Any]], labels: Iterable[Mapping[str, Any]] = ()
) -> pd.DataFrame:
    """Features of in-memory transaction dicts (Avro fields) given label dicts
    (``transaction_id``, ``is_fraud``, ``scenario``, ``labelled_at``). Rows follow ``records``;
    columns: ``FEATURE_NAMES``, then ids, ``event_time``, ``is_fraud`` (0 when unlabelled) and
    ``scenario``."""
    rows = list(records)
    tx = pd.DataFrame.from_records(
        [{c: r.get(c) for c in RECORD_COLUMNS} for r in rows], columns=list(RECORD_COLUMNS)
    )
    tx["t_ms"] = np.fromiter((to_ms(r["event_time"]) for r in rows), dtype=np.int64, count=len(rows))
    tx["amount"] = tx["amount"].astype(np.float64)
    for c in ("lat", "lon"):
        tx[c] = pd.to_numeric(tx[c], errors="raise").astype(np.float64)
    lab_rows = [
        {"transaction_id": lab["transaction_id"], "is_fraud": bool(lab["is_fraud"]),
         "scenario": lab.get("scenario"), "labelled_ms": to_ms(lab["labelled_at"])}
        for lab in labels
    ]  # fmt: skip
    lab_df = pd.DataFrame(lab_rows, columns=["transaction_id", "is_fraud", "scenario", "labelled_ms"])
    return features_frame(tx, lab_df)


_TX_SQL = """
SELECT transaction_id, user_id, merchant_id, amount,
       floor(extract(epoch FROM event_time) * 1000)::bigint AS t_ms,
       country, device_id, channel, merchant_category, lat, lon
FROM transactions {where}
"""
_LABEL_SQL = """
SELECT transaction_id, is_fraud, scenario,
       floor(extract(epoch FROM labelled_at) * 1000)::bigint AS labelled_ms
FROM labels
"""
_STRING_COLUMNS = ("transaction_id", "user_id", "merchant_id", "country", "device_id", "channel",
                   "merchant_category", "scenario")  # fmt: skip
_STRINGS = dict.fromkeys(_STRING_COLUMNS, "string")


def _copy_csv(cur: Any, sql: str) -> pd.DataFrame:
    buf = io.StringIO()
    cur.copy_expert(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv, HEADER)", buf)
    buf.seek(0)
    head = buf.readline()
    buf.seek(0)
    dtypes = {c: t for c, t in _STRINGS.items() if c in head.strip().split(",")}
    frame = pd.read_csv(buf, dtype=dtypes, keep_default_na=False, na_values={c: [""] for c in dtypes})
    for c in dtypes:
        frame[c] = frame[c].astype(object).where(frame[c].notna(), None)
    return frame


def build_frame(dsn: str, start: datetime | None = None, end: datetime | None = None) -> pd.DataFrame:
    """Point-in-time features of every transaction in PostgreSQL with ``start <= event_time < end``
    (either bound optional), ordered by event time.

    The whole history before ``end`` is read (lifetime and 90-day state need it); labels are
    read in full and only those that had arrived by each transaction's event time feed its
    features, while ``is_fraud``/``scenario`` carry each transaction's eventual label.
    """
    conn = psycopg2.connect(dsn, connect_timeout=10)
    try:
        with conn, conn.cursor() as cur:
            where = cur.mogrify("WHERE event_time < %s", (end,)).decode() if end is not None else ""
            tx = _copy_csv(cur, _TX_SQL.format(where=where))
            labels = _copy_csv(cur, _LABEL_SQL)
    finally:
        conn.close()
    labels["is_fraud"] = labels["is_fraud"].astype(str).isin(["t", "true", "True", "1"])
    tx["t_ms"] = tx["t_ms"].astype(np.int64)
    tx["amount"] = tx["amount"].astype(np.float64)
    for c in ("lat", "lon"):
        tx[c] = pd.to_numeric(tx[c], errors="coerce").astype(np.float64)
    frame = features_frame(tx, labels)
    if start is not None:
        frame = frame[frame["event_time"] >= pd.Timestamp(start)]
    return frame.sort_values(["event_time", "transaction_id"], kind="stable").reset_index(drop=True)


def export_parquet(dsn: str, path: Path, start: datetime | None = None, end: datetime | None = None) -> int:
    """Write :func:`build_frame` to ``path`` (Parquet, zstd); returns the row count."""
    frame = build_frame(dsn, start, end)
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path, compression="zstd", index=False)
    return len(frame)
