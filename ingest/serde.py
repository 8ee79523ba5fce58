"""Avro (de)serialisation of transactions in the Confluent wire format.

Every value is ``0x00`` (magic byte) + 4-byte big-endian schema id + Avro binary body.
Schema ids come from a Confluent-compatible Schema Registry (:class:`ConfluentSchemaRegistry`,
through ``confluent_kafka.schema_registry``) when ``kafka.schema_registry_url`` is set, subject
``<topic>-value`` (TopicNameStrategy), else from the :class:`FileSchemaRegistry`
(``ingest/schemas/registry.json``), which gives every topic the same ids.
Decoding a batch never raises for one bad record: bad records come back as
:class:`DecodeFailure` rows so the caller can send them to the dead-letter topic.
"""

from __future__ import annotations

import io
import json
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import fastavro

from core.errors import DecodeError, FraudrayError
from ingest.avro_flat import Unsupported, compile_reader, compile_writer

if TYPE_CHECKING:
    from core.settings import Settings

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
MAGIC = 0
_HEADER = struct.Struct(">bI")
DEFAULT_SUBJECT = "transactions-value"
TRANSACTION_SCHEMA = SCHEMAS_DIR / "transaction.avsc"


class SchemaRegistry(Protocol):
    """Where schema ids come from: the latest (id, parsed schema) of a subject, a schema by id."""

    def latest(self, subject: str) -> tuple[int, Any]: ...

    def by_id(self, schema_id: int) -> Any: ...

    def check(self, subject: str) -> tuple[int, Any]:
        """For a reader: (id, parsed schema) of the local schema, after checking the subject
        accepts it; registers nothing."""
        ...


def subject_for(topic: str) -> str:
    """The value subject of a topic (Confluent's TopicNameStrategy)."""
    return f"{topic}-value"


class FileSchemaRegistry:
    """Schema ids from a JSON file: ``{subject: {id: schema_file}}``; the highest id is latest."""

    def __init__(self, path: Path = SCHEMAS_DIR / "registry.json") -> None:
        raw: dict[str, dict[str, str]] = json.loads(path.read_text())
        self._by_id: dict[int, Any] = {}
        self._latest: dict[str, int] = {}
        for subject, versions in raw.items():
            for sid, file in versions.items():
                schema = fastavro.parse_schema(json.loads((path.parent / file).read_text()))
                self._by_id[int(sid)] = schema
            self._latest[subject] = max(int(s) for s in versions)

    def latest(self, subject: str) -> tuple[int, Any]:
        # Without a registry there is one transaction schema: every topic's value subject
        # (a test's uuid topic, a bench topic) gets the ids of `transactions-value`.
        sid = self._latest.get(subject, self._latest[DEFAULT_SUBJECT])
        return sid, self._by_id[sid]

    def check(self, subject: str) -> tuple[int, Any]:
        return self.latest(subject)

    def by_id(self, schema_id: int) -> Any:
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise DecodeError(f"unknown schema id {schema_id}") from None


@dataclass(frozen=True, slots=True)
class DecodeFailure:
    index: int  # position in the input batch
    error: str  # exception class name
    message: str


