"""Every SQL statement the dashboard runs, one function each: ``(dsn, parameters) -> DataFrame``.

Plain functions, no Streamlit, so tests call them directly. Rules they follow:

* parameters travel as psycopg2 ``%(name)s`` parameters, never formatted into the SQL text;
* every query on ``transactions`` or ``decisions`` is bounded by a time window on an indexed
  column (``transactions.event_time`` → ``transactions_event_time``, ``decisions.scored_at`` →
  ``decisions_scored_at``, or ``transactions_user_time`` for one user) and aggregates in
  PostgreSQL, so a large table returns a few hundred rows, not millions;
* "fraud" is the decision's ``is_fraud`` of *that transaction* (joined on ``transaction_id``),
  and "confirmed" is its label when one has arrived;
* sessions are read-only, in UTC, with a statement timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import pandas as pd
import psycopg2

from dashboards.geo import FX_PER_USD
from dashboards.timerange import Window

STATEMENT_TIMEOUT_MS = 15_000
CONNECT_TIMEOUT_S = 5
# Aggregations over an hour of a busy stream sort ~10^5–10^6 rows: keep them in memory.
WORK_MEM = "64MB"
TREND_UNITS = ("minute", "hour", "day")
SCORE_BINS = 40
CURVE_BINS = 1000


def connect(dsn: str) -> Any:
    """A read-only autocommit connection in UTC with a statement timeout."""
    conn = psycopg2.connect(
        dsn,
        connect_timeout=CONNECT_TIMEOUT_S,
        application_name="fraudray-dashboard",
        options=f"-c timezone=UTC -c statement_timeout={STATEMENT_TIMEOUT_MS} -c work_mem={WORK_MEM} "
        "-c jit=off",
    )
    conn.set_session(readonly=True, autocommit=True)
    return conn


def _frame(dsn: str, sql: str, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    conn = connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute(sql, params or {})
            columns = [c.name for c in cur.description]
            return pd.DataFrame(cur.fetchall(), columns=columns)
    finally:
        conn.close()


def _window(window: Window) -> dict[str, Any]:
    return {"start": window.start, "end": window.end}


def _fx() -> dict[str, Any]:
    return {"fx_codes": list(FX_PER_USD), "fx_rates": list(FX_PER_USD.values())}


def _with_rate(df: pd.DataFrame, rate: str, part: str, whole: str = "transactions") -> pd.DataFrame:
    """``df`` with a column ``rate`` = ``part`` / ``whole`` (per row; none on an empty frame)."""
    if not df.empty:
        df[rate] = df[part] / df[whole]
    return df


# -- Overview -------------------------------------------------------------------------------

_OVERVIEW = """
SELECT
    count(*) FILTER (WHERE scored_at >= %(now)s - interval '60 seconds') AS decisions_60s,
    count(*) AS decisions_1h,
    count(*) FILTER (WHERE is_fraud) AS alerts_1h,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms)
        FILTER (WHERE scored_at >= %(now)s - interval '5 minutes') AS latency_p50_ms,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY latency_ms)
        FILTER (WHERE scored_at >= %(now)s - interval '5 minutes') AS latency_p95_ms,
    count(event_latency_ms) FILTER (WHERE scored_at >= %(now)s - interval '5 minutes') AS live_5min,
    percentile_cont(0.5) WITHIN GROUP (ORDER BY event_latency_ms)
        FILTER (WHERE scored_at >= %(now)s - interval '5 minutes') AS event_latency_p50_ms,
    percentile_cont(0.95) WITHIN GROUP (ORDER BY event_latency_ms)
        FILTER (WHERE scored_at >= %(now)s - interval '5 minutes') AS event_latency_p95_ms,
    (SELECT max(scored_at) FROM decisions WHERE scored_at < %(now)s) AS last_scored_at
FROM decisions
WHERE scored_at >= %(now)s - interval '1 hour' AND scored_at < %(now)s
"""


def overview(dsn: str, now: datetime) -> pd.DataFrame:
    """One row: decisions in the last 60 s and hour before ``now``, alerts in the hour,
    pipeline latency (Kafka timestamp → decision) p50/p95 over the last 5 minutes, the number
    of live decisions in those 5 minutes and their event→decision p50/p95 (NULL without live
    traffic), and the last decision's time."""
    return _frame(dsn, _OVERVIEW, {"now": now})


