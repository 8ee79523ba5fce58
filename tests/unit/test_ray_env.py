"""The environment fraudray gives Ray: token auth always, Serve's fast path unless told otherwise."""

from __future__ import annotations

import pytest

from cluster.ray_runtime import SERVE_FAST_PATH, ray_env


def test_token_auth_and_serves_fast_path_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in SERVE_FAST_PATH:
        monkeypatch.delenv(name, raising=False)
    assert ray_env() == {
        "RAY_AUTH_MODE": "token",
        "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",  # handles work from synchronous code
    }


def test_a_fast_path_switch_already_set_wins_but_auth_stays_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    env = ray_env()
    assert env["RAY_SERVE_ENABLE_HA_PROXY"] == "0"  # e.g. the Python proxy, to compare
    assert env["RAY_AUTH_MODE"] == "token"
