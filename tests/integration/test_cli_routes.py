"""The `fraudray` command as a user meets it: a service that does not answer is one line, not a
traceback; `--model` is a choice; `models promote` refuses a model of other features."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest

from core.ports import free_port
from core.settings import REPO_ROOT, Settings
from training.registry import Registry

pytestmark = pytest.mark.integration
FRAUDRAY = str(Path(sys.executable).parent / "fraudray")


def _fraudray(
    *args: str, env: dict[str, str] | None = None, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDRAY_")}
    return subprocess.run([FRAUDRAY, *args], capture_output=True, text=True, env={**base, **(env or {})},
                          cwd=REPO_ROOT, timeout=timeout, check=False)  # fmt: skip


def _one_line_error(out: subprocess.CompletedProcess[str], *words: str) -> None:
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text, text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for word in words:
        assert word in errors[0], errors[0]


@pytest.mark.parametrize("command", [["models", "list"], ["train", "--model", "if", "--train-workers", "0"]])
def test_postgres_down_is_one_line(command: list[str]) -> None:
    dead = f"postgresql://fraudray@127.0.0.1:{free_port()}/fraudray"
    out = _fraudray(*command, env={"FRAUDRAY_POSTGRES_DSN": dead})
    _one_line_error(out, "PostgreSQL", "FRAUDRAY_POSTGRES_DSN")


@pytest.mark.parametrize("command", [["consume", "--actors", "1"], ["bench", "--quick"]])
def test_kafka_down_is_one_line(local_stack: Settings, command: list[str]) -> None:
    out = _fraudray(*command, env={"FRAUDRAY_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}"})
    _one_line_error(out, "Kafka", "FRAUDRAY_KAFKA_BOOTSTRAP")


def test_consume_with_postgres_down_is_one_line() -> None:
    out = _fraudray(
        "consume", env={"FRAUDRAY_POSTGRES_DSN": f"postgresql://fraudray@127.0.0.1:{free_port()}/x"}
    )
    _one_line_error(out, "PostgreSQL")


def test_model_is_a_choice() -> None:
    out = _fraudray("train", "--model", "gbm")
    assert out.returncode == 2 and "gbm" in out.stdout + out.stderr
    assert "if" in _fraudray("train", "--help").stdout


def test_promote_refuses_a_model_of_other_features(local_stack: Settings, tmp_path: Path) -> None:
    """A --csv model (its columns are not the serving features) is registered, never served."""
    registry = Registry(local_stack)
    version = "test-csv-" + uuid.uuid4().hex[:8]
    registry.register("if", version, tmp_path, metrics={}, params={"source": "csv:cards.csv"},
                      feature_names=["V1", "V2", "Amount"])  # fmt: skip
    before = registry.production("if").version
    try:
        out = _fraudray("models", "promote", "if", version)
        _one_line_error(out, "other features", "csv:cards.csv")
        assert registry.production("if").version == before
    finally:
        with psycopg2.connect(local_stack.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
            cur.execute("DELETE FROM models WHERE name = 'if' AND version = %s", (version,))
        conn.close()