_THROUGHPUT = """
SELECT date_bin(%(step)s, scored_at, %(start)s) AS bucket,
       count(*) AS decisions,
       count(*) FILTER (WHERE is_fraud) AS alerts
FROM decisions
WHERE scored_at >= %(start)s AND scored_at < %(end)s
GROUP BY 1
ORDER BY 1
"""


def throughput(dsn: str, window: Window, step: timedelta) -> pd.DataFrame:
    """Decisions and alerts per ``step`` bucket of decision time."""
    return _frame(dsn, _THROUGHPUT, {**_window(window), "step": step})


# -- Geography ------------------------------------------------------------------------------

# The window's decided transactions (by event time) with their label when one has arrived and
# the amount in USD (NULL for a currency without a display rate): what the geography and the
# top-risk rankings aggregate.
_DECIDED_IN_WINDOW = """FROM transactions t
JOIN decisions d ON d.transaction_id = t.transaction_id
LEFT JOIN labels l ON l.transaction_id = t.transaction_id
LEFT JOIN unnest(%(fx_codes)s::text[], %(fx_rates)s::float8[]) AS fx (currency, per_usd)
    ON fx.currency = t.currency::text
WHERE t.event_time >= %(start)s AND t.event_time < %(end)s"""

_BY_COUNTRY = f"""
SELECT t.country::text AS country,
       count(*) AS transactions,
       count(*) FILTER (WHERE d.is_fraud) AS fraud_transactions,
       coalesce(sum(t.amount / fx.per_usd), 0) AS amount_usd,
       coalesce(sum(t.amount / fx.per_usd) FILTER (WHERE d.is_fraud), 0) AS fraud_amount_usd,
       count(*) FILTER (WHERE fx.per_usd IS NULL) AS unconverted,
       count(l.transaction_id) AS labelled,
       count(*) FILTER (WHERE l.is_fraud) AS confirmed_fraud
{_DECIDED_IN_WINDOW}
GROUP BY t.country
ORDER BY fraud_transactions DESC, transactions DESC
"""


def fraud_by_country(dsn: str, window: Window) -> pd.DataFrame:
    """Per country of the transaction, over its event time: decided transactions, how many of
    *them* were decided fraud, their amounts in USD, and confirmed labels."""
    return _with_rate(
        _frame(dsn, _BY_COUNTRY, {**_window(window), **_fx()}), "fraud_rate", "fraud_transactions"
    )


# -- Top-risk users and merchants -----------------------------------------------------------

# Rank with a hash aggregate over the window, then count distinct countries/devices/users for
# the top rows only (count(DISTINCT) over every group would sort the whole window).
_TOP_USERS = f"""
WITH tx AS (
    SELECT t.user_id, t.country, t.device_id, t.event_time, t.amount / fx.per_usd AS amount_usd,
           d.is_fraud, d.ensemble_score, l.is_fraud AS confirmed
    {_DECIDED_IN_WINDOW}
), ranked AS (
    SELECT user_id,
           count(*) AS transactions,
           count(*) FILTER (WHERE is_fraud) AS alerts,
           max(ensemble_score) AS max_score,
           avg(ensemble_score) AS mean_score,
           coalesce(sum(amount_usd), 0) AS amount_usd,
           count(*) FILTER (WHERE confirmed) AS confirmed_fraud,
           max(event_time) AS last_seen
    FROM tx
    GROUP BY user_id
    ORDER BY alerts DESC, max_score DESC, user_id
    LIMIT %(limit)s
), spread AS (
    SELECT user_id, count(DISTINCT country) AS countries, count(DISTINCT device_id) AS devices
    FROM tx
    WHERE user_id IN (SELECT user_id FROM ranked)
    GROUP BY user_id
)
SELECT r.user_id, r.transactions, r.alerts, r.max_score, r.mean_score, r.amount_usd,
       s.countries, s.devices, r.confirmed_fraud, r.last_seen
FROM ranked r
JOIN spread s ON s.user_id = r.user_id
ORDER BY r.alerts DESC, r.max_score DESC, r.user_id
"""  # noqa: S608 - fixed fragments, values travel as parameters

