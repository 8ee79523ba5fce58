"""Geography: fraud rate and fraud amount per country on a world map, for the sidebar's range of
event time. A country's fraud counts the transactions *made there* whose own decision was fraud
(joined on transaction_id), not every transaction of a flagged user."""

from __future__ import annotations

import streamlit as st

from dashboards import charts, common, queries
from dashboards.geo import drawable_alpha3

TABLE_COLUMNS = (
    "name", "country", "transactions", "fraud_transactions", "fraud_rate", "fraud_amount_usd",
    "amount_usd", "labelled", "confirmed_fraud",
)  # fmt: skip


def body() -> None:
    window = common.captioned_window("Event time")
    by_country = common.fetch(queries.fraud_by_country, common.dsn(), window)
    if not common.has_rows(by_country, common.no_data("decided transactions", window)):
        return
    table = charts.country_table(by_country)
    total, fraud = int(table["transactions"].sum()), int(table["fraud_transactions"].sum())
    cols = st.columns(4)
    cols[0].metric("Decided transactions", common.fmt_int(total))
    cols[1].metric("Fraudulent transactions", common.fmt_int(fraud))
    cols[2].metric("Fraud rate", common.fmt_pct(fraud / total))
    cols[3].metric("Fraud amount (USD)", f"{table['fraud_amount_usd'].sum():,.0f}")

    label = st.radio("Colour countries by", list(charts.MEASURES), horizontal=True, key="geo_measure")
    measure = charts.MEASURES[label]
    url = common.static_url()
    if url is None:
        common.empty_state(
            "The map needs Streamlit's static file server (country shapes are served from "
            "dashboards/static/): start the app with `--server.enableStaticServing true`, as "
            "`dashboards.launch` does. The table below has the same numbers."
        )
    else:
        st.plotly_chart(charts.choropleth(table, measure), width="stretch", config={"topojsonURL": url})
    hidden = table[~table["iso3"].isin(drawable_alpha3())]
    if not hidden.empty:
        st.caption(
            "Not drawn (no shape at this map scale): "
            + ", ".join(f"{n} ({c})" for n, c in zip(hidden["name"], hidden["country"], strict=True))
        )
    unconverted = int(table["unconverted"].sum())
    if unconverted:
        st.caption(
            f"{unconverted:,} transactions in currencies without a display rate are left out of USD sums."
        )

    common.table(
        table.sort_values(measure, ascending=False)[list(TABLE_COLUMNS)],
        {
            "name": "country",
            "country": "code",
            "fraud_transactions": st.column_config.NumberColumn("fraudulent", format="%d"),
            "fraud_rate": st.column_config.ProgressColumn(
                "fraud rate", format="percent", min_value=0.0, max_value=max(table["fraud_rate"].max(), 1e-9)
            ),
            "fraud_amount_usd": st.column_config.NumberColumn("fraud amount (USD)", format="%.0f"),
            "amount_usd": st.column_config.NumberColumn("amount (USD)", format="%.0f"),
            "confirmed_fraud": st.column_config.NumberColumn("confirmed fraud (labels)", format="%d"),
        },
    )
    st.caption(
        "Fraud = transactions whose own decision was `is_fraud`; confirmed = labelled fraud. "
        "Amounts are converted to USD at rounded display rates."
    )


st.title("Geography")
common.live(body)
