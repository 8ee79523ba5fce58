"""The Streamlit dashboard against the real PostgreSQL: a short simulated stream is written with
this run's own id prefix into an event-time window of its own (a random minute between 2005
and 2015, where no other test writes), then the query functions, every page under Streamlit's
AppTest, and every page in headless Chromium are checked against what was written. Only this
run's rows are deleted afterwards."""

from __future__ import annotations

import json
import random
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import psycopg2
import psycopg2.extras
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from core.contracts import TX_COLUMNS
from core.settings import Settings, get_settings
from dashboards import analysis, launch, queries, screenshot
from dashboards.timerange import Window
from ingest.simulator import demo_transactions
from ingest.sinks import PostgresSink

pytestmark = pytest.mark.integration

APP = Path(__file__).resolve().parents[2] / "dashboards" / "app.py"
PAGES = ("overview", "geography", "risk", "trends", "models", "alerts")
BURSTS = 3  # one burst of transactions per hour: several hour buckets
PER_BURST = 300
FRAUD_USERS = 3
# demo_transactions needs a few hundred users: with 30 or 100 its compressed scenario clock makes
# an empty random range (ValueError: low >= high in ingest/simulator/scenarios.py), as of 3f979f9.
USERS = 200


@dataclass
class Stream:
    prefix: str
    model_name: str
    window: Window
    transactions: list[dict[str, Any]]
    decisions: dict[str, dict[str, Any]]
    labels: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def query(self) -> str:
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return f"from={self.window.start:{fmt}}&to={self.window.end:{fmt}}"

    def alerts(self) -> list[str]:
        return [tx for tx, d in self.decisions.items() if d["is_fraud"]]

    def status(self, tx_id: str) -> str:
        label = self.labels.get(tx_id)
        if label is None:
            return "awaiting label"
        return "confirmed fraud" if label["is_fraud"] else "false positive"


def _build(prefix: str, rng: random.Random) -> Stream:
    start = datetime(2005, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(10 * 365 * 24 * 60))
    transactions: list[dict[str, Any]] = []
    for burst in range(BURSTS):
        seed = rng.randrange(2**31)
        for generated in demo_transactions(
            PER_BURST, seed=seed, users=USERS, start=start + timedelta(hours=burst)
        ):
            record = dict(generated)
            for key in ("transaction_id", "user_id", "merchant_id"):
                record[key] = f"{prefix}{record[key]}"
            record["burst"] = burst
            transactions.append(record)
    # the most active users turn fraudulent: their timelines have something to show
    activity = Counter(t["user_id"] for t in transactions)
    fraud_users = {user for user, _ in sorted(activity.items(), key=lambda kv: (-kv[1], kv[0]))[:FRAUD_USERS]}
    decisions, labels = {}, {}
    for t in transactions:
        if t["user_id"] in fraud_users:
            score = rng.uniform(0.85, 0.99)
        elif rng.random() < 0.03:
            score = rng.uniform(0.6, 0.8)
        else:
            score = rng.uniform(0.01, 0.4)
        latency_ms = rng.uniform(40, 900)
        decisions[t["transaction_id"]] = {
            "transaction_id": t["transaction_id"],
            "user_id": t["user_id"],
            "scores": {"if": round(score * 0.9, 4), "xgb": round(score, 4), "ae": round(score * 1.1, 4)},
            "ensemble_score": score,
            "is_fraud": score >= 0.5,
            "model_version": f"{prefix}v2",
            "scored_at": t["event_time"] + timedelta(milliseconds=latency_ms),
            "latency_ms": latency_ms,
        }
        if t["burst"] < BURSTS - 1:  # the newest hour is still waiting for its labels
            flagged = score >= 0.5
            truth = (rng.random() > 0.15) if flagged else (rng.random() < 0.01)
            scenario = None
            if truth:
                scenario = "account_takeover" if t["user_id"] in fraud_users else "card_testing"
            labels[t["transaction_id"]] = {
                "is_fraud": truth,
                "scenario": scenario,
                "labelled_at": t["event_time"] + timedelta(days=1),
            }
    last = max(d["scored_at"] for d in decisions.values())
    end = last.replace(second=0, microsecond=0) + timedelta(minutes=2)
    return Stream(prefix, f"dashtest_{prefix[9:17]}", Window(start, end), transactions, decisions, labels)


