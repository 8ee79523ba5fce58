"""The one copy of the feature math: raw aggregates in, feature matrix out.

Each engine (online Redis, offline pandas) gathers, per transaction, the *raw aggregates* named
by :data:`RAW_KEYS` (window counts and sums, the previous transaction's time and place, Welford
state, last-seen times, merchant counts, label counts); :func:`assemble` then computes every
catalogue feature from them with numpy. Anything that is arithmetic on those aggregates lives here
and nowhere else, so the engines can only disagree on the aggregates, which the skew test checks.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd

from features import catalogue as cat
from features.catalogue import FEATURE_NAMES, FEATURES, Feature

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
MS_PER_DAY = 86_400_000
EARTH_RADIUS_KM = 6371.0088

# Sentinels in raw aggregates (times are epoch ms, so never negative).
NONE = -1.0  # no such event (no previous transaction, key never seen)
NOT_APPLICABLE = -2.0  # the record has no value for the key (e.g. no device_id)


def _raw_keys() -> tuple[str, ...]:
    keys: list[str] = []
    for w in cat.USER_WINDOWS:
        keys += [f"user.count.{w}", f"user.sum.{w}"]
    keys += ["user.prev_ms", "user.prev_loc_ms", "user.prev_lat", "user.prev_lon"]
    keys += [f"user.distinct.{w}" for w in cat.DISTINCT_WINDOWS]
    keys += ["user.n", "user.mean", "user.m2"]
    keys += [f"user.seen.{fld}" for fld in cat.NOVELTY_FIELDS]
    keys += [f"merchant.count.{w}" for w in cat.MERCHANT_WINDOWS]
    for w in cat.MERCHANT_DAY_WINDOWS:  # whole UTC days: count, and amount sum in integer cents
        keys += [f"merchant.dcount.{w}", f"merchant.dsum.{w}"]
    for w in cat.RISK_WINDOWS:
        keys += [f"merchant.fraud.{w}", f"merchant.labels.{w}"]
    return tuple(keys)


RAW_KEYS: tuple[str, ...] = _raw_keys()  # the order of the online Lua script's output too
RAW_INDEX: dict[str, int] = {k: i for i, k in enumerate(RAW_KEYS)}


def to_ms(value: datetime | int | float) -> int:
    """Epoch milliseconds, exactly (integer arithmetic: no float rounding of timestamps)."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("event_time must be timezone-aware")
        return (value - _EPOCH) // _MS
    return int(value)


def to_cents(amount: np.ndarray) -> np.ndarray:
    """Amounts as int64 cents, as both engines count them into merchant day sums (integers add
    exactly in any order and in Redis's BITFIELD); NaN as 0, clipped far beyond any valid amount."""
    cents = np.rint(np.nan_to_num(np.asarray(amount, dtype=np.float64)) * cat.CENTS)
    return np.clip(cents, -(2.0**53), 2.0**53).astype(np.int64)


def geo_round(values: np.ndarray) -> np.ndarray:
    """Coordinates as both engines keep them (``GEO_DECIMALS``); NaN stays NaN."""
    return np.round(np.asarray(values, dtype=np.float64), cat.GEO_DECIMALS)


@dataclass(frozen=True)
class TxBatch:
    """A batch of transactions as columns (object arrays for strings, NaN for missing lat/lon)."""

    transaction_id: np.ndarray
    user_id: np.ndarray
    merchant_id: np.ndarray
    t_ms: np.ndarray  # int64
    amount: np.ndarray  # float64
    country: np.ndarray
    device_id: np.ndarray  # None when missing
    channel: np.ndarray
    merchant_category: np.ndarray
    lat: np.ndarray  # float64, geo-rounded
    lon: np.ndarray

    def __len__(self) -> int:
        return len(self.t_ms)

    @classmethod
    def from_records(cls, records: Sequence[Mapping[str, Any]]) -> TxBatch:
        n = len(records)

        def col(name: str) -> np.ndarray:
            out = np.empty(n, dtype=object)
            out[:] = [r.get(name) for r in records]
            return out

        def coord(name: str) -> np.ndarray:
            raw = [r.get(name) for r in records]
            return geo_round(np.array([np.nan if v is None else v for v in raw], dtype=np.float64))

        return cls(
            transaction_id=col("transaction_id"),
            user_id=col("user_id"),
            merchant_id=col("merchant_id"),
            t_ms=np.fromiter((to_ms(r["event_time"]) for r in records), dtype=np.int64, count=n),
            amount=np.fromiter((float(r["amount"]) for r in records), dtype=np.float64, count=n),
            country=col("country"),
            device_id=col("device_id"),
            channel=col("channel"),
            merchant_category=col("merchant_category"),
            lat=coord("lat"),
            lon=coord("lon"),
        )

    def take(self, rows: np.ndarray) -> TxBatch:
        """The records at ``rows`` (indexes into this batch), in that order."""
        return TxBatch(*(getattr(self, f.name)[rows] for f in fields(self)))

    @classmethod
    def from_frame(cls, df: pd.DataFrame) -> TxBatch:
        """From a frame with the record columns and ``t_ms`` (epoch ms); missing values as None/NaN."""

        def col(name: str) -> np.ndarray:
            s = df[name].astype(object)
            return np.asarray(s.where(s.notna(), None), dtype=object)

        return cls(
            transaction_id=col("transaction_id"),
            user_id=col("user_id"),
            merchant_id=col("merchant_id"),
            t_ms=df["t_ms"].to_numpy(dtype=np.int64),
            amount=df["amount"].to_numpy(dtype=np.float64),
            country=col("country"),
            device_id=col("device_id"),
            channel=col("channel"),
            merchant_category=col("merchant_category"),
            lat=geo_round(df["lat"].to_numpy(dtype=np.float64, na_value=np.nan)),
            lon=geo_round(df["lon"].to_numpy(dtype=np.float64, na_value=np.nan)),
        )