_TOP_MERCHANTS = f"""
WITH tx AS (
    SELECT t.merchant_id, t.merchant_category, t.user_id, t.event_time,
           t.amount / fx.per_usd AS amount_usd, d.is_fraud, d.ensemble_score, l.is_fraud AS confirmed
    {_DECIDED_IN_WINDOW}
), ranked AS (
    SELECT merchant_id,
           min(merchant_category) AS merchant_category,
           count(*) AS transactions,
           count(*) FILTER (WHERE is_fraud) AS alerts,
           max(ensemble_score) AS max_score,
           avg(ensemble_score) AS mean_score,
           coalesce(sum(amount_usd) FILTER (WHERE is_fraud), 0) AS fraud_amount_usd,
           count(*) FILTER (WHERE confirmed) AS confirmed_fraud,
           max(event_time) AS last_seen
    FROM tx
    GROUP BY merchant_id
    ORDER BY alerts DESC, max_score DESC, merchant_id
    LIMIT %(limit)s
), spread AS (
    SELECT merchant_id, count(DISTINCT user_id) AS users
    FROM tx
    WHERE merchant_id IN (SELECT merchant_id FROM ranked)
    GROUP BY merchant_id
)
SELECT r.merchant_id, r.merchant_category, r.transactions, r.alerts, r.max_score, r.mean_score,
       r.fraud_amount_usd, s.users, r.confirmed_fraud, r.last_seen
FROM ranked r
JOIN spread s ON s.merchant_id = r.merchant_id
ORDER BY r.alerts DESC, r.max_score DESC, r.merchant_id
"""  # noqa: S608 - fixed fragments, values travel as parameters


def top_users(dsn: str, window: Window, limit: int = 100) -> pd.DataFrame:
    """The riskiest users of the window: most alerts first, then the highest score."""
    return _ranking(dsn, _TOP_USERS, window, limit)


def top_merchants(dsn: str, window: Window, limit: int = 100) -> pd.DataFrame:
    """The riskiest merchants of the window: most alerts first, then the highest score."""
    return _ranking(dsn, _TOP_MERCHANTS, window, limit)


def _ranking(dsn: str, sql: str, window: Window, limit: int) -> pd.DataFrame:
    """The ``limit`` top rows of a ranking query, each with its alert rate."""
    return _with_rate(_frame(dsn, sql, {**_window(window), **_fx(), "limit": limit}), "alert_rate", "alerts")


_USER_TIMELINE = """
SELECT t.transaction_id, t.event_time, t.amount, t.currency::text AS currency,
       t.amount / fx.per_usd AS amount_usd,
       t.country::text AS country, t.channel, t.merchant_id, t.merchant_category, t.device_id, t.ip,
       d.ensemble_score, d.is_fraud, d.scores, d.model_version, d.scored_at, d.latency_ms,
       l.is_fraud AS label_is_fraud, l.scenario
FROM transactions t
LEFT JOIN decisions d ON d.transaction_id = t.transaction_id
LEFT JOIN labels l ON l.transaction_id = t.transaction_id
LEFT JOIN unnest(%(fx_codes)s::text[], %(fx_rates)s::float8[]) AS fx (currency, per_usd)
    ON fx.currency = t.currency::text
WHERE t.user_id = %(user_id)s AND t.event_time >= %(start)s AND t.event_time < %(end)s
ORDER BY t.event_time DESC
LIMIT %(limit)s
"""


def _id_param(value: str) -> str | None:
    """An id typed by a user as a query parameter; None (matches no row) for text that is not
    valid Unicode, e.g. a lone surrogate: no stored id can equal it, and the driver cannot send it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def user_timeline(dsn: str, user_id: str, window: Window, limit: int = 500) -> pd.DataFrame:
    """One user's transactions in the window, newest first, with decision and label."""
    params = {**_window(window), **_fx(), "user_id": _id_param(user_id), "limit": limit}
    return _frame(dsn, _USER_TIMELINE, params)


