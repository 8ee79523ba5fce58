"""One settings model for every host, port, DSN and credential fraudray uses.

Environment variables use the prefix ``FRAUDRAY_`` and the first underscore after it
selects the section: ``FRAUDRAY_KAFKA_BOOTSTRAP`` sets ``kafka.bootstrap``,
``FRAUDRAY_LLM_BASE_URL`` sets ``llm.base_url``. A ``.env`` file in the working
directory is read too. Defaults point at the local stack (``fraudray stack up``).
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent
ENV_PREFIX = "FRAUDRAY_"
# FRAUDRAY_* variables that are switches of the test suite and the fault runs, not settings.
RUN_SWITCHES = frozenset({
    "FRAUDRAY_FAULTS", "FRAUDRAY_FAULTS_KEEP_LOGS", "FRAUDRAY_FAULTS_REPORT",
    "FRAUDRAY_MONITORING_REQUIRE_DATA", "FRAUDRAY_TEST_HARD_EXIT", "FRAUDRAY_TEST_PARALLEL",
})  # fmt: skip
MASK = "**********"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _port_of(url: str, default: int) -> int:
    """Port of ``host:port`` or ``scheme://user@host:port/...``."""
    netloc = urlsplit(url if "//" in url else f"//{url}")
    return netloc.port or default


class KafkaSettings(_Section):
    bootstrap: str = "127.0.0.1:9092"
    controller_port: int = 19093
    heap_mb: int = 768
    partitions: int = 6
    transactions_topic: str = "transactions"
    labels_topic: str = "labels"
    decisions_topic: str = "decisions"
    alerts_topic: str = "alerts"
    dlq_topic: str = "transactions.dlq"
    consumer_group: str = "fraudray-scorers"
    # Topic retention (retention.ms), set at topic creation and by `fraudray cleanup`.
    retention_hours: int = 168
    dlq_retention_hours: int = 720  # dead letters wait for a human: keep them longer
    # Security, passed through to every client (client_config). Empty = librdkafka's default.
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER", "GSSAPI"] = ""
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    ssl_ca_location: str = ""  # CA bundle (PEM) that signed the brokers' certificates
    ssl_certificate_location: str = ""  # client certificate (mutual TLS)
    ssl_key_location: str = ""
    ssl_key_password: SecretStr = SecretStr("")
    ssl_endpoint_identification: Literal["https", "none"] = "https"  # check the broker's host name
    # Confluent-compatible Schema Registry (subject <topic>-value); empty = the file registry in
    # ingest/schemas/. The local stack has none (docs/deploy.md, "Schema Registry", says why).
    schema_registry_url: str = ""
    schema_registry_username: str = ""  # HTTP basic auth, when the registry asks for it
    schema_registry_password: SecretStr = SecretStr("")
    schema_registry_ca_location: str = ""
    schema_registry_compatibility: Literal[
        "BACKWARD", "BACKWARD_TRANSITIVE", "FORWARD", "FORWARD_TRANSITIVE", "FULL", "FULL_TRANSITIVE", "NONE"
    ] = "BACKWARD"

    @property
    def port(self) -> int:
        return _port_of(self.bootstrap.split(",")[0], 9092)

    @property
    def topics(self) -> tuple[str, ...]:
        return (
            self.transactions_topic,
            self.labels_topic,
            self.decisions_topic,
            self.alerts_topic,
            self.dlq_topic,
        )

    def retention_ms_by_topic(self) -> dict[str, int]:
        hour_ms = 3_600_000
        return {t: (self.dlq_retention_hours if t == self.dlq_topic else self.retention_hours) * hour_ms
                for t in self.topics}  # fmt: skip

    def client_config(self, role: KafkaRole, **overrides: Any) -> dict[str, Any]:
        """The librdkafka configuration of a ``role``'s client: bootstrap servers, the security
        settings, the role's defaults, then ``overrides``. Every Kafka client fraudray builds
        takes its configuration from here. The result holds passwords in clear (librdkafka
        needs them) but prints them masked."""
        conf: dict[str, Any] = {"bootstrap.servers": self.bootstrap, "client.id": f"fraudray-{role}"}
        if self.security_protocol != "PLAINTEXT":
            conf["security.protocol"] = self.security_protocol.lower()
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
        optional = {
            "sasl.username": self.sasl_username,
            "sasl.password": self.sasl_password.get_secret_value(),
            "ssl.ca.location": self.ssl_ca_location,
            "ssl.certificate.location": self.ssl_certificate_location,
            "ssl.key.location": self.ssl_key_location,
            "ssl.key.password": self.ssl_key_password.get_secret_value(),
        }
        conf |= {k: v for k, v in optional.items() if v}
        if self.security_protocol in ("SSL", "SASL_SSL"):
            conf["ssl.endpoint.identification.algorithm"] = self.ssl_endpoint_identification
        conf |= _ROLE_DEFAULTS[role](self)
        conf |= overrides
        return ClientConfig(conf)

    def schema_registry_config(self) -> dict[str, Any]:
        """``confluent_kafka.schema_registry.SchemaRegistryClient``'s configuration (the URL,
        basic auth and CA), printed masked like :meth:`client_config`."""
        conf: dict[str, Any] = {"url": self.schema_registry_url}
        if self.schema_registry_username:
            password = self.schema_registry_password.get_secret_value()
            conf["basic.auth.user.info"] = f"{self.schema_registry_username}:{password}"
        if self.schema_registry_ca_location:
            conf["ssl.ca.location"] = self.schema_registry_ca_location
        return ClientConfig(conf)


