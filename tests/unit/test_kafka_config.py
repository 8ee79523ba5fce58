"""KafkaSettings.client_config: one librdkafka configuration per role, security passed
through, secrets usable by the client but never printed."""

from __future__ import annotations

import pytest
from pydantic import SecretStr

from core.settings import KafkaSettings, Settings

SECURE = KafkaSettings(
    bootstrap="b1:9093,b2:9093",
    security_protocol="SASL_SSL",
    sasl_mechanism="SCRAM-SHA-512",
    sasl_username="fraudray",
    sasl_password=SecretStr("s3cr3t-sasl"),
    ssl_ca_location="/etc/ssl/kafka-ca.pem",
    ssl_key_password=SecretStr("s3cr3t-key"),
    schema_registry_url="https://registry:8081",
    schema_registry_username="sr",
    schema_registry_password=SecretStr("s3cr3t-sr"),
)
SECRETS = ("s3cr3t-sasl", "s3cr3t-key", "s3cr3t-sr")


def test_local_defaults_per_role() -> None:
    k = KafkaSettings()
    assert k.client_config("admin") == {"bootstrap.servers": "127.0.0.1:9092", "client.id": "fraudray-admin"}
    producer = k.client_config("producer")
    assert producer["enable.idempotence"] is True and producer["acks"] == "all"
    assert "security.protocol" not in producer and "sasl.password" not in producer
    consumer = k.client_config("consumer")
    assert consumer["group.id"] == "fraudray-scorers" and consumer["enable.auto.commit"] is False
    assert consumer["auto.offset.reset"] == "earliest"


@pytest.mark.parametrize("role", ["producer", "consumer", "admin"])
def test_security_is_passed_through_to_every_role(role: str) -> None:
    conf = SECURE.client_config(role)  # type: ignore[arg-type]
    assert conf["bootstrap.servers"] == "b1:9093,b2:9093"
    assert conf["security.protocol"] == "sasl_ssl"
    assert conf["sasl.mechanism"] == "SCRAM-SHA-512"
    assert conf["sasl.username"] == "fraudray"
    assert conf["sasl.password"] == "s3cr3t-sasl"  # librdkafka gets the real value
    assert conf["ssl.ca.location"] == "/etc/ssl/kafka-ca.pem"
    assert conf["ssl.key.password"] == "s3cr3t-key"
    assert conf["ssl.endpoint.identification.algorithm"] == "https"


def test_overrides_win_and_producer_and_consumer_keep_their_defaults() -> None:
    conf = SECURE.client_config("consumer", **{"group.id": "g1", "auto.offset.reset": "latest"})
    assert conf["group.id"] == "g1" and conf["auto.offset.reset"] == "latest"
    assert conf["security.protocol"] == "sasl_ssl"


def test_secrets_are_never_printed() -> None:
    shown = [
        repr(SECURE.client_config("producer")),
        str(SECURE.client_config("consumer")),
        f"{SECURE.client_config('admin')}",
        repr(SECURE.schema_registry_config()),
        repr(SECURE),
        repr(Settings(kafka=SECURE)),
    ]
    for text in shown:
        for secret in SECRETS:
            assert secret not in text
    assert "**********" in shown[0] and "fraudray" in shown[0]


def test_schema_registry_config() -> None:
    assert KafkaSettings(schema_registry_url="http://r:8081").schema_registry_config() == {
        "url": "http://r:8081"
    }
    conf = SECURE.schema_registry_config()
    assert conf["url"] == "https://registry:8081"
    assert conf["basic.auth.user.info"] == "sr:s3cr3t-sr"


def test_a_real_client_accepts_the_config() -> None:
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    k = KafkaSettings(security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
                      sasl_password=SecretStr("p"))  # fmt: skip
    Producer(k.client_config("producer")).flush(0)
    Consumer(k.client_config("consumer")).close()
    AdminClient(k.client_config("admin"))


def test_the_scoring_consumer_waits_for_fuller_fetches_as_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each fetch waits for 64 KiB or 20 ms by default (fewer near-empty fetches below
    capacity); both are settings, bounded, and the client takes them."""
    from confluent_kafka import Consumer

    from core.settings import ConsumerSettings
    from ingest.consumer import consumer_config

    for name in ("FRAUDRAY_CONSUMER_FETCH_MIN_BYTES", "FRAUDRAY_CONSUMER_FETCH_WAIT_MAX_MS"):
        monkeypatch.delenv(name, raising=False)
    conf = consumer_config(Settings(), "g")
    assert conf["fetch.min.bytes"] == 65_536 and conf["fetch.wait.max.ms"] == 20
    assert conf["group.id"] == "g" and conf["enable.auto.commit"] is False
    monkeypatch.setenv("FRAUDRAY_CONSUMER_FETCH_MIN_BYTES", "1")
    monkeypatch.setenv("FRAUDRAY_CONSUMER_FETCH_WAIT_MAX_MS", "100")
    conf = consumer_config(Settings())
    assert conf["fetch.min.bytes"] == 1 and conf["fetch.wait.max.ms"] == 100
    assert conf["group.id"] == Settings().kafka.consumer_group
    Consumer(conf).close()
    for bad in ({"fetch_min_bytes": 0}, {"fetch_wait_max_ms": 0}, {"fetch_wait_max_ms": 5_000}):
        with pytest.raises(ValueError):
            ConsumerSettings.model_validate(bad)
