"""Top-risk users and merchants for the sidebar's range of event time (sortable tables), with a
drill-down to one user's timeline and to one transaction's explanation from the API."""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.express as px
import streamlit as st

from dashboards import clients, common, queries
from dashboards.analysis import as_dict
from dashboards.timerange import Window

TOP_N = 100
_SCORE = st.column_config.NumberColumn("max score", format="%.3f")
_MEAN = st.column_config.NumberColumn("mean score", format="%.3f")
_RATE = st.column_config.NumberColumn("alert rate", format="percent")
_SEEN = common.utc_column("last seen (UTC)")
_CONFIRMED = st.column_config.NumberColumn("confirmed fraud", format="%d")


def _ranking(frame: pd.DataFrame, amount_column: str, amount_label: str) -> None:
    """A top-risk table: the columns both rankings share, plus their amount column."""
    common.table(
        frame,
        {
            "max_score": _SCORE,
            "mean_score": _MEAN,
            "alert_rate": _RATE,
            "last_seen": _SEEN,
            "confirmed_fraud": _CONFIRMED,
            amount_column: st.column_config.NumberColumn(amount_label, format="%.0f"),
        },
    )


def _users(window: Window) -> pd.DataFrame | None:
    users = common.fetch(queries.top_users, common.dsn(), window, TOP_N)
    if users is None:
        return None
    if users.empty:
        common.empty_state(common.no_data("decided transactions", window))
        return users
    _ranking(users, "amount_usd", "amount (USD)")
    st.caption(f"The {TOP_N} users with the most alerts, then the highest score. Click a header to sort.")
    return users


def _merchants(window: Window) -> None:
    merchants = common.fetch(queries.top_merchants, common.dsn(), window, TOP_N)
    if not common.has_rows(merchants, common.no_data("decided transactions", window)):
        return
    _ranking(merchants, "fraud_amount_usd", "fraud amount (USD)")
    st.caption(f"The {TOP_N} merchants with the most alerts, then the highest score.")


def _timeline(user_id: str, window: Window) -> None:
    timeline = common.fetch(queries.user_timeline, common.dsn(), user_id, window)
    if not common.has_rows(timeline, f"User {user_id} has no transactions between {window.label()}."):
        return
    decided = timeline.dropna(subset=["ensemble_score"])
    flagged = int(decided["is_fraud"].astype(bool).sum()) if not decided.empty else 0
    st.markdown(f"**{user_id}**: {len(timeline):,} transactions in the window, {flagged:,} alerts.")
    if not decided.empty:
        plot = decided.assign(
            decision=decided["is_fraud"].map({True: "fraud", False: "genuine"}),
            size=decided["amount_usd"].fillna(1.0).abs().clip(lower=1.0),
        )
        fig = px.scatter(
            plot,
            x="event_time",
            y="ensemble_score",
            color="decision",
            size="size",
            size_max=18,
            color_discrete_map={"fraud": "#d62728", "genuine": "#1f77b4"},
            hover_data=[
                "transaction_id",
                "amount",
                "currency",
                "amount_usd",
                "country",
                "channel",
                "merchant_id",
            ],
            labels={"event_time": "event time (UTC)", "ensemble_score": "ensemble score"},
            title=f"Timeline of {user_id} (marker size: amount in USD)",
        )
        fig.update_layout(height=360)
        st.plotly_chart(fig, width="stretch")
    common.table(
        timeline.drop(columns=["scores"]),
        {"ensemble_score": st.column_config.NumberColumn("score", format="%.3f")},
    )
    options = list(timeline["transaction_id"])
    transaction_id = st.selectbox("Transaction to explain", options, key="risk_tx")
    if transaction_id:
        _explanation(str(transaction_id), timeline[timeline["transaction_id"] == transaction_id].iloc[0])


def _explanation(transaction_id: str, row: pd.Series) -> None:
    scores = as_dict(row.get("scores"))
    if scores:
        st.caption(
            "Per-model scores stored with the decision: "
            + ", ".join(f"{k} {float(v):.3f}" for k, v in sorted(scores.items()))
        )
    answers: dict[str, clients.Explanation] = st.session_state.setdefault("explanations", {})
    if st.button("Explain this transaction", key="risk_explain"):
        s = common.settings()
        keys = s.api.key_list()
        answers[transaction_id] = clients.explain(
            clients.api_base_url(s), transaction_id, keys[0] if keys else None
        )
    answer = answers.get(transaction_id)
    if answer is None:
        return
    if not answer.ok:
        st.warning(f"No explanation: {answer.reason}.")
        return
    _show_explanation(answer.body)


def _show_explanation(body: dict[str, Any]) -> None:
    rationale = body.get("rationale")
    if rationale:
        source = body.get("rationale_source", "unknown")
        st.markdown(f"**Why** (source: {source}): {rationale}")
    attributions = body.get("attributions")
    if isinstance(attributions, dict) and attributions:
        rows = [
            {"model": model, "feature": feature, "attribution": float(value)}
            for model, per_feature in attributions.items()
            if isinstance(per_feature, dict)
            for feature, value in per_feature.items()
            if isinstance(value, int | float)
        ]
        if rows:
            frame = pd.DataFrame(rows)
            fig = px.bar(frame, x="attribution", y="feature", color="model", orientation="h", barmode="group")
            st.plotly_chart(fig, width="stretch")
    with st.expander("Raw answer from /explain"):
        st.json(body)


def body() -> None:
    window = common.captioned_window("Event time")
    users_tab, merchants_tab = st.tabs(["Users", "Merchants"])
    with users_tab:
        users = _users(window)
    with merchants_tab:
        _merchants(window)
    if users is None:
        return
    st.subheader("Drill-down: a user's timeline")
    options = list(users["user_id"]) if not users.empty else []
    left, right = st.columns(2)
    picked = left.selectbox("Top-risk user", options, key="risk_user", index=0 if options else None)
    typed = right.text_input("…or any user id", key="risk_user_typed").strip()
    user_id = typed or picked
    if not user_id:
        common.empty_state("Pick a user (the table above is empty for this range) or type a user id.")
        return
    _timeline(str(user_id), window)


st.title("Top-risk users and merchants")
common.live(body)
