"""`fraudray init`: prepare the configured services, local or external, for fraudray: the
Kafka topics, the PostgreSQL migrations and (when configured) the Schema Registry subject.
Each step is its stage's own function; this only composes them. Idempotent."""

from __future__ import annotations

from collections.abc import Iterator

from core.db import apply_migrations
from core.settings import Settings
from ingest.serde import FileSchemaRegistry, TransactionSerde, registry_from_settings
from ingest.topics import ensure_topics


def init(settings: Settings) -> Iterator[str]:
    """Run each step, yielding one line per step of what it did."""
    k = settings.kafka
    created = ensure_topics(settings)
    yield f"kafka {k.bootstrap}: " + (
        f"created {', '.join(created)} ({k.partitions} partitions)" if created else "all topics exist"
    )
    pg = settings.postgres
    applied = apply_migrations(pg.dsn.get_secret_value())
    yield f"postgres {pg.database}: " + (f"applied {', '.join(applied)}" if applied else "schema up to date")
    registry = registry_from_settings(settings)
    if isinstance(registry, FileSchemaRegistry):
        yield "schema registry: none configured (file registry, ingest/schemas/registry.json)"
        return
    serde = TransactionSerde(registry, k.transactions_topic)
    yield (
        f"schema registry {k.schema_registry_url}: {serde.subject} has id {serde.schema_id}, "
        f"compatibility {k.schema_registry_compatibility}"
    )