def empty_raw(batch: TxBatch) -> dict[str, np.ndarray]:
    """The raw aggregates of a user and merchant with no history (stateless scoring)."""
    n = len(batch)
    raw = {k: np.zeros(n) for k in RAW_KEYS}
    for k in ("user.prev_ms", "user.prev_loc_ms"):
        raw[k][:] = NONE
    for w in cat.DISTINCT_WINDOWS:
        raw[f"user.distinct.{w}"][:] = 1.0  # the transaction's own country
    for fld in cat.NOVELTY_FIELDS:
        missing = np.fromiter((v is None for v in getattr(batch, fld)), dtype=bool, count=n)
        raw[f"user.seen.{fld}"] = np.where(missing, NOT_APPLICABLE, NONE)
    return raw


def raw_from_matrix(matrix: np.ndarray) -> dict[str, np.ndarray]:
    """Columns of an (n x len(RAW_KEYS)) array as the raw-aggregate mapping."""
    return {k: matrix[:, i] for i, k in enumerate(RAW_KEYS)}


# -- the feature math, one function per aggregation ------------------------------------------------
Kernel = Callable[[Feature, TxBatch, Mapping[str, np.ndarray]], np.ndarray]


def _hours(b: TxBatch) -> np.ndarray:
    return ((b.t_ms // 3_600_000) % 24).astype(np.float64)


def _vocab_code(values: Iterable[Any], vocab: Mapping[str, int]) -> np.ndarray:
    other = float(max(vocab.values()) + 1)
    cache: dict[Any, float] = {}
    out = []
    for v in values:
        code = cache.get(v)
        if code is None:
            code = 0.0 if v is None else float(vocab.get(str(v).strip().lower(), other))
            cache[v] = code
        out.append(code)
    return np.asarray(out, dtype=np.float64)


def _in_set(values: Iterable[Any], members: frozenset[str]) -> np.ndarray:
    return np.asarray([v is not None and str(v).strip().lower() in members for v in values], dtype=np.float64)


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    p1, p2 = np.radians(lat1), np.radians(lat2)
    dp, dl = p2 - p1, np.radians(lon2 - lon1)
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(h, 0.0, 1.0)))


