"""The local stack on real services: health, a record through the real broker, a full
up/status/down cycle of an isolated second stack, and a clear error for a taken port."""

from __future__ import annotations

import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg2
import pytest
import redis
from confluent_kafka import Consumer, Producer

from cluster import stack
from core import procs
from core.errors import StackError
from core.ports import free_port
from core.settings import (
    REPO_ROOT,
    AlertmanagerSettings,
    KafkaSettings,
    PostgresSettings,
    PrometheusSettings,
    RedisSettings,
    Settings,
    StackSettings,
)

pytestmark = pytest.mark.integration


def test_every_service_is_healthy(local_stack: Settings) -> None:
    rows = stack.status(local_stack)
    assert [r["service"] for r in rows] == [
        "postgres",
        "redis",
        "kafka",
        "prometheus",
        "alertmanager",
        "schema-registry",
    ]
    assert all(r["healthy"] and r["pid"] for r in rows), rows


def test_schema_is_migrated(local_stack: Settings) -> None:
    with psycopg2.connect(local_stack.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
        cur.execute("SELECT version FROM schema_migrations ORDER BY version")
        assert "0001_init" in [r[0] for r in cur.fetchall()]
        cur.execute("SELECT to_regclass('decisions'), to_regclass('transactions'), to_regclass('models')")
        assert all(cur.fetchone())
    conn.close()


def test_topics_exist_with_partitions(local_stack: Settings) -> None:
    from confluent_kafka.admin import AdminClient

    topics = AdminClient({"bootstrap.servers": local_stack.kafka.bootstrap}).list_topics(timeout=10).topics
    for name in local_stack.kafka.topics:
        assert name in topics
    assert len(topics[local_stack.kafka.transactions_topic].partitions) >= 6


def test_record_through_the_real_broker(
    local_stack: Settings, new_topic: Callable[..., str], group_id: str
) -> None:
    topic = new_topic("stack")
    p = Producer({"bootstrap.servers": local_stack.kafka.bootstrap})
    p.produce(topic, key=b"k", value=b"hello fraudray")
    assert p.flush(10) == 0
    c = Consumer(
        {
            "bootstrap.servers": local_stack.kafka.bootstrap,
            "group.id": group_id,
            "auto.offset.reset": "earliest",
        }
    )
    c.subscribe([topic])
    got = []
    for _ in range(30):
        got += [m.value() for m in c.consume(10, 1.0) if m.error() is None]
        if got:
            break
    c.close()
    assert got == [b"hello fraudray"]


def test_redis_answers(local_stack: Settings) -> None:
    r = redis.Redis.from_url(local_stack.redis.url.get_secret_value())
    key = f"test:{uuid.uuid4()}"
    r.set(key, "1", ex=10)
    assert r.get(key) == b"1"


@pytest.fixture
def isolated_settings() -> Iterator[Settings]:
    """A second stack on free ports with its own var/ (under the repo: PostgreSQL runs as
    the `postgres` user, which cannot enter pytest's root-only tmp folders)."""
    var = REPO_ROOT / "var" / f"test-stack-{uuid.uuid4().hex[:8]}"
    var.mkdir(parents=True)
    shutil.copytree(REPO_ROOT / "var" / "cache", var / "cache", symlinks=True)
    settings = Settings(
        kafka=KafkaSettings(bootstrap=f"127.0.0.1:{free_port()}", controller_port=free_port(), heap_mb=384),
        redis=RedisSettings(url=f"redis://127.0.0.1:{free_port()}/0"),  # type: ignore[arg-type]
        postgres=PostgresSettings(dsn=f"postgresql://fraudray@127.0.0.1:{free_port()}/fraudray"),  # type: ignore[arg-type]
        prometheus=PrometheusSettings(port=free_port()),
        alertmanager=AlertmanagerSettings(port=free_port()),
        stack=StackSettings(var_dir=var, schema_registry_port=free_port()),
    )
    yield settings
    stack.down(settings)  # whatever a failing test left running
    shutil.rmtree(var, ignore_errors=True)


def test_up_status_down_leaves_nothing_behind(isolated_settings: Settings) -> None:
    s = isolated_settings
    stack.up(s)
    rows = stack.status(s)
    assert all(r["healthy"] for r in rows), rows
    pids = [int(str(r["pid"])) for r in rows]

    events: list[tuple[str, str]] = []
    stack.up(s, on_event=lambda name, result, _t: events.append((name, result)))  # twice is harmless
    assert {result for _, result in events} == {"already running"}

    stack.down(s)
    for pid in pids:
        assert not procs.pid_alive(pid), f"pid {pid} survived `down`"
    for port in (s.kafka.port, s.kafka.controller_port, s.redis.port, s.postgres.port,
                 s.prometheus.port, s.alertmanager.port, s.stack.schema_registry_port):  # fmt: skip
        assert not procs.port_open(port), f"port {port} still open after `down`"
    assert not any(r["pid"] for r in stack.status(s))


def test_taken_port_gives_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        s = Settings(
            redis=RedisSettings(url=f"redis://127.0.0.1:{port}/0"),  # type: ignore[arg-type]
            stack=StackSettings(var_dir=tmp_path),
        )
        with pytest.raises(StackError, match=rf"redis: port {port} is already taken"):
            stack.services(s)["redis"].start()