KafkaRole = Literal["producer", "consumer", "admin"]

# Per role, what every client of that kind wants (callers override the rest).
_ROLE_DEFAULTS: dict[str, Any] = {
    # Idempotent, acknowledged by all replicas, batched by librdkafka (linger + lz4).
    "producer": lambda k: {
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 10,
        "batch.size": 1_000_000,
        "compression.type": "lz4",
        "queue.buffering.max.messages": 500_000,
    },
    # At-least-once: offsets are committed by hand after the sinks succeed.
    "consumer": lambda k: {
        "group.id": k.consumer_group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    },
    "admin": lambda k: {},
}

_SECRET_KEYS = frozenset(
    {"sasl.password", "ssl.key.password", "basic.auth.user.info", "sasl.oauthbearer.client.secret"}
)


class ClientConfig(dict[str, Any]):
    """A client's configuration: a plain dict for the client, masked when printed or logged."""

    def __repr__(self) -> str:
        return repr({k: (MASK if k in _SECRET_KEYS and v else v) for k, v in self.items()})

    __str__ = __repr__


class RedisSettings(_Section):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    # More Redis instances for the online store, comma-separated URLs (secrets: they may carry a
    # password). Users are spread over ``url`` and these by a stable hash of the user id
    # (features/online/shards.py); empty = one instance. Changing the list moves users to other
    # instances: rebuild the store afterwards (docs/scaling.md, "Sharded online store").
    shards: SecretStr = SecretStr("")

    def urls(self) -> list[str]:
        """The online store's instances: ``url`` first (shard 0), then ``shards`` in order."""
        extra = [u.strip() for u in self.shards.get_secret_value().split(",") if u.strip()]
        return [self.url.get_secret_value(), *extra]

    @property
    def port(self) -> int:
        return _port_of(self.url.get_secret_value(), 6379)


class PostgresSettings(_Section):
    # Local stack: trust auth on loopback only, so no password lives in the repo.
    dsn: SecretStr = SecretStr("postgresql://fraudray@127.0.0.1:5432/fraudray")

    @property
    def port(self) -> int:
        return _port_of(self.dsn.get_secret_value(), 5432)

    @property
    def database(self) -> str:
        return urlsplit(self.dsn.get_secret_value()).path.lstrip("/") or "fraudray"

    @property
    def user(self) -> str:
        return urlsplit(self.dsn.get_secret_value()).username or "fraudray"


class RaySettings(_Section):
    # Empty: start (or reuse) the local head that `cluster.ray_runtime` manages.
    address: str = ""
    head_port: int = 6380  # not Ray's default 6379, which the local Redis owns
    dashboard_host: str = "127.0.0.1"
    dashboard_port: int = 8265
    metrics_export_port: int = 8080
    num_cpus: int = 2
    object_store_mb: int = 1536
    namespace: str = "fraudray"
    temp_dir: str = "/tmp/ray"  # noqa: S108 - Ray's own default; its metrics SD file lives here


class ServeSettings(_Section):
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    app_name: str = "fraud"