def _write(dsn: str, s: Stream) -> None:
    sink = PostgresSink(dsn)
    try:
        sink.write([tuple(t.get(c) for c in TX_COLUMNS) for t in s.transactions], [])
    finally:
        sink.close()
    metrics = {
        "roc_auc": 0.97,
        "aucpr": 0.81,
        "precision": 0.9,
        "recall": 0.7,
        "pr_curve": [[0.0, 1.0], [0.5, 0.9], [0.9, 0.5], [1.0, 0.1]],
        "roc_curve": [[0.0, 0.0], [0.05, 0.7], [0.3, 0.95], [1.0, 1.0]],
    }
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO decisions (transaction_id, user_id, scores, ensemble_score, is_fraud, "
            "model_version, scored_at, latency_ms) VALUES %s",
            [
                (
                    d["transaction_id"],
                    d["user_id"],
                    json.dumps(d["scores"]),
                    d["ensemble_score"],
                    d["is_fraud"],
                    d["model_version"],
                    d["scored_at"],
                    d["latency_ms"],
                )
                for d in s.decisions.values()
            ],
        )
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO labels (transaction_id, is_fraud, scenario, labelled_at) VALUES %s",
            [(tx, lab["is_fraud"], lab["scenario"], lab["labelled_at"]) for tx, lab in s.labels.items()],
        )
        psycopg2.extras.execute_values(
            cur,
            "INSERT INTO models (name, version, stage, uri, metrics, params, created_at) VALUES %s",
            [
                (
                    s.model_name,
                    "v1",
                    "archived",
                    "mem://v1",
                    json.dumps({"roc_auc": 0.9}),
                    "{}",
                    s.window.start,
                ),
                (
                    s.model_name,
                    "v2",
                    "production",
                    "mem://v2",
                    json.dumps(metrics),
                    json.dumps({"depth": 4}),
                    s.window.start + timedelta(minutes=1),
                ),
                (
                    s.model_name,
                    "v3",
                    "candidate",
                    "mem://v3",
                    "{}",
                    "{}",
                    s.window.start + timedelta(minutes=2),
                ),
            ],
        )
    conn.close()


def _delete(dsn: str, s: Stream) -> None:
    ids = [t["transaction_id"] for t in s.transactions]
    assert all(i.startswith(s.prefix) for i in ids)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for table in ("labels", "decisions", "transactions"):
            cur.execute(f"DELETE FROM {table} WHERE transaction_id = ANY(%s)", (ids,))
        cur.execute("DELETE FROM models WHERE name = %s", (s.model_name,))
    conn.close()


@pytest.fixture(scope="module")
def stream(local_stack: Settings) -> Iterator[Stream]:
    dsn = local_stack.postgres.dsn.get_secret_value()
    s = _build(f"dashtest-{uuid.uuid4().hex[:8]}-", random.Random())
    _write(dsn, s)
    try:
        yield s
    finally:
        _delete(dsn, s)


@pytest.fixture
def dsn(local_stack: Settings) -> str:
    return local_stack.postgres.dsn.get_secret_value()


@pytest.fixture
def app_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """Settings the app reads through get_settings(): the API on a port where nothing listens."""
    monkeypatch.setenv("FRAUDRAY_SERVE_HTTP_PORT", str(screenshot.free_port()))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def _run(page: str, query: str = "") -> AppTest:
    at = AppTest.from_file(str(APP), default_timeout=60)
    if query:
        at.query_params.update(dict(p.split("=", 1) for p in query.split("&")))
    at.run()
    if page != "overview":
        at.switch_page(f"views/{page}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _texts(at: AppTest) -> str:
    parts = [e.value for kind in (at.info, at.warning, at.error, at.caption, at.markdown) for e in kind]
    return "\n".join(str(p) for p in parts)


def _metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r} in {[m.label for m in at.metric]}"
    return str(values[0])


