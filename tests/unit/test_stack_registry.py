"""make run's producer and consumers use the local stack's Schema Registry unless one is configured."""

from __future__ import annotations

from cluster import stack
from core.settings import KafkaSettings, Settings, StackSettings


def test_the_stacks_registry_when_none_is_configured() -> None:
    s = Settings(kafka=KafkaSettings(schema_registry_url=""), stack=StackSettings(schema_registry_port=18081))
    assert stack.with_schema_registry(s).kafka.schema_registry_url == "http://127.0.0.1:18081/apis/ccompat/v7"


def test_a_configured_registry_wins() -> None:
    s = Settings(kafka=KafkaSettings(schema_registry_url="https://registry.example:8081"))
    assert stack.with_schema_registry(s) is s