class ApiSettings(_Section):
    # Comma-separated keys accepted in the X-API-Key header. Without any, the API refuses every
    # request but /health, unless auth is "off" (a deliberate choice, e.g. behind a gateway).
    keys: SecretStr = SecretStr("")
    auth: Literal["on", "off"] = "on"

    def key_list(self) -> list[str]:
        return [k.strip() for k in self.keys.get_secret_value().split(",") if k.strip()]


class LlmSettings(_Section):
    base_url: str = ""
    model: str = ""
    api_key: SecretStr = SecretStr("")
    timeout_s: float = 5.0  # /explain falls back to its template rationale after this


class PrometheusSettings(_Section):
    port: int = 9090


class AlertmanagerSettings(_Section):
    port: int = 9093
    # Receivers (monitoring/alertmanager/alertmanager.yml); a channel left empty is left out.
    webhook_url: SecretStr = SecretStr("")  # webhook URLs often carry a token
    slack_api_url: SecretStr = SecretStr("")
    slack_channel: str = ""
    email_to: str = ""
    smtp_from: str = ""
    smtp_smarthost: str = ""
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")


class StackSettings(_Section):
    var_dir: Path = REPO_ROOT / "var"
    ready_timeout_s: float = 60.0
    # The local stack's Schema Registry (Apicurio, Confluent API at /apis/ccompat/v7); fraudray
    # uses it when FRAUDRAY_KAFKA_SCHEMA_REGISTRY_URL names it (docs/deploy.md).
    schema_registry_port: int = 8081


class ConsumerSettings(_Section):
    # Most records one batch holds. A poll takes what the Kafka client has already fetched, up to
    # this, so under a backlog batches are full and each batch's fixed costs (the Serve call, the
    # COPY, the commit) are shared by more records: 2,000 drained ~24 % faster than 500 on the
    # dev box (docs/benchmarks.md, "batch size"). Below capacity a batch is what arrived while
    # the previous one was processed.
    batch_size: int = 2000
    # How long an idle consumer waits for a first record before it polls again (and serves
    # rebalances, pauses, its stop flag). A record that arrives ends the wait at once.
    poll_timeout_s: float = 0.1
    # At most one offset commit per this many seconds while records keep coming (0: one per
    # batch); an idle poll and a stop commit everything processed at once. Commits are
    # cumulative and the sinks idempotent, so a crash only redelivers a little more. 0 until a
    # fault-suite failure seen with 0.25 is understood (docs/benchmarks.md).
    commit_interval_s: float = 0.0
    # A fetch answers once it holds this much or has waited this long (librdkafka's
    # fetch.min.bytes / fetch.wait.max.ms): fewer, fuller fetches below capacity, for at most
    # fetch_wait_max_ms more wait per record (docs/benchmarks.md, "2026-12-07").
    fetch_min_bytes: int = Field(default=65_536, ge=1)
    fetch_wait_max_ms: int = Field(default=20, ge=1, le=1_000)
    # MiB of memory the user states each consumer keeps as it wrote them may take (decoded):
    # the online store's read then asks Redis for a kept state's 8-byte version instead of the
    # state, and the consumer does not decode it again (OnlineStore cache_bytes; docs/features.md).
    # A user's partition stays with one consumer, so most users it meets are its own from
    # earlier batches. 0 turns it off.
    state_cache_mb: int = Field(default=128, ge=0)
    # Under a backlog (a poll brings a full batch), a batch is decoded, featurised and scored
    # while the batch before it is written to PostgreSQL and Kafka and committed
    # (ingest/consumer.py, ScoringLoop._overlapped); batches still go through each half in
    # order. Below capacity, and with False, one batch at a time, every stage in turn.
    overlap: bool = True
    fraud_threshold: float = 0.5


