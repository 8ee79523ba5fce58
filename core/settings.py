"""One settings model for every host, port, DSN and credential fraudray uses.

Environment variables use the prefix ``FRAUDRAY_`` and the first underscore after it
selects the section: ``FRAUDRAY_KAFKA_BOOTSTRAP`` sets ``kafka.bootstrap``,
``FRAUDRAY_LLM_BASE_URL`` sets ``llm.base_url``. A ``.env`` file in the working
directory is read too. Defaults point at the local stack (``fraudray stack up``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


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
    # Confluent-compatible Schema Registry; empty = the file registry in ingest/schemas/
    schema_registry_url: str = ""

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


class RedisSettings(_Section):
    url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")

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
    # Comma-separated keys accepted in the X-API-Key header; empty disables auth.
    keys: SecretStr = SecretStr("")

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


class ConsumerSettings(_Section):
    # Most records one poll returns. Below capacity the poll timeout ends a batch first, so this
    # only matters under a backlog, where each batch's fixed costs (the Serve call, the COPY, the
    # commit) are shared by more records: 2,000 drained ~24 % faster than 500 on the dev box
    # (docs/benchmarks.md, "batch size"). The online store splits it into script calls of
    # features.online.SCRIPT_BATCH, so Redis is never blocked for a whole batch.
    batch_size: int = 2000
    # How long a poll waits for a full batch. Below capacity a record waits up to this long before
    # its batch starts, so it sets the latency floor; a backlog fills batches at once whatever it
    # is. 0.1 s halves p50 against 0.5 s at 500-2,000 tx/s (docs/benchmarks.md, "poll timeout").
    poll_timeout_s: float = 0.1
    fraud_threshold: float = 0.5


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FRAUDRAY_",
        env_file=".env",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        extra="forbid",
        frozen=True,
    )

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

    @property
    def var_dir(self) -> Path:
        return self.stack.var_dir


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings (read once; tests build their own ``Settings()``)."""
    return Settings()
