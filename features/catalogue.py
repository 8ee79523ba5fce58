"""The feature catalogue: every model input declared once (name, entity, window, aggregation,
description), plus the constants that bound the state behind it.

Both engines execute this list: :mod:`features.online` (state in Redis, computed in the actors) and
:mod:`features.offline` (pandas/numpy over PostgreSQL history) gather the raw aggregates the
catalogue asks for, and :func:`features.kernel.assemble` turns them into the feature matrix.
Adding a feature means adding a row here (and, for a new aggregation, one function in the kernel
and one raw aggregate in each engine); the skew test then proves both engines agree.

Time semantics (see docs/features.md): a user's *history* before transaction ``i`` is every
earlier transaction of the user in ``(event_time, transaction_id)`` order; windowed aggregates
(counts, sums, means, previous transaction, distinct countries) use only those strictly earlier in
event time, within ``[t - window, t)``. Merchant windows have a coarser grain: whole minutes before
the event's minute (``count``) or whole UTC days before the event's day (``day_count``,
``day_mean``), what per-minute and per-day counters can answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Entity = Literal["transaction", "user", "merchant"]

MINUTE = 60
HOUR = 3600
DAY = 86_400

# -- state bounds (each one is a documented divergence from an unbounded history) ---------------
USER_EVENTS_CAP = 256  # a user's retained events (the newest); windows see at most these
ALLOWED_LATENESS_S = HOUR  # retention margin for events arriving late within a partition
NOVELTY_HORIZON_S = 90 * DAY  # "new device/country/merchant" = not seen in this horizon
NOVELTY_CAP = 256  # seen-keys kept per user (least recently seen evicted beyond it)
USER_TTL_S = 120 * DAY  # a user idle this long starts afresh (both engines)
MERCHANT_EVENTS_CAP = 100_000  # a merchant's retained events (24 h window)
LABEL_HORIZON_DAYS = 60  # a label counts only if it arrives within this many days of its tx
MERCHANT_TTL_S = 32 * DAY
DAY_BLOCK = 32  # merchant day counters: one Redis string per merchant and 32 UTC days
CENTS = 100  # merchant day sums are integer cents: exact in both engines, any order
# -- constants of the feature math --------------------------------------------------------------
GEO_DECIMALS = 4  # lat/lon kept to ~11 m: short Redis members, identical in both engines
SPEED_MIN_DT_S = 60.0  # travel time floor: clock jitter must not make 2 km look supersonic
SPEED_CAP_KMH = 20_000.0
ZSCORE_CLIP = 50.0
STD_FLOOR_REL = 0.01  # z-score denominator >= 1 % of the mean (constant spenders stay finite)
STD_FLOOR_ABS = 0.01
RISK_PRIOR_FRAUD = 1.0  # merchant risk = (fraud + 1) / (labels + 100): a 1 % prior
RISK_PRIOR_TOTAL = 100.0
NIGHT_END_HOUR = 6  # night = 00:00-05:59 UTC

CHANNELS: dict[str, int] = {"card_present": 1, "online": 2, "contactless": 3, "mobile": 4, "atm": 5}
CARD_NOT_PRESENT = frozenset({"online", "mobile"})
# The simulator's categories (ingest/simulator/world.py) first, then common extras; unknown names are "other".
CATEGORIES: dict[str, int] = {
    name: i + 1
    for i, name in enumerate(
        ("grocery", "restaurant", "fuel", "retail", "pharmacy", "transport", "entertainment",
         "digital_goods", "utilities", "travel", "hotel", "electronics", "jewelry", "gift_cards",
         "money_transfer", "fashion", "health", "gambling", "crypto")
    )
}  # fmt: skip
# Resellable or cash-like goods: what cash-out fraud buys.
HIGH_RISK_CATEGORIES = frozenset(
    {"electronics", "jewelry", "gift_cards", "money_transfer", "gambling", "crypto"}
)


@dataclass(frozen=True, slots=True)
class Feature:
    """One model input. ``window_s`` is the look-back (``None`` when the feature has none)."""

    name: str
    entity: Entity
    aggregation: str
    description: str
    window_s: int | None = None
    field: str | None = None  # the record field an ``is_new``/``distinct`` aggregation keys on


def _velocity() -> list[Feature]:
    out = []
    for label, w in (("1m", MINUTE), ("1h", HOUR), ("24h", DAY), ("7d", 7 * DAY), ("30d", 30 * DAY)):
        out.append(Feature(f"user_tx_count_{label}", "user", "count",
                           f"the user's transactions in the {label} before this one", w))  # fmt: skip
    for label, w in (("1m", MINUTE), ("1h", HOUR), ("24h", DAY), ("7d", 7 * DAY)):
        out.append(Feature(f"user_amount_sum_{label}", "user", "sum",
                           f"amount spent by the user in the {label} before this one", w))  # fmt: skip
    for label, w in (("7d", 7 * DAY), ("30d", 30 * DAY)):
        out.append(Feature(f"user_amount_mean_{label}", "user", "mean",
                           f"mean amount of the user's transactions in the {label} before this one "
                           "(0 when there is none: the count says so)", w))  # fmt: skip
    return out


def _merchant_days() -> list[Feature]:
    out = []
    for label, w in (("7d", 7 * DAY), ("30d", 30 * DAY)):
        out.append(Feature(f"merchant_tx_count_{label}", "merchant", "day_count",
                           f"the merchant's transactions in the {w // DAY} whole UTC days before the "
                           "event's day", w))  # fmt: skip
    for label, w in (("7d", 7 * DAY), ("30d", 30 * DAY)):
        out.append(Feature(f"merchant_amount_mean_{label}", "merchant", "day_mean",
                           f"mean amount of the merchant's transactions in the {w // DAY} whole UTC "
                           "days before the event's day, to the cent (0 when there is none)", w))  # fmt: skip
    return out


FEATURES: tuple[Feature, ...] = (
    Feature("log_amount", "transaction", "log1p_amount", "log(1 + amount)"),
    *_velocity(),
    Feature("user_seconds_since_last", "user", "since_last",
            "seconds since the user's previous transaction (7 d when none in 7 d)", 7 * DAY),
    Feature("user_tx_count_lifetime", "user", "lifetime_count",
            "the user's transactions before this one (since first seen or 120 d idle)"),
    Feature("user_amount_zscore", "user", "zscore",
            "(amount - running mean) / running std of the user's amounts (Welford state)"),
    Feature("user_amount_ratio", "user", "ratio", "amount / the user's running mean amount (1 when new)"),
    Feature("user_new_device", "user", "is_new", "1 when the device was not seen for the user in 90 d "
            "(0 when the record has no device)", NOVELTY_HORIZON_S, "device_id"),
    Feature("user_new_country", "user", "is_new", "1 when the country was not seen for the user in 90 d",
            NOVELTY_HORIZON_S, "country"),
    Feature("user_new_merchant", "user", "is_new", "1 when the user did not pay this merchant in 90 d",
            NOVELTY_HORIZON_S, "merchant_id"),
    Feature("user_distinct_countries_24h", "user", "distinct",
            "distinct countries of the user's transactions in the 24 h before, this one included",
            DAY, "country"),
    Feature("user_geo_distance_km", "user", "geo_distance",
            "km from the user's previous located transaction (within 7 d; 0 when unknown)", 7 * DAY),
    Feature("user_geo_speed_kmh", "user", "geo_speed",
            "km/h implied by that previous location (impossible travel); travel time >= 60 s, "
            "capped at 20,000", 7 * DAY),
    Feature("merchant_tx_count_1h", "merchant", "count",
            "the merchant's transactions in the 60 whole minutes before the event's minute", HOUR),
    Feature("merchant_tx_count_24h", "merchant", "count",
            "the merchant's transactions in the 1,440 whole minutes before the event's minute", DAY),
    *_merchant_days(),
    Feature("merchant_fraud_risk_7d", "merchant", "fraud_risk",
            "(fraud labels + 1) / (labels + 100) over labels that ARRIVED in the 7 d before", 7 * DAY),
    Feature("merchant_fraud_risk_30d", "merchant", "fraud_risk",
            "(fraud labels + 1) / (labels + 100) over labels that ARRIVED in the 30 d before", 30 * DAY),
    Feature("hour_of_day", "transaction", "hour", "hour of day (UTC), 0-23"),
    Feature("hour_sin", "transaction", "hour_sin", "sin(2π hour / 24)"),
    Feature("hour_cos", "transaction", "hour_cos", "cos(2π hour / 24)"),
    Feature("is_weekend", "transaction", "weekend", "1 on Saturday or Sunday (UTC)"),
    Feature("is_night", "transaction", "night", "1 between 00:00 and 05:59 UTC"),
    Feature("channel_code", "transaction", "channel_code",
            "channel: 0 missing, card_present 1, online 2, contactless 3, mobile 4, atm 5, other 6"),
    Feature("is_card_not_present", "transaction", "card_not_present", "1 for online/mobile channels"),
    Feature("merchant_category_code", "transaction", "category_code",
            "merchant category: 0 missing, 1-19 known (see CATEGORIES), 20 other"),
    Feature("is_high_risk_category", "transaction", "high_risk_category",
            "1 for electronics, jewelry, gift cards, money transfer, gambling, crypto"),
)  # fmt: skip

FEATURE_NAMES: tuple[str, ...] = tuple(f.name for f in FEATURES)


def windows(entity: Entity, *aggregations: str) -> tuple[int, ...]:
    """The distinct windows (seconds, ascending) the catalogue uses for these aggregations."""
    return tuple(
        sorted({f.window_s for f in FEATURES if f.entity == entity and f.aggregation in aggregations
                and f.window_s is not None})
    )  # fmt: skip


USER_WINDOWS = windows("user", "count", "sum", "mean")  # each has a count and a sum aggregate
DISTINCT_WINDOWS = windows("user", "distinct")
MERCHANT_WINDOWS = windows("merchant", "count")  # whole minutes
MERCHANT_DAY_WINDOWS = windows("merchant", "day_count", "day_mean")  # whole UTC days
RISK_WINDOWS = windows("merchant", "fraud_risk")
# How far back the user's event set is scanned (and retained online): every window-based user
# feature fits in it.
USER_SCAN_S = max(
    windows("user", "count", "sum", "mean", "distinct", "since_last", "geo_distance", "geo_speed")
)
NOVELTY_FIELDS = ("device_id", "country", "merchant_id")  # order of the engines' seen-times


def _check() -> None:
    names = [f.name for f in FEATURES]
    if len(set(names)) != len(names):
        raise ValueError("duplicate feature names in the catalogue")
    for f in FEATURES:
        if f.aggregation == "distinct" and f.field != "country":
            raise ValueError(f"{f.name}: the engines count distinct countries only")
        if f.entity == "merchant" and f.aggregation in {"sum", "mean"}:
            raise ValueError(f"{f.name}: merchant amounts are kept per day only (day_mean)")
        if f.aggregation in {"day_count", "day_mean"} and (
            f.entity != "merchant" or not f.window_s or f.window_s % DAY
        ):
            raise ValueError(f"{f.name}: day windows are whole UTC days of a merchant")
        if f.aggregation == "count" and f.entity == "merchant" and (not f.window_s or f.window_s % MINUTE):
            raise ValueError(f"{f.name}: merchant counts are whole minutes")
        if f.aggregation == "is_new" and (f.field not in NOVELTY_FIELDS or f.window_s != NOVELTY_HORIZON_S):
            raise ValueError(f"{f.name}: novelty is kept for {NOVELTY_FIELDS} over {NOVELTY_HORIZON_S} s")


_check()
