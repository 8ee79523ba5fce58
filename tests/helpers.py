"""Helpers shared by integration tests (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from cluster import stack
from core.errors import ModelNotReady
from core.families import ALL_KEYS
from core.ports import free_port
from core.settings import REPO_ROOT, PostgresSettings, Settings, StackSettings
from ingest.producer import TransactionProducer
from ingest.simulator import demo_transactions
from serve_deployments.deploy import hot_swap
from training.registry import Registry

API_KEY = "test-key-for-the-suite"


def with_topics(settings: Settings, **topics: str) -> Settings:
    """``settings`` with some Kafka topics replaced, e.g. ``transactions_topic=…``."""
    kafka = settings.kafka.model_copy(update=topics)
    return settings.model_copy(update={"kafka": kafka})


# Users and merchants of the tests' streams are tagged ``test<hex>-``: each stream has a
# population of its own in the online store, and conftest deletes their keys after the session.
TEST_TAG = "test"


def stream_tag(seed: int) -> str:
    """The tag of a test stream simulated from ``seed`` (see ``ingest.simulator.retag``)."""
    return f"{TEST_TAG}{seed:08x}"


def fresh_transactions(n: int, users: int = 200) -> list[dict[str, Any]]:
    """``n`` demo transactions nobody has seen: a random seed (ids never repeat across runs)
    and users and merchants of their own."""
    seed = random.randrange(2**31)
    return list(demo_transactions(n, seed=seed, users=users, tag=stream_tag(seed)))


def produce(settings: Settings, n: int, users: int = 200) -> list[dict[str, Any]]:
    """``n`` fresh transactions (``fresh_transactions``) sent to the transactions topic."""
    records = fresh_transactions(n, users)
    producer = TransactionProducer(settings)
    producer.send_many(records)
    producer.flush()
    return records


def count_rows(dsn: str, table: str, tx_ids: Sequence[str]) -> int:
    assert table in {"decisions", "transactions"}
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {table} WHERE transaction_id = ANY(%s)", (list(tx_ids),))
        (count,) = cur.fetchone()
    conn.close()
    return int(count)


@contextlib.contextmanager
def private_postgres(settings: Settings, var_dir: Path) -> Iterator[Settings]:
    """``settings`` pointed at a PostgreSQL of its own (free port, data under ``var_dir``),
    started for the block and stopped and deleted after it: tests may stop and start it."""
    port = free_port()
    s = settings.model_copy(
        update={
            "postgres": PostgresSettings(dsn=f"postgresql://fraudray@127.0.0.1:{port}/fraudray"),  # type: ignore[arg-type]
            "stack": StackSettings(var_dir=var_dir),
        }
    )
    pg = stack.services(s)["postgres"]
    pg.start()
    try:
        yield s
    finally:
        pg.stop()
        shutil.rmtree(var_dir, ignore_errors=True)
        shutil.rmtree(pg.data_dir, ignore_errors=True)


def production_version_ids(settings: Settings) -> dict[str, str]:
    """family -> the registry's production version, for the families that have one (what a
    test that promotes puts back afterwards)."""
    registry = Registry(settings)
    before = {}
    for fam in ALL_KEYS:
        with contextlib.suppress(ModelNotReady):
            before[fam] = registry.production(fam).version
    return before


def restore_production(settings: Settings, versions: dict[str, str]) -> None:
    """Promote ``versions`` (``production_version_ids`` of before the test) again and swap
    them into the shared Serve app, as a test that promoted leaves things."""
    registry = Registry(settings)
    for fam, version in versions.items():
        registry.promote(fam, version)
    with contextlib.suppress(ModelNotReady):
        hot_swap(settings)


def fetched_schemas(target: str, timeout_s: int) -> Path:
    """What ``cluster/fetch_schemas.sh <target>`` fetched and built (``compose``: the checker,
    ``kuberay``: the schema folder); fails the test when the script fails."""
    out = subprocess.run(
        ["bash", str(REPO_ROOT / "cluster" / "fetch_schemas.sh"), target],
        capture_output=True, text=True, timeout=timeout_s, check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )  # fmt: skip
    if out.returncode != 0:
        needs = "needs Go and the Go module proxy"
        pytest.fail(f"cluster/fetch_schemas.sh {target} failed ({needs}):\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])