_TRANSACTION = """
SELECT t.*, d.scores, d.ensemble_score, d.is_fraud, d.model_version, d.scored_at, d.latency_ms,
       l.is_fraud AS label_is_fraud, l.scenario, l.labelled_at
FROM transactions t
LEFT JOIN decisions d ON d.transaction_id = t.transaction_id
LEFT JOIN labels l ON l.transaction_id = t.transaction_id
WHERE t.transaction_id = %(transaction_id)s
"""


def transaction(dsn: str, transaction_id: str) -> pd.DataFrame:
    """One transaction with its decision and label (zero or one row)."""
    return _frame(dsn, _TRANSACTION, {"transaction_id": _id_param(transaction_id)})


# -- Trends ---------------------------------------------------------------------------------

_TRENDS = """
SELECT date_trunc(%(unit)s, t.event_time) AS bucket,
       coalesce(t.channel, 'unknown') AS channel,
       count(*) AS transactions,
       count(*) FILTER (WHERE d.is_fraud) AS alerts
FROM transactions t
JOIN decisions d ON d.transaction_id = t.transaction_id
WHERE t.event_time >= %(start)s AND t.event_time < %(end)s
GROUP BY 1, 2
ORDER BY 1, 2
"""

_SCENARIO_TRENDS = """
SELECT date_trunc(%(unit)s, t.event_time) AS bucket,
       l.scenario,
       count(*) AS confirmed_fraud,
       count(*) FILTER (WHERE d.is_fraud) AS alerted
FROM transactions t
JOIN labels l ON l.transaction_id = t.transaction_id
LEFT JOIN decisions d ON d.transaction_id = t.transaction_id
WHERE t.event_time >= %(start)s AND t.event_time < %(end)s
  AND l.is_fraud AND l.scenario IS NOT NULL
GROUP BY 1, 2
ORDER BY 1, 2
"""


def _unit(unit: str) -> str:
    if unit not in TREND_UNITS:
        raise ValueError(f"bucket unit must be one of {TREND_UNITS}, got {unit!r}")
    return unit


def trends(dsn: str, window: Window, unit: str) -> pd.DataFrame:
    """Decided transactions and alerts per event-time bucket and channel."""
    return _with_rate(_frame(dsn, _TRENDS, {**_window(window), "unit": _unit(unit)}), "fraud_rate", "alerts")


def scenario_trends(dsn: str, window: Window, unit: str) -> pd.DataFrame:
    """Confirmed fraud per event-time bucket and labelled scenario, and how much was alerted."""
    return _frame(dsn, _SCENARIO_TRENDS, {**_window(window), "unit": _unit(unit)})


# -- Models ---------------------------------------------------------------------------------

_REGISTRY = """
SELECT name, version, stage, uri, metrics, params, created_at
FROM models
ORDER BY name, created_at DESC
LIMIT %(limit)s
"""


def registry(dsn: str, limit: int = 500) -> pd.DataFrame:
    """Rows of the model registry, newest first within each family."""
    return _frame(dsn, _REGISTRY, {"limit": limit})


_SERVING = """
SELECT model_version, count(*) AS decisions, min(scored_at) AS first_decision,
       max(scored_at) AS last_decision
FROM decisions
WHERE scored_at >= %(start)s AND scored_at < %(end)s
GROUP BY model_version
ORDER BY last_decision DESC
"""


def serving_versions(dsn: str, window: Window) -> pd.DataFrame:
    """Which model versions actually decided transactions in the window (by decision time)."""
    return _frame(dsn, _SERVING, _window(window))


_SCORE_HISTOGRAM = """
WITH w AS (
    SELECT ensemble_score AS s, is_fraud
    FROM decisions
    WHERE scored_at >= %(start)s AND scored_at < %(end)s
), r AS (
    SELECT min(s) AS lo, max(s) AS hi FROM w
)
SELECT least(width_bucket(w.s, r.lo, r.hi + 1e-12, %(bins)s), %(bins)s) AS bin,
       r.lo, r.hi, w.is_fraud, count(*) AS decisions
FROM w CROSS JOIN r
GROUP BY 1, 2, 3, 4
ORDER BY 1, 4
"""