# -- the query functions ----------------------------------------------------------------------


def test_geography_counts_fraudulent_transactions_per_country(stream: Stream, dsn: str) -> None:
    by_country = queries.fraud_by_country(dsn, stream.window)
    totals: Counter[str] = Counter(t["country"] for t in stream.transactions)
    fraud: Counter[str] = Counter(
        t["country"] for t in stream.transactions if stream.decisions[t["transaction_id"]]["is_fraud"]
    )
    got = by_country.set_index("country")
    assert dict(got["transactions"]) == dict(totals)
    assert {c: int(v) for c, v in got["fraud_transactions"].items() if v} == dict(fraud)
    assert got["fraud_rate"].between(0, 1).all()
    # a flagged user's genuine transactions elsewhere are not counted as that country's fraud
    assert int(got["fraud_transactions"].sum()) == len(stream.alerts())


def test_top_users_timeline_and_transaction(stream: Stream, dsn: str) -> None:
    users = queries.top_users(dsn, stream.window, 10)
    alerts_per_user = Counter(stream.decisions[t]["user_id"] for t in stream.alerts())
    assert list(users["alerts"]) == sorted(users["alerts"], reverse=True)
    top = users.iloc[0]
    assert int(top["alerts"]) == max(alerts_per_user.values())
    timeline = queries.user_timeline(dsn, top["user_id"], stream.window)
    mine = [t for t in stream.transactions if t["user_id"] == top["user_id"]]
    assert len(timeline) == len(mine) == int(top["transactions"])
    assert timeline["event_time"].is_monotonic_decreasing
    one = queries.transaction(dsn, mine[0]["transaction_id"])
    assert len(one) == 1 and one.iloc[0]["user_id"] == top["user_id"]
    merchants = queries.top_merchants(dsn, stream.window, len(stream.transactions))
    assert int(merchants["transactions"].sum()) == len(stream.transactions)


def test_trends_alerts_and_models(stream: Stream, dsn: str) -> None:
    trends = queries.trends(dsn, stream.window, "hour")
    assert trends["bucket"].nunique() == BURSTS
    assert int(trends["transactions"].sum()) == len(stream.transactions)
    assert int(trends["alerts"].sum()) == len(stream.alerts())
    scenarios = queries.scenario_trends(dsn, stream.window, "minute")
    confirmed = Counter(lab["scenario"] for lab in stream.labels.values() if lab["is_fraud"])
    assert dict(scenarios.groupby("scenario")["confirmed_fraud"].sum()) == dict(confirmed)

    status = queries.alert_status_counts(dsn, stream.window).set_index("status")["alerts"]
    assert dict(status) == dict(Counter(stream.status(t) for t in stream.alerts()))
    latest = queries.latest_alerts(dsn, stream.window, 20)
    assert len(latest) == min(20, len(stream.alerts()))
    assert latest["scored_at"].is_monotonic_decreasing

    registry = queries.registry(dsn)
    assert analysis.production_versions(registry)[stream.model_name] == "v2"
    serving = queries.serving_versions(dsn, stream.window).set_index("model_version")
    assert int(serving.loc[f"{stream.prefix}v2", "decisions"]) == len(stream.transactions)
    hist = queries.score_histogram(dsn, stream.window)
    assert int(hist["decisions"].sum()) == len(stream.transactions)
    assert int(hist.loc[hist["is_fraud"], "decisions"].sum()) == len(stream.alerts())
    curves = analysis.curves_from_bins(queries.labelled_score_bins(dsn, stream.window))
    assert curves is not None
    assert curves.positives == sum(lab["is_fraud"] for lab in stream.labels.values())
    assert curves.positives + curves.negatives == len(stream.labels)
    assert 0.5 < curves.roc_auc <= 1.0


