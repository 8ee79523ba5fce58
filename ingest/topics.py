"""The Kafka topics fraudray uses, created where missing on any cluster the settings name
(the local stack's broker or an existing one: ``fraudray init``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.errors import FraudrayError

if TYPE_CHECKING:
    from core.settings import Settings


class TopicError(FraudrayError):
    """A topic could not be created (no rights, a bad setting, the cluster unreachable)."""

    http_status = 503


def ensure_topics(settings: Settings, replication_factor: int = -1) -> list[str]:
    """Create every topic of ``settings.kafka.topics`` that does not exist yet, with the
    configured partitions and retention; returns the topics created (none when all exist).

    ``replication_factor`` -1 leaves it to the broker's ``default.replication.factor``: 1 on
    the local single-node stack, the operators' choice on a real cluster. Existing topics are
    left as they are (partitions are never changed here)."""
    from confluent_kafka.admin import AdminClient, NewTopic

    k = settings.kafka
    admin = AdminClient(k.client_config("admin"))
    try:
        existing = set(admin.list_topics(timeout=10).topics)
    except Exception as exc:
        raise TopicError(f"Kafka at {k.bootstrap} did not answer: {exc}") from exc
    retention = k.retention_ms_by_topic()
    wanted = [
        NewTopic(
            t,
            num_partitions=k.partitions,
            replication_factor=replication_factor,
            config={"retention.ms": str(retention[t])},
        )
        for t in k.topics
        if t not in existing
    ]
    if not wanted:
        return []
    created = []
    for topic, fut in admin.create_topics(wanted, operation_timeout=30).items():
        try:
            fut.result()
            created.append(topic)
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):  # another process created it meanwhile
                raise TopicError(f"creating Kafka topic {topic} failed: {exc}") from exc
    return sorted(created)
