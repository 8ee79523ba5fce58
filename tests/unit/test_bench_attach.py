"""`fraudray bench --attach` without a running app fails at once with a clear message, before
it creates anything (topics, rows)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cluster.cli import app
from core.settings import get_settings


def test_attach_without_a_cluster_says_so(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("FRAUDRAY_RAY_ADDRESS", "")
    monkeypatch.setenv("FRAUDRAY_RAY_HEAD_PORT", str(port))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(
            app,
            [
                "bench",
                "--quick",
                "--attach",
                "--report",
                str(tmp_path / "r.json"),
                "--docs",
                str(tmp_path / "b.md"),
            ],
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 1, result.output
    assert f"no Ray cluster answers at 127.0.0.1:{port}" in " ".join(result.output.split())
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "b.md").exists()
