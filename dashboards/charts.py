"""Plotly figures that need more than one line of ``plotly.express`` (pure: data in, figure out)."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from dashboards.analysis import Curves
from dashboards.geo import alpha3, country_name

MEASURES = {
    "Fraud rate": "fraud_rate",
    "Fraudulent transactions": "fraud_transactions",
    "Fraud amount (USD)": "fraud_amount_usd",
}


def country_table(by_country: pd.DataFrame) -> pd.DataFrame:
    """``fraud_by_country`` rows with alpha-3 codes and display names added."""
    out = by_country.copy()
    out["iso3"] = [alpha3(c) for c in out["country"]]
    out["name"] = [country_name(c) for c in out["country"]]
    return out


def choropleth(table: pd.DataFrame, measure: str) -> go.Figure:
    """A world map coloured by ``measure`` (a column of :func:`country_table`)."""
    labels = {v: k for k, v in MEASURES.items()}
    fig = px.choropleth(
        table.dropna(subset=["iso3"]),
        locations="iso3",
        locationmode="ISO-3",
        color=measure,
        hover_name="name",
        hover_data={
            "iso3": False,
            "transactions": ":,",
            "fraud_transactions": ":,",
            "fraud_rate": ":.2%",
            "fraud_amount_usd": ":,.0f",
        },
        labels={**labels, "transactions": "transactions", "fraud_transactions": "fraudulent"},
        color_continuous_scale="OrRd",
        projection="natural earth",
    )
    fig.update_geos(
        projection_rotation_lon=0,
        lataxis_range=[-58, 85],
        showcountries=True,
        countrycolor="#9a9a9a",
        showland=True,
        landcolor="#eeeeee",
        showcoastlines=False,
        showframe=False,
    )
    fig.update_layout(height=520, margin={"l": 0, "r": 0, "t": 10, "b": 0})
    top = float(table[measure].max()) if not table.empty else 0.0
    fig.update_coloraxes(cmin=0.0, cmax=top if top > 0 else (0.01 if measure == "fraud_rate" else 1.0))
    if measure == "fraud_rate":
        fig.update_coloraxes(colorbar_tickformat=".1%")
    return fig


def pr_roc(curves: Curves) -> tuple[go.Figure, go.Figure]:
    """Precision–recall and ROC figures of labelled decisions."""
    pr = go.Figure(go.Scatter(x=curves.recall, y=curves.precision, mode="lines", name="ensemble"))
    unit_square = {"xaxis_range": [0, 1], "yaxis_range": [0, 1.02], "height": 380}
    pr.update_layout(
        title=f"Precision–recall (AP {curves.average_precision:.3f})",
        xaxis_title="recall",
        yaxis_title="precision",
        **unit_square,
    )
    roc = go.Figure(go.Scatter(x=[0.0, *curves.fpr], y=[0.0, *curves.recall], mode="lines", name="ensemble"))
    roc.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot"}, name="chance"))
    roc.update_layout(
        title=f"ROC (AUC {curves.roc_auc:.3f})",
        xaxis_title="false-positive rate",
        yaxis_title="true-positive rate",
        **unit_square,
    )
    return pr, roc