class TransactionSerde:
    """Encode/decode transaction dicts for a transactions topic (subject ``<topic>-value``).

    A writer (``role="producer"``) registers the local schema under the subject; a reader
    (``role="consumer"``) registers nothing but checks that the subject's compatibility level
    and latest schema let it read. Values written with another schema id are read with the
    writer's schema resolved to ours (Avro schema resolution: BACKWARD)."""

    def __init__(
        self,
        registry: SchemaRegistry | None = None,
        topic: str = "transactions",
        role: Literal["producer", "consumer"] = "producer",
    ) -> None:
        self.registry = registry or FileSchemaRegistry()
        self.topic = topic
        self.subject = subject_for(topic)
        if role == "producer":
            self.schema_id, self.schema = self.registry.latest(self.subject)
        else:
            self.schema_id, self.schema = self.registry.check(self.subject)
        self._header = _HEADER.pack(MAGIC, self.schema_id)
        self._read_own = compile_reader(self.schema)  # values of our own schema id, fastavro's dict

    def encode(self, record: dict[str, Any]) -> bytes:
        buf = io.BytesIO()
        buf.write(self._header)
        fastavro.schemaless_writer(buf, self.schema, record)
        return buf.getvalue()

    def encode_many(self, records: Iterable[dict[str, Any]]) -> list[bytes]:
        return [self.encode(r) for r in records]

    def decode(self, value: bytes | None) -> dict[str, Any]:
        if value is None or len(value) < _HEADER.size:
            raise DecodeError("record is shorter than the 5-byte Confluent header")
        magic, schema_id = _HEADER.unpack_from(value)
        if magic != MAGIC:
            raise DecodeError(f"bad magic byte {magic} (expected {MAGIC}: Confluent wire format)")
        if schema_id == self.schema_id:
            if self._read_own is not None:
                try:
                    return self._read_own(value, _HEADER.size)
                except (IndexError, ValueError, OverflowError, struct.error):
                    pass  # read again below: the DecodeError names the fault as fastavro sees it
            schema, reader = self.schema, None
        else:
            schema, reader = self.registry.by_id(schema_id), self.schema
        buf = io.BytesIO(value)
        buf.seek(_HEADER.size)
        try:
            record = fastavro.schemaless_reader(buf, schema, reader)
        except Exception as exc:
            raise DecodeError(f"Avro body does not match schema {schema_id}: {exc!r}") from exc
        if not isinstance(record, dict):
            raise DecodeError(f"schema {schema_id} does not describe a record")
        if buf.tell() != len(value):
            raise DecodeError(f"{len(value) - buf.tell()} trailing bytes after the Avro record")
        return record

    def decode_many(
        self, values: Sequence[bytes | None]
    ) -> tuple[list[tuple[int, dict[str, Any]]], list[DecodeFailure]]:
        """Decode a batch: ``(index, record)`` for good values, failures for the rest."""
        good: list[tuple[int, dict[str, Any]]] = []
        bad: list[DecodeFailure] = []
        for i, value in enumerate(values):
            try:
                good.append((i, self.decode(value)))
            except DecodeError as exc:
                bad.append(DecodeFailure(i, type(exc).__name__, str(exc)))
        return good, bad


def event_time_ms(record: dict[str, Any]) -> int:
    """``event_time`` as epoch milliseconds (fastavro gives a tz-aware datetime)."""
    t = record["event_time"]
    return int(t.timestamp() * 1000) if isinstance(t, datetime) else int(t)


class SchemaRegistryError(FraudrayError):
    """The Schema Registry could not be reached or refused a request."""

    http_status = 503


class IncompatibleSchema(SchemaRegistryError):
    """The subject's compatibility level refuses our schema (or the schema refuses the subject's
    latest): nothing is written with it."""

    http_status = 409


_UNKNOWN_ID_TTL_S = 30.0  # an unknown id is asked again after this (its producer may register it)


