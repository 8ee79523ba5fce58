"""The dashboard's pure parts: time windows, PR/ROC from score bins, registry summaries, country
codes and the map figure, and the launcher's command line."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from dashboards import analysis, charts, geo, launch, queries, timerange
from dashboards.timerange import Window

NOW = datetime(2026, 3, 4, 5, 6, 7, 891000, tzinfo=UTC)


def test_relative_windows_end_at_now_rounded_for_the_cache() -> None:
    w = timerange.last(timedelta(hours=1), NOW)
    assert w.end == datetime(2026, 3, 4, 5, 6, 5, tzinfo=UTC)
    assert w.length == timedelta(hours=1)
    assert timerange.last(timedelta(days=400), NOW).length == timerange.MAX_WINDOW


def test_windows_are_bounded_and_aware() -> None:
    with pytest.raises(ValueError):
        Window(NOW, NOW)
    with pytest.raises(ValueError):
        Window(NOW.replace(tzinfo=None), NOW.replace(tzinfo=None) + timedelta(1))
    cut, was_cut = timerange.clipped(NOW - timedelta(days=90), NOW)
    assert was_cut and cut.end == NOW and cut.length == timerange.MAX_WINDOW
    assert "UTC" in cut.label()


@pytest.mark.parametrize(
    "value",
    [
        "2009-07-04T05:36:00Z",
        "2009-07-04T05:36:00+00:00",
        "2009-07-04T05:36:00 00:00",
        "2009-07-04T07:36:00+02:00",
    ],
)
def test_url_instants(value: str) -> None:
    assert timerange.parse_instant(value) == datetime(2009, 7, 4, 5, 36, tzinfo=UTC)


def test_url_window() -> None:
    w = timerange.from_query_params({"from": "2009-07-04T05:36:00Z", "to": ["2009-07-04T07:38:00Z"]})
    assert w == Window(datetime(2009, 7, 4, 5, 36, tzinfo=UTC), datetime(2009, 7, 4, 7, 38, tzinfo=UTC))
    assert timerange.from_query_params({"from": "yesterday", "to": "2009-07-04T07:38:00Z"}) is None
    assert timerange.from_query_params({"from": "2009-07-04T08:00:00Z", "to": "2009-07-04T07:00:00Z"}) is None
    assert timerange.from_query_params({}) is None


def test_buckets_coarsen_for_long_windows() -> None:
    day = timerange.last(timedelta(hours=20), NOW)
    week = timerange.last(timedelta(days=7), NOW)
    assert timerange.bucket_for(day, "minute") == "minute"
    assert timerange.bucket_for(week, "minute") == "hour"
    assert timerange.bucket_for(week, "day") == "day"
    with pytest.raises(ValueError):
        timerange.bucket_for(day, "second")
    with pytest.raises(ValueError):
        queries.trends("postgresql://unused", day, "second; DROP TABLE x")


def _bins(scores: np.ndarray, y: np.ndarray) -> pd.DataFrame:
    """One bin per distinct score, as ``labelled_score_bins`` returns them."""
    frame = pd.DataFrame({"threshold": scores, "positives": y, "negatives": 1 - y})
    return frame.groupby("threshold", as_index=False)[["positives", "negatives"]].sum()


def test_curves_from_bins_match_sklearn() -> None:
    rng = np.random.default_rng(7)
    y = (rng.random(5000) < 0.05).astype(int)
    scores = np.round(np.clip(rng.normal(0.3 + 0.35 * y, 0.15), 0, 1), 3)  # ties on purpose
    curves = analysis.curves_from_bins(_bins(scores, y))
    assert curves is not None
    assert curves.roc_auc == pytest.approx(roc_auc_score(y, scores), abs=1e-9)
    assert curves.average_precision == pytest.approx(average_precision_score(y, scores), abs=1e-9)
    assert curves.positives == y.sum() and curves.negatives == len(y) - y.sum()
    assert curves.recall[-1] == 1.0 and curves.fpr[-1] == 1.0
    assert np.all(np.diff(curves.threshold) <= 0)


def test_curves_need_both_classes() -> None:
    assert analysis.curves_from_bins(pd.DataFrame(columns=["threshold", "positives", "negatives"])) is None
    only_fraud = pd.DataFrame({"threshold": [0.1, 0.9], "positives": [3, 4], "negatives": [0, 0]})
    assert analysis.curves_from_bins(only_fraud) is None


def _registry() -> pd.DataFrame:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    rows = [
        ("xgb", "1", "archived", {"roc_auc": 0.9}, t0),
        ("xgb", "2", "production", {"roc_auc": 0.95, "pr_curve": [[0, 1], [1, 0.1]], "nested": {"a": 1}},
         t0 + timedelta(1)),
        ("xgb", "3", "candidate", json.dumps({"roc_auc": 0.96}), t0 + timedelta(2)),
        ("if", "7", "candidate", {}, t0),
    ]  # fmt: skip
    return pd.DataFrame(rows, columns=["name", "version", "stage", "metrics", "created_at"])


def test_registry_summaries() -> None:
    registry = _registry()
    assert analysis.production_versions(registry) == {"xgb": "2"}
    assert analysis.production_versions(registry.iloc[0:0]) == {}
    metrics = analysis.headline_metrics(registry)
    assert list(metrics["roc_auc"][:3]) == [0.9, 0.95, 0.96]  # text jsonb is parsed too
    assert "nested" not in metrics.columns and "pr_curve" not in metrics.columns
    curve = analysis.registry_curve(analysis.as_dict(registry.iloc[1]["metrics"]), "pr_curve")
    assert curve is not None and list(curve.columns) == ["recall", "precision"]
    assert analysis.registry_curve({}, "roc_curve") is None
    assert analysis.registry_curve({"roc_curve": [["x"]]}, "roc_curve") is None


def test_every_simulated_country_is_on_the_map() -> None:
    simulated = (
        "US", "DE", "CO", "BR", "MX", "ES", "NG", "FR", "IN", "GB", "IT", "RU", "ID", "AE", "CA",
        "CH", "CN", "TH", "PT", "ZA", "JP", "KR", "AU", "VN", "PH", "EG", "TR", "UA", "PL",
    )  # fmt: skip
    drawable = geo.drawable_alpha3()
    for code in simulated:
        assert geo.alpha3(code) in drawable, code
    assert geo.alpha3("de ") == "DEU" and geo.country_name("GB") == "United Kingdom"
    assert geo.alpha3("XX") is None and geo.country_name("XX") == "XX"
    assert len(geo.COUNTRIES) == 249


def test_choropleth_uses_iso3_codes_and_a_zero_based_scale() -> None:
    by_country = pd.DataFrame(
        {
            "country": ["DE", "BR", "XX"],
            "transactions": [100, 50, 5],
            "fraud_transactions": [1, 10, 0],
            "fraud_amount_usd": [10.0, 900.0, 0.0],
        }
    )
    by_country["fraud_rate"] = by_country["fraud_transactions"] / by_country["transactions"]
    table = charts.country_table(by_country)
    assert list(table["iso3"][:2]) == ["DEU", "BRA"] and pd.isna(table["iso3"][2])
    fig = charts.choropleth(table, "fraud_rate")
    trace = fig.data[0]
    assert trace.locationmode == "ISO-3" and list(trace.locations) == ["DEU", "BRA"]
    assert fig.layout.coloraxis.cmin == 0 and fig.layout.coloraxis.cmax == pytest.approx(0.2)
    flat = charts.choropleth(table.assign(fraud_rate=0.0), "fraud_rate")
    assert flat.layout.coloraxis.cmax > 0  # an all-zero map still has a readable scale


def test_launch_command() -> None:
    argv = launch.command(port=9123)
    assert argv[1:4] == ["-m", "streamlit", "run"] and argv[4] == "dashboards/app.py"
    pairs = dict(zip(argv[5::2], argv[6::2], strict=True))
    assert pairs["--server.port"] == "9123"
    assert pairs["--server.address"] == "127.0.0.1"
    assert pairs["--server.headless"] == "true"
    assert pairs["--browser.gatherUsageStats"] == "false"
    assert pairs["--server.enableStaticServing"] == "true"  # the map's shapes are served from static/
    assert (
        launch.DEFAULT_PORT == 8501
        and launch.command()[launch.command().index("--server.port") + 1] == "8501"
    )
    assert (launch.REPO_ROOT / argv[4]).exists()
    assert geo.TOPOJSON_FILE.parent == geo.STATIC_DIR == launch.APP.parent / "static"
