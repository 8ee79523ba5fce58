"""Alerts: the newest decisions with ``is_fraud`` in the sidebar's range of decision time, with a
status from the late label — awaiting label, confirmed fraud or false positive."""

from __future__ import annotations

import streamlit as st

from dashboards import common, queries

LIMITS = (50, 200, 1000)
STATUSES = ("awaiting label", "confirmed fraud", "false positive")


def body() -> None:
    window = common.captioned_window("Decision time")
    counts = common.fetch(queries.alert_status_counts, common.dsn(), window)
    if not common.has_rows(counts, common.no_data("alerts", window)):
        return
    by_status = dict(zip(counts["status"], counts["alerts"], strict=True))
    total = sum(int(v) for v in by_status.values())
    cols = st.columns(4)
    cols[0].metric("Alerts", common.fmt_int(total))
    for col, status in zip(cols[1:], STATUSES, strict=True):
        col.metric(status.capitalize(), common.fmt_int(by_status.get(status, 0)))

    left, right = st.columns([3, 1])
    shown = left.multiselect("Status", list(STATUSES), default=list(STATUSES), key="alert_status")
    limit = right.selectbox("Show the newest", LIMITS, index=1, key="alert_limit")
    alerts = common.fetch(queries.latest_alerts, common.dsn(), window, int(limit))
    if alerts is None:
        return
    alerts = alerts[alerts["status"].isin(shown)]
    if alerts.empty:
        common.empty_state("No alerts with the chosen status in this range.")
        return
    common.table(
        alerts,
        {
            "scored_at": common.utc_column("decided (UTC)"),
            "event_time": common.utc_column("event (UTC)"),
            "ensemble_score": st.column_config.NumberColumn("score", format="%.3f"),
            "latency_ms": st.column_config.NumberColumn("pipeline latency (ms)", format="%.0f"),
        },
    )
    st.caption(
        f"The newest {int(limit):,} alerts of the range, filtered by status. Status comes from the "
        "labels table: a label arrives after the fact (chargeback or review)."
    )


st.title("Alerts")
common.live(body)
