"""docs/benchmarks.md's generated tables: a replica count whose actors did not fit the free CPUs is
shown as skipped (with why), not as a figure; the HTTP rows show how many answers were the
stream's decision."""

from __future__ import annotations

from typing import Any

from benchmarks.report import markdown


def _drain(actors: int, tx_per_s: float) -> dict[str, Any]:
    return {
        "actors": actors,
        "tx_per_s": tx_per_s,
        "us_per_tx": {"decode": 10, "features": 100, "score": 60},
        "check": {"decisions": 1000, "duplicates": 0, "exactly_once": True},
        "load1": 1.5,
    }


def test_replica_rows_and_a_skipped_count() -> None:
    report = {
        "when": "2026-12-03T13:00:00+00:00",
        "machine": {"cpus": 2, "cpu_model": "x", "commit": "abc", "load1_start": 1.0, "load1_end": 2.0},
        "config": {"command": "fraudray bench", "count": 1000, "replica_actors": 2},
        "drain": [_drain(1, 3000.0), _drain(2, 3900.0)],
        "replicas": [
            {"replicas": 1, "ready_s": 0.4, **_drain(2, 3800.0)},
            {"replicas": 2, "ready_s": 21.0, "skipped": "0.30 CPUs free"},
        ],
    }
    text = markdown(report, "img/scaling.png")
    assert "### Serve replicas (backlog drain, 2 actors; the Ensemble and each model at N)" in text
    assert "| 1 | 3,800 | 60 | yes | 0.4 | 1.5 |" in text
    assert "| 2 | skipped: 0.30 CPUs free | – | – | 21.0 | – |" in text


def test_http_rows_show_the_endpoint_and_the_share_of_answers_that_were_the_streams_decision() -> None:
    def row(rps: int, sources: dict[str, int] | None) -> dict[str, Any]:
        out = {"rps_offered": rps, "rps_sent": rps, "rps_done": rps, "requests": 10 * rps, "errors": 0,
               "p50_ms": 5.0, "p99_ms": 40.0, "load1": 1.0}  # fmt: skip
        return out if sources is None else out | {"sources": sources}

    report = {
        "when": "2026-12-03T13:00:00+00:00",
        "machine": {"cpus": 2, "cpu_model": "x", "commit": "abc", "load1_start": 1.0, "load1_end": 2.0},
        "config": {"command": "fraudray bench", "count": 1000},
        "drain": [_drain(1, 3000.0)],
        "http": [
            row(10, {"stream": 97, "scored": 3}) | {"endpoint": "GET /predict"},
            row(30, None),  # an older report: /predict only, without sources
            row(10, None) | {"endpoint": "POST /score"},
        ],
    }
    text = markdown(report, "img/scaling.png")
    assert "| `GET /predict` | 10 | 10 | 10 | 100 | 0 | 5.0 | 40.0 | 97 % | 1.0 |" in text
    assert "| `GET /predict` | 30 | 30 | 30 | 300 | 0 | 5.0 | 40.0 | – | 1.0 |" in text
    assert "| `POST /score` | 10 | 10 | 10 | 100 | 0 | 5.0 | 40.0 | – | 1.0 |" in text


def test_cpu_per_transaction_counts_from_the_warm_point_only() -> None:
    """The actors' start-up (imports, joining the group) is CPU before the warm point: it shows
    in the drain's CPU seconds, not in its µs per transaction."""
    from benchmarks.e2e import steady_cpu
    from benchmarks.procstat import Proc

    warm = ({1: Proc("consumer actors", 2.0, 0), 2: Proc("redis", 0.5, 0)}, 100.0, 1_000)
    after = {1: Proc("consumer actors", 3.0, 0), 2: Proc("redis", 0.9, 0), 3: Proc("kafka", 0.1, 0)}
    steady = steady_cpu(warm, after, 102.0, 11_000)
    assert steady["transactions"] == 10_000 and steady["seconds"] == 2.0
    assert steady["cpu_us_per_tx"] == {"consumer actors": 100.0, "redis": 40.0, "kafka": 10.0}
    assert steady["cpu_us_per_tx_total"] == 150.0 and steady["cores"] == 0.75
    assert steady_cpu(None, after, 102.0, 11_000) == {}  # not every actor got records in time
    assert steady_cpu(warm, after, 102.0, 1_000) == {}  # nothing scored after the warm point


def test_the_process_table_shows_cpu_per_transaction_from_the_warm_point() -> None:
    drain = _drain(2, 5000.0) | {
        "processes": {
            "consumer actors": {"processes": 2, "cores": 0.8, "cpu_s": 9.0, "rss_mib": 600.0},
            "redis": {"processes": 1, "cores": 0.3, "cpu_s": 3.3, "rss_mib": 160.0},
        },
        "steady": {"transactions": 50_000, "seconds": 9.0, "cores": 1.7,
                   "cpu_us_per_tx": {"consumer actors": 110.0}, "cpu_us_per_tx_total": 165.0},
    }  # fmt: skip
    report = {
        "when": "2026-12-07T16:00:00+00:00",
        "machine": {"cpus": 2, "cpu_model": "x", "commit": "abc", "load1_start": 1.0, "load1_end": 2.0},
        "config": {"command": "fraudray bench", "count": 60000},
        "drain": [drain],
    }
    text = markdown(report, "img/scaling.png")
    assert "from the moment every actor had records: **165 µs** in all, 1.7 cores busy" in text
    assert "| consumer actors | 2 | 0.8 | 9.0 | 110.0 | 600.0 |" in text
    assert "| redis | 1 | 0.3 | 3.3 | – | 160.0 |" in text
