"""`fraudray init` against a cluster the stack did not create (fresh topic names, a fresh
database on the local PostgreSQL), twice; and the stack leaving external services alone."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator

import psycopg2
import pytest
from confluent_kafka.admin import AdminClient
from pydantic import SecretStr

from cluster import stack
from cluster.setup_services import init
from core.db import migration_files
from core.settings import KafkaSettings, PostgresSettings, RedisSettings, Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def fresh(local_stack: Settings) -> Iterator[Settings]:
    """Settings naming five new topics (3 partitions) and a new, empty database."""
    tag = uuid.uuid4().hex[:8]
    kafka = local_stack.kafka.model_copy(update={
        "partitions": 3, "transactions_topic": f"init-tx-{tag}", "labels_topic": f"init-labels-{tag}",
        "decisions_topic": f"init-decisions-{tag}", "alerts_topic": f"init-alerts-{tag}",
        "dlq_topic": f"init-tx-{tag}.dlq",
    })  # fmt: skip
    pg = local_stack.postgres
    admin_dsn = f"postgresql://postgres@127.0.0.1:{pg.port}/postgres"
    database = f"init_{tag}"
    conn = psycopg2.connect(admin_dsn)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{database}" OWNER "{pg.user}"')
    dsn = pg.dsn.get_secret_value().rsplit("/", 1)[0] + f"/{database}"
    yield local_stack.model_copy(update={"kafka": kafka, "postgres": PostgresSettings(dsn=SecretStr(dsn))})
    AdminClient(kafka.client_config("admin")).delete_topics(list(kafka.topics), operation_timeout=30)
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
    conn.close()


def test_init_creates_topics_and_schema_then_changes_nothing(fresh: Settings) -> None:
    first = list(init(fresh))
    k = fresh.kafka
    assert "created" in first[0] and "3 partitions" in first[0]
    topics = AdminClient(k.client_config("admin")).list_topics(timeout=10).topics
    for name in k.topics:
        assert len(topics[name].partitions) == 3
    assert first[1].endswith("applied " + ", ".join(p.stem for p in migration_files()))
    with psycopg2.connect(fresh.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
        cur.execute("SELECT to_regclass('transactions'), to_regclass('decisions'), to_regclass('models')")
        assert all(cur.fetchone())
    conn.close()
    again = list(init(fresh))
    assert again[0].endswith("all topics exist") and again[1].endswith("schema up to date")


def test_stack_leaves_external_services_alone(local_stack: Settings) -> None:
    external = Settings(
        kafka=KafkaSettings(bootstrap="kafka-1.example.invalid:9092,kafka-2.example.invalid:9092"),
        redis=RedisSettings(url=SecretStr("redis://:pw@redis.example.invalid:6379/0")),
        postgres=PostgresSettings(dsn=SecretStr("postgresql://u:pw@db.example.invalid:5432/fraudray")),
        stack=local_stack.stack,
    )
    events: list[tuple[str, str]] = []
    stack.up(
        external,
        ["postgres", "redis", "kafka"],
        on_event=lambda name, result, _s: events.append((name, result)),
    )
    assert [n for n, _ in events] == ["postgres", "redis", "kafka"]
    assert all(result.startswith("external") for _, result in events)
    stack.down(external, ["kafka"], on_event=lambda name, result, _s: events.append((name, result)))
    assert events[-1] == ("kafka", "external: left running")
    assert stack.is_local(["127.0.0.1:9092", "localhost:9092", "postgresql://u@127.0.0.1:5432/x"])
    assert not stack.is_local(["127.0.0.1:9092", "broker.internal:9092"])
    # the local stack was not touched: its services still answer
    assert all(
        s["healthy"] for s in stack.status(local_stack) if s["service"] in ("kafka", "redis", "postgres")
    )


def test_cli_stack_up_says_external_and_init_is_idempotent(local_stack: Settings) -> None:
    env = {**os.environ, "FRAUDRAY_REDIS_URL": "redis://redis.example.invalid:6379/0"}
    out = subprocess.run([sys.executable, "-m", "cluster.cli", "stack", "up", "redis"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "external" in out.stdout and "pw" not in out.stdout
    for _ in range(2):
        out = subprocess.run([sys.executable, "-m", "cluster.cli", "init"], capture_output=True, text=True,
                             timeout=120, check=False)  # fmt: skip
        assert out.returncode == 0, out.stdout + out.stderr
        assert "all topics exist" in out.stdout and "schema up to date" in out.stdout