def _geo(f: Feature, b: TxBatch, raw: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    prev = raw["user.prev_loc_ms"]
    window_ms = (f.window_s or cat.USER_SCAN_S) * 1000
    ok = (prev >= 0) & (b.t_ms - prev <= window_ms) & ~np.isnan(b.lat) & ~np.isnan(b.lon)
    dist = np.where(ok, haversine_km(raw["user.prev_lat"], raw["user.prev_lon"], b.lat, b.lon), 0.0)
    return np.nan_to_num(dist), ok


def _geo_distance(f: Feature, b: TxBatch, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    return _geo(f, b, raw)[0]


def _geo_speed(f: Feature, b: TxBatch, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    dist, ok = _geo(f, b, raw)
    hours = np.maximum((b.t_ms - raw["user.prev_loc_ms"]) / 1000.0, cat.SPEED_MIN_DT_S) / 3600.0
    return np.where(ok, np.minimum(dist / hours, cat.SPEED_CAP_KMH), 0.0)


def _since_last(f: Feature, b: TxBatch, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    window_s = float(f.window_s or cat.USER_SCAN_S)
    prev = raw["user.prev_ms"]
    gap = (b.t_ms - prev) / 1000.0
    return np.where((prev >= 0) & (gap <= window_s), gap, window_s)


def _zscore(_f: Feature, b: TxBatch, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    n, mean, m2 = raw["user.n"], raw["user.mean"], raw["user.m2"]
    var = np.maximum(m2, 0.0) / np.maximum(n - 1, 1)
    floor = np.maximum(cat.STD_FLOOR_REL * np.abs(mean), cat.STD_FLOOR_ABS)
    z = (b.amount - mean) / np.maximum(np.sqrt(var), floor)
    return np.where(n >= 2, np.clip(z, -cat.ZSCORE_CLIP, cat.ZSCORE_CLIP), 0.0)


def _ratio(_f: Feature, b: TxBatch, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    n, mean = raw["user.n"], raw["user.mean"]
    ok = (n >= 1) & (mean > 0)
    return np.where(ok, b.amount / np.where(ok, mean, 1.0), 1.0)


def _is_new(f: Feature, b: TxBatch, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    seen = raw[f"user.seen.{f.field}"]
    horizon_ms = (f.window_s or cat.NOVELTY_HORIZON_S) * 1000
    new = (seen == NONE) | ((seen >= 0) & (seen < b.t_ms - horizon_ms))
    return new.astype(np.float64)


def _count(f: Feature, _b: TxBatch, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    return raw[f"{f.entity}.count.{f.window_s}"]


def _sum(f: Feature, _b: TxBatch, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    return raw[f"user.sum.{f.window_s}"]


def _mean(f: Feature, _b: TxBatch, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    """Window sum / window count; 0 for an empty window (the count feature tells it apart from a
    window of zero amounts). Users' sums are amounts, merchants' day sums integer cents."""
    if f.aggregation == "day_mean":
        count, total = raw[f"merchant.dcount.{f.window_s}"], raw[f"merchant.dsum.{f.window_s}"] / cat.CENTS
    else:
        count, total = raw[f"{f.entity}.count.{f.window_s}"], raw[f"{f.entity}.sum.{f.window_s}"]
    return np.where(count > 0, total / np.maximum(count, 1.0), 0.0)


def _fraud_risk(f: Feature, _b: TxBatch, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    fraud, labels = raw[f"merchant.fraud.{f.window_s}"], raw[f"merchant.labels.{f.window_s}"]
    return (fraud + cat.RISK_PRIOR_FRAUD) / (labels + cat.RISK_PRIOR_TOTAL)


KERNELS: dict[str, Kernel] = {
    "log1p_amount": lambda _f, b, _r: np.log1p(np.clip(b.amount, 0.0, None)),
    "hour": lambda _f, b, _r: _hours(b),
    "hour_sin": lambda _f, b, _r: np.sin(2 * np.pi * _hours(b) / 24),
    "hour_cos": lambda _f, b, _r: np.cos(2 * np.pi * _hours(b) / 24),
    # 1970-01-01 was a Thursday: (days + 3) % 7 is 0 on Mondays.
    "weekend": lambda _f, b, _r: (((b.t_ms // MS_PER_DAY) + 3) % 7 >= 5).astype(np.float64),
    "night": lambda _f, b, _r: (_hours(b) < cat.NIGHT_END_HOUR).astype(np.float64),
    "channel_code": lambda _f, b, _r: _vocab_code(b.channel, cat.CHANNELS),
    "card_not_present": lambda _f, b, _r: _in_set(b.channel, cat.CARD_NOT_PRESENT),
    "category_code": lambda _f, b, _r: _vocab_code(b.merchant_category, cat.CATEGORIES),
    "high_risk_category": lambda _f, b, _r: _in_set(b.merchant_category, cat.HIGH_RISK_CATEGORIES),
    "count": _count,
    "sum": _sum,
    "mean": _mean,
    "day_count": lambda f, _b, r: r[f"merchant.dcount.{f.window_s}"],
    "day_mean": _mean,
    "since_last": _since_last,
    "lifetime_count": lambda _f, _b, r: r["user.n"],
    "zscore": _zscore,
    "ratio": _ratio,
    "is_new": _is_new,
    "distinct": lambda f, _b, r: r[f"user.distinct.{f.window_s}"],
    "geo_distance": _geo_distance,
    "geo_speed": _geo_speed,
    "fraud_risk": _fraud_risk,
}

_missing = {f.aggregation for f in FEATURES} - set(KERNELS)
if _missing:
    raise ValueError(f"aggregations without a kernel: {sorted(_missing)}")


def assemble(batch: TxBatch, raw: Mapping[str, np.ndarray]) -> np.ndarray:
    """The float32 feature matrix (len(batch) x len(FEATURE_NAMES)) in catalogue order."""
    out = np.empty((len(batch), len(FEATURE_NAMES)), dtype=np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        for j, f in enumerate(FEATURES):
            out[:, j] = KERNELS[f.aggregation](f, batch, raw)
    return out
