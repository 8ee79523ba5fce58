"""The environment fraudray gives Ray: token auth always, Serve's fast path unless told otherwise."""

from __future__ import annotations

import pytest

from core.ray_client import SERVE_FAST_PATH, ray_env


def test_token_auth_and_serves_fast_path_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVE_FAST_PATH:
        monkeypatch.delenv(name, raising=False)
    env = ray_env()
    assert {k: v for k, v in env.items() if "HAPROXY" not in k} == {
        "RAY_AUTH_MODE": "token",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",  # handles work from synchronous code
    }


def test_haproxy_side_ports_are_free_and_not_the_fixed_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two Serve instances on one machine (a benchmark next to `make run`) must not both want
    HAProxy's fixed stats (8404) and metrics (9101) ports."""
    for name in ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT"):
        monkeypatch.delenv(name, raising=False)
    env = ray_env()
    ports = {int(env["RAY_SERVE_HAPROXY_STATS_PORT"]), int(env["RAY_SERVE_HAPROXY_METRICS_PORT"])}
    assert len(ports) == 2 and not ports & {8404, 9101}
    assert ray_env() == env  # the same ports for every Ray this process starts
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")
    assert ray_env()["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"


def test_a_fast_path_switch_already_set_wins_but_auth_stays_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = ray_env()
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"  # e.g. the Python proxy, to compare
    assert env["RAY_AUTH_MODE"] == "token"
