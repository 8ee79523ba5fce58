"""docs/benchmarks.md's replica table: a replica count whose actors did not fit the free CPUs is
shown as skipped (with why), not as a figure."""

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
