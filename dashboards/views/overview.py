"""Overview: live health of the pipeline — throughput, fraud rate, alerts, pipeline latency (Kafka
timestamp → decision; event → decision beside it for live traffic only) (PostgreSQL, always the
last minutes before now) and consumer lag (Prometheus, when it answers)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboards import clients, common, queries, timerange

THROUGHPUT_SPAN = timedelta(minutes=15)
THROUGHPUT_STEP = timedelta(seconds=10)


def _lag_metric() -> None:
    result = clients.prometheus_query(clients.prometheus_base_url(common.settings()), clients.LAG_QUERY)
    if not result.reachable:
        st.metric("Consumer lag (records)", "–")
        st.caption(f"Prometheus not reachable — {result.reason}.")
    elif not result.series:
        st.metric("Consumer lag (records)", "–")
        st.caption("Prometheus answers, but no consumer reports lag (is `fraudray consume` running?).")
    else:
        st.metric("Consumer lag (records)", common.fmt_int(result.series[0][1]))
        st.caption("From Prometheus: `fraudray_consumer_lag`, summed over partitions.")


def body() -> None:
    now = timerange.now_rounded()
    summary = common.fetch(queries.overview, common.dsn(), now)
    if summary is None:
        return
    row = summary.iloc[0]
    decisions_1h, alerts_1h = int(row["decisions_1h"]), int(row["alerts_1h"])
    last = row["last_scored_at"]

    cols = st.columns(5)
    cols[0].metric("Throughput (tx/s, last 60 s)", f"{int(row['decisions_60s']) / 60:.1f}")
    cols[1].metric(
        "Fraud rate (last hour)", common.fmt_pct(alerts_1h / decisions_1h) if decisions_1h else "–"
    )
    cols[2].metric("Alerts (last hour)", common.fmt_int(alerts_1h))
    cols[3].metric(
        "Pipeline latency p50 (last 5 min)",
        common.fmt_ms(row["latency_p50_ms"]),
        help="Kafka message timestamp → decision, over the decisions of the last 5 minutes: "
        "true for live, simulated and replayed streams alike.",
    )
    cols[3].caption(f"Kafka → decision; p95 {common.fmt_ms(row['latency_p95_ms'])}")
    cols[3].caption(_event_latency(row))
    with cols[4]:
        _lag_metric()

    if last is None or pd.isna(last):
        common.empty_state(common.NO_DECISIONS)
        return
    last = pd.Timestamp(last).tz_convert(UTC)
    age = now - last.to_pydatetime()
    st.caption(
        f"{common.fmt_int(decisions_1h)} decisions in the last hour. Last decision at "
        f"{last:%Y-%m-%d %H:%M:%S} UTC ({_ago(age)} ago)."
    )
    if not decisions_1h:
        common.empty_state(f"No decisions in the last hour — {common.START_HINT}.")
        return

    # Whole buckets only: a bucket still filling would look like a drop in throughput.
    end = timerange.now_rounded(now, int(THROUGHPUT_STEP.total_seconds()))
    span = timerange.Window(end - THROUGHPUT_SPAN, end)
    series = common.fetch(queries.throughput, common.dsn(), span, THROUGHPUT_STEP)
    if not common.has_rows(series, f"No decisions in the last 15 minutes — {common.START_HINT}."):
        return
    per_s = series.assign(
        **{
            "decisions/s": series["decisions"] / THROUGHPUT_STEP.total_seconds(),
            "alerts/s": series["alerts"] / THROUGHPUT_STEP.total_seconds(),
        }
    )
    fig = px.line(
        per_s,
        x="bucket",
        y=["decisions/s", "alerts/s"],
        title="Decisions and alerts per second (last 15 minutes, 10-s buckets)",
        labels={"bucket": "decision time (UTC)", "value": "per second", "variable": ""},
    )
    fig.update_yaxes(rangemode="tozero")
    st.plotly_chart(fig, width="stretch")


def _event_latency(row: pd.Series) -> str:
    """Event time → decision, only over live decisions (those with an event latency)."""
    live = int(row["live_5min"] or 0)
    if not live:
        return "event→decision: – (no live traffic in the last 5 min; replayed or sped-up event times)"
    return (
        f"event→decision (live only, {common.fmt_int(live)} tx): p50 "
        f"{common.fmt_ms(row['event_latency_p50_ms'])}, p95 {common.fmt_ms(row['event_latency_p95_ms'])}"
    )


def _ago(age: timedelta) -> str:
    seconds = max(age.total_seconds(), 0)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.0f} days"


st.title("Overview")
st.caption(
    f"Live: the last minute, 5 minutes and hour before now ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC), "
    "whatever the sidebar's range."
)
common.live(body)