class ConfluentSchemaRegistry:
    """A Confluent-compatible Schema Registry through ``confluent_kafka.schema_registry``.

    ``latest(subject)`` (a writer) sets the subject's compatibility level, then registers the
    local schema (the registry answers with the existing id when it knows it, and refuses an
    incompatible one). ``check(subject)`` (a reader) sets the level and tests the local schema
    against the subject's latest without registering. ``by_id`` fetches and caches schemas
    written by anyone; an id the registry does not know is a :class:`DecodeError` (the record
    goes to the dead-letter topic), an unreachable registry a :class:`SchemaRegistryError`
    (the batch is retried, nothing is dead-lettered)."""

    def __init__(
        self, conf: dict[str, Any], compatibility: str = "BACKWARD", schema_file: Path = TRANSACTION_SCHEMA
    ) -> None:
        from confluent_kafka.schema_registry import SchemaRegistryClient

        self.url = str(conf["url"]).rstrip("/")
        self.compatibility = compatibility
        self._client = SchemaRegistryClient({"max.retries": 1, "timeout": 5, **conf})
        self._text = schema_file.read_text()
        self._parsed = fastavro.parse_schema(json.loads(self._text))
        self._by_id: dict[int, Any] = {}
        self._latest: dict[str, int] = {}
        self._unknown: dict[int, float] = {}

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError

        try:
            return fn(*args, **kwargs)
        except ClientError:
            raise
        except Exception as exc:  # connection errors come from httpx, ssl, OSError
            raise SchemaRegistryError(f"schema registry {self.url}: {what}: {exc}") from exc

    def _local_schema(self) -> Any:
        from confluent_kafka.schema_registry import Schema

        return Schema(self._text, "AVRO")

    def ensure_compatibility(self, subject: str) -> None:
        """Set the subject's compatibility level to the configured one when it differs."""
        from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError

        try:
            level = self._call("compatibility", self._client.get_compatibility, subject)
        except ClientError as exc:
            if exc.http_status_code != 404:  # 40401/40408: subject unknown or no level of its own
                raise SchemaRegistryError(f"schema registry {self.url}: {exc}") from exc
            level = None
        if level != self.compatibility:
            try:
                self._call("set compatibility", self._client.set_compatibility, subject, self.compatibility)
            except ClientError as exc:
                raise SchemaRegistryError(f"schema registry {self.url}: {exc}") from exc

    def latest(self, subject: str) -> tuple[int, Any]:
        from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError

        if subject not in self._latest:
            self.ensure_compatibility(subject)
            try:
                sid = int(self._call("register", self._client.register_schema, subject, self._local_schema()))
            except ClientError as exc:
                if exc.http_status_code == 409:
                    raise IncompatibleSchema(
                        f"schema registry {self.url} refuses {TRANSACTION_SCHEMA.name} for {subject} "
                        f"({self.compatibility}): {exc.error_message}"
                    ) from exc
                raise SchemaRegistryError(f"schema registry {self.url}: {exc}") from exc
            self._by_id[sid] = self._parsed
            self._latest[subject] = sid
        sid = self._latest[subject]
        return sid, self._by_id[sid]

    def check(self, subject: str) -> tuple[int, Any]:
        from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError

        self.ensure_compatibility(subject)
        try:
            found = self._call("lookup", self._client.lookup_schema, subject, self._local_schema())
            sid = int(found.schema_id)
        except ClientError as exc:
            if exc.http_status_code != 404:
                raise SchemaRegistryError(f"schema registry {self.url}: {exc}") from exc
            sid = 0  # not registered (yet): every value carries its writer's id anyway
            try:
                ok = self._call("test", self._client.test_compatibility, subject, self._local_schema())
            except ClientError as exc2:
                if exc2.http_status_code != 404:  # no version yet: anything is compatible
                    raise SchemaRegistryError(f"schema registry {self.url}: {exc2}") from exc2
                ok = True
            if not ok:
                raise IncompatibleSchema(
                    f"{TRANSACTION_SCHEMA.name} cannot read {subject}'s latest schema at {self.url} "
                    f"({self.compatibility})"
                ) from exc
        if sid:
            self._by_id[sid] = self._parsed
        return sid, self._parsed

    def by_id(self, schema_id: int) -> Any:
        from confluent_kafka.schema_registry.error import SchemaRegistryError as ClientError

        if schema_id in self._by_id:
            return self._by_id[schema_id]
        if time.monotonic() < self._unknown.get(schema_id, 0.0):
            raise DecodeError(f"unknown schema id {schema_id} at {self.url}")
        try:
            schema = self._call("schema by id", self._client.get_schema, schema_id)
        except ClientError as exc:
            if exc.http_status_code == 404:
                self._unknown[schema_id] = time.monotonic() + _UNKNOWN_ID_TTL_S
                raise DecodeError(f"unknown schema id {schema_id} at {self.url}") from None
            raise SchemaRegistryError(f"schema registry {self.url}: {exc}") from exc
        if schema.schema_type not in (None, "AVRO"):
            raise DecodeError(f"schema id {schema_id} is {schema.schema_type}, not Avro")
        self._by_id[schema_id] = fastavro.parse_schema(json.loads(schema.schema_str))
        return self._by_id[schema_id]


def registry_from_settings(settings: Settings) -> SchemaRegistry:
    """The Schema Registry when ``kafka.schema_registry_url`` is set, else the file registry."""
    k = settings.kafka
    if not k.schema_registry_url:
        return FileSchemaRegistry()
    return ConfluentSchemaRegistry(k.schema_registry_config(), compatibility=k.schema_registry_compatibility)


class FastRecordEncoder:
    """Confluent-framed Avro for flat records of primitive, optional and timestamp-millis fields,
    byte-identical to ``fastavro.schemaless_writer`` (tested) and several times faster. Any value
    it does not handle goes to fastavro, which encodes it or raises as usual."""

    def __init__(self, schema_id: int, schema: Any) -> None:
        self.schema = schema
        self.header = _HEADER.pack(MAGIC, schema_id)
        write = compile_writer(schema)
        if write is None:
            raise ValueError("FastRecordEncoder handles flat records of primitive/optional fields only")
        self._write = write

    @classmethod
    def for_serde(cls, serde: TransactionSerde) -> FastRecordEncoder:
        return cls(serde.schema_id, serde.schema)

    def encode(self, record: dict[str, Any]) -> bytes:
        out = [self.header]
        try:
            self._write(record, out)
        except (Unsupported, UnicodeEncodeError, struct.error, OverflowError):
            buf = io.BytesIO()
            buf.write(self.header)
            fastavro.schemaless_writer(buf, self.schema, record)
            return buf.getvalue()
        return b"".join(out)