def score_histogram(dsn: str, window: Window, bins: int = SCORE_BINS) -> pd.DataFrame:
    """Ensemble scores of the window's decisions in ``bins`` equal bins between their min and max,
    split by decision; ``bin_start``/``bin_end`` are the bin's score range."""
    df = _frame(dsn, _SCORE_HISTOGRAM, {**_window(window), "bins": bins})
    if not df.empty:
        width = (df["hi"] - df["lo"]) / bins
        df["bin_start"] = df["lo"] + (df["bin"] - 1) * width
        df["bin_end"] = df["bin_start"] + width
    return df


_LABELLED_BINS = """
WITH w AS (
    SELECT d.ensemble_score AS s, l.is_fraud AS y
    FROM decisions d
    JOIN labels l ON l.transaction_id = d.transaction_id
    WHERE d.scored_at >= %(start)s AND d.scored_at < %(end)s
), r AS (
    SELECT min(s) AS lo, max(s) AS hi FROM w
)
SELECT least(width_bucket(w.s, r.lo, r.hi + 1e-12, %(bins)s), %(bins)s) AS bin,
       r.lo, r.hi,
       count(*) FILTER (WHERE w.y) AS positives,
       count(*) FILTER (WHERE NOT w.y) AS negatives
FROM w CROSS JOIN r
GROUP BY 1, 2, 3
ORDER BY 1
"""


def labelled_score_bins(dsn: str, window: Window, bins: int = CURVE_BINS) -> pd.DataFrame:
    """Labelled decisions of the window counted per ensemble-score bin (fraud / genuine): the
    input of the PR and ROC curves, aggregated in PostgreSQL however many rows there are."""
    df = _frame(dsn, _LABELLED_BINS, {**_window(window), "bins": bins})
    if not df.empty:
        df["threshold"] = df["lo"] + (df["bin"] - 1) * (df["hi"] - df["lo"]) / bins
    return df


# -- Alerts ---------------------------------------------------------------------------------


_ALERTS = """
SELECT d.scored_at, d.transaction_id, d.user_id, t.merchant_id, t.amount, t.currency::text AS currency,
       t.country::text AS country, t.channel, t.event_time, d.ensemble_score, d.model_version,
       d.latency_ms,
       CASE WHEN l.transaction_id IS NULL THEN 'awaiting label'
            WHEN l.is_fraud THEN 'confirmed fraud'
            ELSE 'false positive' END AS status,
       l.scenario
FROM decisions d
JOIN transactions t ON t.transaction_id = d.transaction_id
LEFT JOIN labels l ON l.transaction_id = d.transaction_id
WHERE d.is_fraud AND d.scored_at >= %(start)s AND d.scored_at < %(end)s
ORDER BY d.scored_at DESC, d.transaction_id
LIMIT %(limit)s
"""

_ALERT_STATUS = """
SELECT CASE WHEN l.transaction_id IS NULL THEN 'awaiting label'
            WHEN l.is_fraud THEN 'confirmed fraud'
            ELSE 'false positive' END AS status,
       count(*) AS alerts
FROM decisions d
LEFT JOIN labels l ON l.transaction_id = d.transaction_id
WHERE d.is_fraud AND d.scored_at >= %(start)s AND d.scored_at < %(end)s
GROUP BY 1
ORDER BY 1
"""


def latest_alerts(dsn: str, window: Window, limit: int = 200) -> pd.DataFrame:
    """The newest decisions with ``is_fraud`` in the window (by decision time), with a status
    from the label: awaiting label, confirmed fraud or false positive."""
    return _frame(dsn, _ALERTS, {**_window(window), "limit": limit})


def alert_status_counts(dsn: str, window: Window) -> pd.DataFrame:
    """How many of the window's alerts are in each status."""
    return _frame(dsn, _ALERT_STATUS, _window(window))