class LearnSettings(_Section):
    """The champion/challenger loop (``fraudray learn``, training/learning.py)."""

    every_labels: int = 5000  # a round once this many new labels have arrived …
    every_minutes: float = 60.0  # … or this long after the last round (with any new label)
    window_days: float = 14.0  # the rolling window of labelled transactions a challenger learns from
    recent_days: float = 1.0  # champion vs challenger on the newest days (validation: the days before)
    margin: float = 0.02  # average precision the challenger must win by to be promoted
    min_recent_frauds: int = 20  # fewer frauds in the recent window: no promotion
    drift_psi: float = 0.25  # a feature's PSI above this triggers a round
    poll_s: float = 30.0


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FRAUDRAY_",
        env_file=".env",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        # The .env file is shared with docker compose (HEAD_NUM_CPUS, …): keys without our prefix
        # are not ours. An unknown FRAUDRAY_* variable is still an error (__init__), and a section
        # refuses unknown fields, so a typo never passes silently.
        extra="ignore",
        frozen=True,
    )

    def __init__(self, **values: Any) -> None:
        env_file = self.model_config.get("env_file")
        unknown = _unknown_variables(Path(str(env_file)) if env_file else None, type(self).model_fields)
        try:
            if unknown:
                raise ValidationError.from_exception_data(type(self).__name__, [{
                    "type": PydanticCustomError("unknown_variable", "not a fraudray setting ({where}); "
                                                "`fraudray config` lists them", {"where": where}),
                    "loc": (name,), "input": MASK,
                } for name, where in unknown])  # fmt: skip
            super().__init__(**values)
        except ValidationError as exc:
            raise _named_by_variable(exc, type(self).__name__) from None

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    ray: RaySettings = Field(default_factory=RaySettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    llm: LlmSettings = Field(default_factory=LlmSettings)
    prometheus: PrometheusSettings = Field(default_factory=PrometheusSettings)
    alertmanager: AlertmanagerSettings = Field(default_factory=AlertmanagerSettings)
    stack: StackSettings = Field(default_factory=StackSettings)
    consumer: ConsumerSettings = Field(default_factory=ConsumerSettings)
    learn: LearnSettings = Field(default_factory=LearnSettings)

    @property
    def var_dir(self) -> Path:
        return self.stack.var_dir


def _unknown_variables(env_file: Path | None, sections: dict[str, Any]) -> list[tuple[str, str]]:
    """``(variable, where)`` of every FRAUDRAY_* variable that names no section (a section's
    unknown field is refused by the section itself)."""
    found = dict.fromkeys(os.environ, "environment")
    if env_file is not None and env_file.is_file():
        found |= {k: str(env_file) for k in dotenv_values(env_file) if k not in found}
    unknown = []
    for name, where in sorted(found.items()):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in RUN_SWITCHES:
            continue
        section = upper.removeprefix(ENV_PREFIX).split("_", 1)[0].lower()
        if section not in sections:
            unknown.append((name, f"set in {where}"))
    return unknown


def variable_name(loc: tuple[int | str, ...]) -> str:
    """The environment variable of a settings location: ``("kafka", "bootstrap")`` ->
    ``FRAUDRAY_KAFKA_BOOTSTRAP``. A location that is a variable already stays as it is."""
    first = str(loc[0]) if loc else ""
    if first.upper().startswith(ENV_PREFIX):
        return first
    return ENV_PREFIX + "_".join(str(part) for part in loc[:2]).upper()


def _named_by_variable(exc: ValidationError, title: str) -> ValidationError:
    """The same errors, located by the FRAUDRAY_* variable that sets each field (what a user
    writes in .env or the environment), never showing a secret's value."""
    errors = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        field = _field(loc)
        secret = field is not None and field.annotation is SecretStr
        errors.append({
            # The message as pydantic wrote it (no context: it is not formatted again).
            "type": PydanticCustomError(err["type"], err["msg"]),
            "loc": (variable_name(loc), *loc[2:]), "input": MASK if secret else err.get("input"),
        })  # fmt: skip
    return ValidationError.from_exception_data(title, errors)  # type: ignore[arg-type]


def _field(loc: tuple[int | str, ...]) -> Any:
    if len(loc) < 2 or loc[0] not in Settings.model_fields:
        return None
    section = Settings.model_fields[str(loc[0])].annotation
    return getattr(section, "model_fields", {}).get(str(loc[1]))


def effective(settings: Settings) -> list[tuple[str, str]]:
    """``(FRAUDRAY_* variable, value)`` of every setting, secrets masked (``fraudray config``)."""
    rows = []
    for section_name in type(settings).model_fields:
        section = getattr(settings, section_name)
        for field_name in type(section).model_fields:
            value = getattr(section, field_name)
            if isinstance(value, SecretStr):
                text = MASK if value.get_secret_value() else ""
            elif isinstance(value, tuple | list | frozenset | set):
                text = ",".join(map(str, value))
            else:
                text = str(value)
            rows.append((variable_name((section_name, field_name)), text))
    return rows


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests build their own ``Settings()``)."""
    return Settings()
