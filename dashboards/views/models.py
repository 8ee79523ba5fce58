"""Models: the registry (versions, stage, metrics), which version is in production and which
versions actually decided traffic, the ensemble's score distribution, PR/ROC curves from labelled
decisions, the registry's own test-split curves, and feature drift from Prometheus."""

from __future__ import annotations

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
import streamlit as st

from dashboards import analysis, charts, clients, common, queries
from dashboards.timerange import Window


def _registry() -> pd.DataFrame | None:
    models = common.fetch(queries.registry, common.dsn())
    if models is None:
        return None
    st.subheader("Registry")
    if models.empty:
        common.empty_state(
            "The model registry is empty — train models with `fraudray train` (`make run` trains "
            "quick ones when the registry is empty)."
        )
        return models
    production = analysis.production_versions(models)
    if production:
        cols = st.columns(min(len(production), 4))
        for i, (name, version) in enumerate(production.items()):
            cols[i % len(cols)].metric(f"In production: {name}", version)
    else:
        common.empty_state(
            "No version has stage `production` yet — promote one with `fraudray models promote`."
        )
    common.table(
        analysis.headline_metrics(models),
        {
            "created_at": common.utc_column("created (UTC)"),
            **{k: st.column_config.NumberColumn(k, format="%.4f") for k in ("roc_auc", "aucpr", "precision")},
            **{k: st.column_config.NumberColumn(k, format="%.4f") for k in ("recall", "fpr", "threshold")},
        },
    )
    return models


def _version_details(models: pd.DataFrame) -> None:
    labels = [f"{r.name} · {r.version} · {r.stage}" for r in models.itertuples()]
    production_first = sorted(range(len(labels)), key=lambda i: models.iloc[i]["stage"] != "production")
    picked = st.selectbox("Version", [labels[i] for i in production_first], key="model_version_pick")
    if picked is None:
        return
    row = models.iloc[labels.index(picked)]
    metrics = analysis.as_dict(row["metrics"])
    curves = [(key, analysis.registry_curve(metrics, key)) for key in analysis.CURVE_KEYS]
    drawn = [(key, frame) for key, frame in curves if frame is not None]
    if drawn:
        cols = st.columns(len(drawn))
        for col, (key, frame) in zip(cols, drawn, strict=True):
            x, y = frame.columns
            fig = px.line(frame, x=x, y=y, title=f"{key.replace('_', ' ')} (registry, test split)")
            fig.update_layout(height=320, xaxis_range=[0, 1], yaxis_range=[0, 1.02])
            col.plotly_chart(fig, width="stretch")
    else:
        st.caption("This version's metrics hold no stored curves.")
    left, right = st.columns(2)
    with left:
        st.caption("metrics")
        st.json({k: v for k, v in metrics.items() if k not in analysis.CURVE_KEYS}, expanded=False)
    with right:
        st.caption(f"params · artefact `{row['uri']}`")
        st.json(analysis.as_dict(row["params"]), expanded=False)


def _serving(window: Window) -> None:
    st.subheader("Versions deciding traffic")
    serving = common.fetch(queries.serving_versions, common.dsn(), window)
    if not common.has_rows(serving, common.no_data("decisions", window)):
        return
    common.table(
        serving,
        {
            "first_decision": common.utc_column("first (UTC)"),
            "last_decision": common.utc_column("last (UTC)"),
        },
    )


def _scores(window: Window) -> None:
    st.subheader("Ensemble score distribution")
    hist = common.fetch(queries.score_histogram, common.dsn(), window)
    if not common.has_rows(hist, common.no_data("decisions", window)):
        return
    plot = hist.assign(decision=hist["is_fraud"].map({True: "fraud", False: "genuine"}))
    fig = go.Figure()
    for decision, colour in (("genuine", "#1f77b4"), ("fraud", "#d62728")):
        part = plot[plot["decision"] == decision]
        if not part.empty:
            fig.add_trace(
                go.Bar(
                    x=(part["bin_start"] + part["bin_end"]) / 2,
                    y=part["decisions"],
                    width=(part["bin_end"] - part["bin_start"]),
                    name=decision,
                    marker_color=colour,
                )
            )
    fig.update_layout(
        barmode="stack", height=340, xaxis_title="ensemble score", yaxis_title="decisions", bargap=0.02
    )
    st.plotly_chart(fig, width="stretch")


def _labelled_curves(window: Window) -> None:
    st.subheader("PR and ROC on labelled decisions")
    bins = common.fetch(queries.labelled_score_bins, common.dsn(), window)
    if bins is None:
        return
    curves = analysis.curves_from_bins(bins)
    if curves is None:
        labelled = int(bins[["positives", "negatives"]].to_numpy().sum()) if not bins.empty else 0
        common.empty_state(
            f"{labelled:,} labelled decisions in this range: curves need labels of both classes. "
            "Labels arrive late (after chargebacks); widen the range, or see the registry's "
            "test-split curves below."
        )
        return
    st.caption(
        f"{curves.positives:,} fraud and {curves.negatives:,} genuine labels joined to their decisions "
        "(ensemble score)."
    )
    pr, roc = charts.pr_roc(curves)
    left, right = st.columns(2)
    left.plotly_chart(pr, width="stretch")
    right.plotly_chart(roc, width="stretch")


def _drift() -> None:
    st.subheader("Feature drift (PSI)")
    result = clients.prometheus_query(clients.prometheus_base_url(common.settings()), clients.DRIFT_QUERY)
    if not result.reachable:
        st.caption(f"Prometheus not reachable — {result.reason}.")
        return
    if not result.series:
        st.caption("Prometheus answers, but no drift is reported (`fraudray_feature_drift_psi`).")
        return
    drift = pd.DataFrame(
        [{"feature": labels.get("feature", "?"), "psi": value} for labels, value in result.series]
    ).sort_values("psi", ascending=False)
    fig = px.bar(drift, x="psi", y="feature", orientation="h", title="PSI against the training window")
    fig.add_vline(x=0.2, line_dash="dot", annotation_text="0.2: significant shift")
    st.plotly_chart(fig, width="stretch")


def body() -> None:
    window = common.captioned_window("Decision time")
    models = _registry()
    if models is not None and not models.empty:
        _version_details(models)
    _serving(window)
    _scores(window)
    _labelled_curves(window)
    _drift()


st.title("Models")
common.live(body)
