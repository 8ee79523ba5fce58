"""Smoke test of `fraudray bench --quick --attach` with a tiny workload on the suite's shared
Serve app: the report has every section and the benchmark's exactly-once checks hold (one
transaction row and one decision per record). (The bench's own start-up, a private Ray plus
`serving.deploy`, is the path `fraudray serve` takes: tests/integration/test_serve_app.py.)"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from benchmarks import e2e
from benchmarks.report import BEGIN, END, write_docs
from core.settings import Settings
from serve_deployments import deploy as serving
from tests.helpers import API_KEY


@pytest.mark.timeout(900)
def test_bench_quick_report(serve_app: str, serve_app_settings: Settings, tmp_path: Path) -> None:
    config = e2e.BenchConfig.quick_config(
        count=300,
        actors=(1, 2),
        rates=(200,),
        paced_seconds=1.0,
        paced_warmup_s=0.5,
        baseline_count=20,
        stage_count=300,
        users=100,
        http_rps=(20,),
        http_seconds=1.0,
        replicas=(1,),
    )
    autoscaling = serving.autoscaling(serve_app_settings)
    report = e2e.run(
        serve_app_settings, config, log=lambda _msg: None, app=e2e.RunningApp(serve_app, API_KEY)
    )

    path = tmp_path / "bench.json"
    e2e.save(report, path)
    report = json.loads(path.read_text())
    assert report["machine"]["cpus"] >= 1 and "load1_start" in report["machine"]
    assert report["attached"] is True
    assert [r["actors"] for r in report["drain"]] == [1, 2]
    # The replica step pins the Ensemble and the models, then gives the app its autoscaling back.
    assert set(autoscaling) == {"Ensemble", "IsolationForest", "XGBoost", "Autoencoder"}
    assert serving.autoscaling(serve_app_settings) == autoscaling
    (pinned,) = report["replicas"]
    assert pinned["replicas"] == 1 and pinned["actors"] == 2 and pinned["ready_s"] >= 0
    for row in [*report["drain"], *report["paced"], pinned]:
        checked = row["check"]
        assert checked["exactly_once"], checked
        assert checked["duplicates"] == 0
        assert checked["decisions"] == checked["transactions"] == checked["workload"]
        assert isinstance(row["load1"], float)
    for row in report["drain"]:
        assert row["count"] == 300 and row["scored"] >= 300 and row["tx_per_s"] > 0
        assert {"decode", "features", "score", "sink_pg", "commit"} <= set(row["us_per_tx"])
        assert "consumer actors" in row["processes"] and "postgres" in row["processes"]
        # 300 records may be drained before every actor has its first ones: then no warm figures
        if steady := row["steady"]:
            assert 0 < steady["transactions"] <= 300
            assert steady["cpu_us_per_tx_total"] >= steady["cpu_us_per_tx"]["consumer actors"] > 0
    paced = report["paced"][0]
    assert paced["sent"] == 300 and paced["warmup"] == 100  # 0.5 s warm-up + 1 s measured at 200 tx/s
    assert paced["check"]["workload"] == 300  # exactly once covers the warm-up too
    assert sum(s["n"] for s in paced["by_second"]) == 300
    assert 0 <= paced["latency_ms"]["p50"] <= paced["latency_ms"]["p95"] <= paced["latency_ms"]["p99"]
    base = report["baseline"]
    assert base["complete"] and base["count"] == 20 and base["tx_per_s"] > 0
    assert base["check"]["exactly_once"]
    assert report["ratio_vs_baseline"] > 0
    st = report["stages"]
    assert set(st["us_per_tx"]) == {"decode", "features", "score", "sink_pg", "sink_kafka"}
    batches = {"1", "100", "1000", "10000", str(serve_app_settings.consumer.batch_size)}
    assert all(set(v) == batches for v in st["models_us_per_tx"].values())
    assert st["limit_tx_per_s"] > 0 and report["fraction_of_limit"] > 0

    if importlib.util.find_spec("benchmarks.http_load") is not None:
        predict, score = report["http"]
        assert (predict["endpoint"], score["endpoint"]) == ("GET /predict", "POST /score")
        for http in (predict, score):
            assert http["requests"] == 20 and http["errors"] == 0 and http["p99_ms"] >= http["p50_ms"] > 0
        assert sum(predict["sources"].values()) == 20

    md = tmp_path / "docs" / "benchmarks.md"
    md.parent.mkdir()
    md.write_text(f"# Benchmarks\n\nhand-written intro\n\n{BEGIN}\nold\n{END}\n\nhand-written notes\n")
    write_docs(report, md, md.parent / "img" / "scaling.png")
    text = md.read_text()
    assert "hand-written intro" in text and "hand-written notes" in text and "\nold\n" not in text
    assert "### Serve replicas" in text
    assert "img/scaling.png" in text and (md.parent / "img" / "scaling.png").stat().st_size > 0
