"""Trends: fraud rate and alert volume over event time in minute/hour/day buckets, per channel,
and per fraud scenario where labels name one."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboards import common, queries, timerange


def body() -> None:
    window = common.window()
    wanted = st.radio("Bucket", list(timerange.BUCKETS), index=1, horizontal=True, key="trend_bucket")
    unit = timerange.bucket_for(window, wanted)
    st.caption(f"Event time {window.label()}, per {unit}")
    if unit != wanted:
        st.caption(
            f"{wanted.capitalize()} buckets are drawn for up to {timerange.BUCKETS[wanted]}; using {unit}s."
        )
    series = common.fetch(queries.trends, common.dsn(), window, unit)
    if not common.has_rows(series, common.no_data("decided transactions", window)):
        return

    total = series.groupby("bucket", as_index=False)[["transactions", "alerts"]].sum()
    total["channel"] = "all channels"
    total["fraud_rate"] = total["alerts"] / total["transactions"]
    plot = pd.concat([total, series], ignore_index=True)
    labels = {"bucket": f"event time (UTC, per {unit})", "channel": ""}

    left, right = st.columns(2)
    rate = px.line(
        plot, x="bucket", y="fraud_rate", color="channel", markers=True, labels=labels, title="Fraud rate"
    )
    top_rate = float(plot["fraud_rate"].max())
    rate.update_yaxes(
        tickformat=".1%", title="alerts / decided transactions", range=[0, top_rate * 1.1 or 0.01]
    )
    left.plotly_chart(rate, width="stretch")
    volume = px.bar(
        series, x="bucket", y="alerts", color="channel", labels=labels, title="Alert volume per channel"
    )
    volume.update_yaxes(title="alerts", rangemode="tozero")
    if int(series["alerts"].sum()) == 0:
        volume.update_yaxes(range=[0, 1])
    right.plotly_chart(volume, width="stretch")

    st.subheader("Per fraud scenario (labelled fraud)")
    scenarios = common.fetch(queries.scenario_trends, common.dsn(), window, unit)
    no_scenarios = (
        "No labelled fraud with a scenario in this range yet. Labels arrive late (after "
        "chargebacks), so recent ranges have few; widen the range or wait for the labels topic."
    )
    if not common.has_rows(scenarios, no_scenarios):
        return
    left, right = st.columns(2)
    fig = px.bar(
        scenarios,
        x="bucket",
        y="confirmed_fraud",
        color="scenario",
        labels={**labels, "confirmed_fraud": "confirmed fraud", "scenario": ""},
        title="Confirmed fraud per scenario",
    )
    left.plotly_chart(fig, width="stretch")
    caught = scenarios.groupby("scenario", as_index=False)[["confirmed_fraud", "alerted"]].sum()
    caught["detection_rate"] = caught["alerted"] / caught["confirmed_fraud"]
    right.dataframe(
        caught.sort_values("confirmed_fraud", ascending=False),
        hide_index=True,
        width="stretch",
        column_config={
            "confirmed_fraud": st.column_config.NumberColumn("confirmed fraud", format="%d"),
            "alerted": st.column_config.NumberColumn("alerted", format="%d"),
            "detection_rate": st.column_config.ProgressColumn(
                "share alerted", format="percent", min_value=0.0, max_value=1.0
            ),
        },
    )


st.title("Trends")
common.live(body)