def test_overview_as_of_the_stream(stream: Stream, dsn: str) -> None:
    last = max(d["scored_at"] for d in stream.decisions.values())
    now = last + timedelta(seconds=1)
    row = queries.overview(dsn, now).iloc[0]
    newest = [d for d in stream.decisions.values() if now - timedelta(hours=1) <= d["scored_at"] < now]
    assert int(row["decisions_1h"]) == len(newest)
    assert int(row["alerts_1h"]) == sum(d["is_fraud"] for d in newest)
    assert 40 <= float(row["latency_p50_ms"]) <= 900
    assert row["last_scored_at"].to_pydatetime() == last


def test_queries_on_an_empty_window(dsn: str, local_stack: Settings) -> None:
    empty = Window(datetime(2000, 1, 1, tzinfo=UTC), datetime(2000, 1, 2, tzinfo=UTC))
    for fn in (queries.fraud_by_country, queries.top_users, queries.top_merchants, queries.latest_alerts):
        assert fn(dsn, empty).empty, fn.__name__
    assert queries.trends(dsn, empty, "hour").empty
    assert queries.score_histogram(dsn, empty).empty
    assert analysis.curves_from_bins(queries.labelled_score_bins(dsn, empty)) is None
    row = queries.overview(dsn, empty.end).iloc[0]
    assert int(row["decisions_1h"]) == 0 and pd.isna(row["last_scored_at"])


# -- every page under AppTest -----------------------------------------------------------------


def test_overview_page(stream: Stream, app_env: pytest.MonkeyPatch) -> None:
    at = _run("overview", stream.query)
    labels = [m.label for m in at.metric]
    for label in ("Throughput (tx/s, last 60 s)", "Fraud rate (last hour)", "Alerts (last hour)"):
        assert label in labels
    assert "Consumer lag (records)" in labels
    assert "Updated " in _texts(at)


def test_overview_says_when_prometheus_is_not_reachable(stream: Stream, app_env: pytest.MonkeyPatch) -> None:
    app_env.setenv("FRAUDRAY_PROMETHEUS_PORT", str(screenshot.free_port()))
    get_settings.cache_clear()
    at = _run("overview")
    assert "Prometheus not reachable" in _texts(at)


def test_geography_page(stream: Stream, app_env: pytest.MonkeyPatch) -> None:
    at = _run("geography", stream.query)
    assert _metric(at, "Decided transactions") == f"{len(stream.transactions):,}"
    assert _metric(at, "Fraudulent transactions") == f"{len(stream.alerts()):,}"
    assert at.radio(key="geo_measure").value == "Fraud rate"
    table = at.dataframe[0].value
    assert set(table["country"]) == {t["country"] for t in stream.transactions}
    # AppTest has no static file server: the page says so instead of drawing a shapeless map
    assert "static file server" in _texts(at)
    at.radio(key="geo_measure").set_value("Fraud amount (USD)").run()
    assert not at.exception


def test_risk_page_drills_down_to_an_explanation(stream: Stream, app_env: pytest.MonkeyPatch) -> None:
    at = _run("risk", stream.query)
    users = at.dataframe[0].value
    alerts_per_user = Counter(stream.decisions[t]["user_id"] for t in stream.alerts())
    assert int(users.iloc[0]["alerts"]) == max(alerts_per_user.values())
    picked = at.selectbox(key="risk_user").value
    assert picked == users.iloc[0]["user_id"]
    assert f"**{picked}**" in _texts(at)
    transaction_id = at.selectbox(key="risk_tx").value
    assert str(transaction_id).startswith(stream.prefix)
    at.button(key="risk_explain").click().run()
    assert not at.exception
    warning = " ".join(w.value for w in at.warning)
    assert "No explanation" in warning and "connection refused" in warning


def test_trends_page(stream: Stream, app_env: pytest.MonkeyPatch) -> None:
    at = _run("trends", stream.query)
    assert at.radio(key="trend_bucket").value == "hour"
    scenarios = at.dataframe[0].value
    assert set(scenarios["scenario"]) == {"account_takeover", "card_testing"}
    at.radio(key="trend_bucket").set_value("minute").run()
    assert not at.exception
    assert "per minute" in _texts(at)


def test_models_page(stream: Stream, app_env: pytest.MonkeyPatch) -> None:
    at = _run("models", stream.query)
    assert _metric(at, f"In production: {stream.model_name}") == "v2"
    serving = at.dataframe[1].value
    assert f"{stream.prefix}v2" in set(serving["model_version"])
    assert "fraud and" in _texts(at)  # the PR/ROC caption: labels of both classes were found
    ours = [o for o in at.selectbox(key="model_version_pick").options if o.startswith(stream.model_name)]
    at.selectbox(key="model_version_pick").set_value(ours[0]).run()
    assert not at.exception


def test_alerts_page(stream: Stream, app_env: pytest.MonkeyPatch) -> None:
    at = _run("alerts", stream.query)
    assert _metric(at, "Alerts") == f"{len(stream.alerts()):,}"
    awaiting = sum(stream.status(t) == "awaiting label" for t in stream.alerts())
    assert _metric(at, "Awaiting label") == f"{awaiting:,}"
    at.multiselect(key="alert_status").set_value(["confirmed fraud"]).run()
    shown = at.dataframe[0].value
    assert set(shown["status"]) == {"confirmed fraud"}


@pytest.mark.parametrize("page", [p for p in PAGES if p != "overview"])
def test_pages_explain_an_empty_range(page: str, local_stack: Settings, app_env: pytest.MonkeyPatch) -> None:
    at = _run(page, "from=2000-01-01T00:00:00Z&to=2000-01-01T01:00:00Z")
    assert "between 2000-01-01 00:00:00 – 2000-01-01 01:00:00 UTC" in _texts(at)
    assert "start the producer" in _texts(at)
    if page != "models":  # the registry's own curves are drawn whatever the range
        assert not at.get("plotly_chart")


# -- the real server, in Chromium -------------------------------------------------------------


@pytest.fixture(scope="module")
def server(stream: Stream, local_stack: Settings) -> Iterator[str]:
    """The real Streamlit server, as ``make run`` starts it, on a free port."""
    port = screenshot.free_port()
    proc = launch.start(local_stack, port=port, log_path=local_stack.var_dir / "log" / "dashboard-test.log")
    try:
        launch.wait_ready(proc, port)
        yield launch.url(port)
    finally:
        launch.stop(proc)
    assert proc.returncode is not None


@pytest.fixture(scope="module")
def chromium() -> Iterator[Any]:
    if not Path(screenshot.CHROMIUM).exists():
        pytest.fail(f"{screenshot.CHROMIUM} is missing: apt-get install -y chromium")
    with screenshot.browser() as page:
        yield page


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_screenshot(page: str, stream: Stream, server: str, chromium: Any, local_stack: Settings) -> None:
    """A PNG of the page on this run's window, under var/screenshots/ for people to look at."""
    out = local_stack.var_dir / "screenshots" / f"{page}.png"
    url = f"{server}/{screenshot.PATHS.get(page, page)}?{stream.query}"
    state = screenshot.capture(chromium, url, out)
    assert state.startswith("ready"), state
    image = Image.open(out).convert("RGB")
    assert image.size[0] == screenshot.WIDTH and image.size[1] >= screenshot.HEIGHT
    colours = image.getcolors(maxcolors=1_000_000) or []
    assert len(colours) > 200, f"{len(colours)} colours: looks blank"
    assert max(count for count, _ in colours) < 0.9 * image.size[0] * image.size[1], "one colour covers it"
    if page == "geography":
        # The map drew countries in the choropleth's orange-red scale, not just grey land (0
        # warm pixels). How many depends on where this run's random stream put its fraud: CI
        # once saw 4,195 when only small countries were hit.
        area = np.asarray(image).astype(int)[350:900, 350:1250]
        warm = int(((area[..., 0] - area[..., 2] > 60) & (area[..., 0] > 150)).sum())
        assert warm > 1000, f"only {warm} map-coloured pixels"
