"""Avro (de)serialisation of transactions in the Confluent wire format.

Every value is ``0x00`` (magic byte) + 4-byte big-endian schema id + Avro binary body.
Schema ids come from a :class:`FileSchemaRegistry` (``ingest/schemas/registry.json``), or from
a Confluent-compatible Schema Registry (:class:`HttpSchemaRegistry`) when
``kafka.schema_registry_url`` is set.
Decoding a batch never raises for one bad record: bad records come back as
:class:`DecodeFailure` rows so the caller can send them to the dead-letter topic.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import fastavro

from core.errors import DecodeError, FraudrayError

if TYPE_CHECKING:
    from core.settings import Settings

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
MAGIC = 0
_HEADER = struct.Struct(">bI")


class SchemaRegistry(Protocol):
    """Where schema ids come from: the latest (id, parsed schema) of a subject, a schema by id."""

    def latest(self, subject: str) -> tuple[int, Any]: ...

    def by_id(self, schema_id: int) -> Any: ...


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
        sid = self._latest[subject]
        return sid, self._by_id[sid]

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
    """Encode/decode transaction dicts for the ``transactions`` topic."""

    subject = "transactions-value"

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry or FileSchemaRegistry()
        self.schema_id, self.schema = self.registry.latest(self.subject)
        self._header = _HEADER.pack(MAGIC, self.schema_id)

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
        schema = self.registry.by_id(schema_id)
        buf = io.BytesIO(value)
        buf.seek(_HEADER.size)
        try:
            record = fastavro.schemaless_reader(buf, schema, None)
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
    """The HTTP Schema Registry could not be reached or refused a request."""

    http_status = 503


class HttpSchemaRegistry:
    """A Confluent-compatible Schema Registry over its REST API.

    ``latest(subject)`` registers our local schema for the subject (the registry answers with the
    existing id when it already knows it, like Confluent serialisers with auto-registration);
    ``by_id`` fetches and caches schemas written by anyone. The local schemas are the ones
    ``registry.json`` names, so both registries serve the same files.
    """

    def __init__(self, url: str, local: Path = SCHEMAS_DIR / "registry.json", timeout: float = 5.0) -> None:
        import httpx

        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=timeout)
        raw: dict[str, dict[str, str]] = json.loads(local.read_text())
        self._local = {
            subject: (local.parent / versions[max(versions, key=int)]).read_text()
            for subject, versions in raw.items()
        }
        self._by_id: dict[int, Any] = {}
        self._latest: dict[str, int] = {}

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        import httpx

        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            raise SchemaRegistryError(f"schema registry {self.url}: {exc}") from exc
        if response.status_code == 404 and path.startswith("/schemas/ids/"):
            raise DecodeError(f"unknown schema id {path.rsplit('/', 1)[-1]} at {self.url}")
        if response.status_code >= 400:
            raise SchemaRegistryError(
                f"schema registry {self.url}{path}: HTTP {response.status_code} {response.text[:200]}"
            )
        return response.json()

    def latest(self, subject: str) -> tuple[int, Any]:
        if subject not in self._latest:
            if subject not in self._local:
                raise SchemaRegistryError(f"no local schema for subject {subject!r}")
            text = self._local[subject]
            answer = self._request(
                "POST",
                f"/subjects/{subject}/versions",
                json={"schema": text},
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            )
            sid = int(answer["id"])
            self._by_id[sid] = fastavro.parse_schema(json.loads(text))
            self._latest[subject] = sid
        sid = self._latest[subject]
        return sid, self._by_id[sid]

    def by_id(self, schema_id: int) -> Any:
        if schema_id not in self._by_id:
            answer = self._request("GET", f"/schemas/ids/{schema_id}")
            self._by_id[schema_id] = fastavro.parse_schema(json.loads(answer["schema"]))
        return self._by_id[schema_id]


def registry_from_settings(settings: Settings) -> SchemaRegistry:
    """The HTTP registry when ``kafka.schema_registry_url`` is set, else the file registry."""
    url = settings.kafka.schema_registry_url
    return HttpSchemaRegistry(url) if url else FileSchemaRegistry()


# ---------------------------------------------------------------------------------------------
# A faster encoder for flat record schemas (what the producer's hot path needs).

_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_SMALL_VARINTS = [bytes([i]) for i in range(128)]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class _Unsupported(Exception):
    """The fast path cannot encode this value; fastavro decides (and raises if it is invalid)."""


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    if n < 128:
        return _SMALL_VARINTS[n]
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Source snippets per Avro type; ``{v}`` is the value, ``a`` appends to the output list.
_SNIPPETS: dict[str, str] = {
    "string": (
        "if type({v}) is not str: raise U\n"
        "b = {v}.encode(); n = len(b)\n"
        "a(S[n << 1] if n < 64 else Z(n)); a(b)\n"
    ),
    "double": "if type({v}) is not float and type({v}) is not int: raise U\na(PD({v}))\n",
    "float": "if type({v}) is not float and type({v}) is not int: raise U\na(PF({v}))\n",
    "long": "if type({v}) is not int or not -M <= {v} < M: raise U\na(Z({v}))\n",
    "boolean": "if type({v}) is not bool: raise U\na(b'\\x01' if {v} else b'\\x00')\n",
    "timestamp-millis": (
        "if type({v}) is int: a(Z({v}))\n"
        "elif isinstance({v}, DT) and {v}.tzinfo is not None:\n"
        "    d = {v} - E; a(Z((d.days * 86400 + d.seconds) * 1000 + d.microseconds // 1000))\n"
        "else: raise U\n"  # naive datetimes: fastavro's rules (local time)
    ),
}
_SNIPPETS["int"] = _SNIPPETS["long"].replace("M", "2147483648")


def _type_snippet(schema: Any) -> str | None:
    if isinstance(schema, dict):
        if schema.get("logicalType") == "timestamp-millis" and schema.get("type") == "long":
            return _SNIPPETS["timestamp-millis"]
        if "logicalType" not in schema and schema.get("type") in _SNIPPETS:
            return _SNIPPETS[schema["type"]]
        return None
    if isinstance(schema, str) and schema in _SNIPPETS and schema != "timestamp-millis":
        return _SNIPPETS[schema]
    if isinstance(schema, list) and len(schema) == 2 and "null" in schema:
        null_index = schema.index("null")
        inner = _type_snippet(schema[1 - null_index])
        if inner is None:
            return None
        body = "".join("    " + line + "\n" for line in inner.splitlines())
        return f"if {{v}} is None: a(S[{null_index * 2}])\nelse:\n    a(S[{(1 - null_index) * 2}])\n{body}"
    return None


def _compile_record_writer(schema: Any) -> Any:
    """A function ``(record, out_list) -> None`` appending the record's Avro body, or None."""
    lines = ["def write(r, out):", "    a = out.append"]
    for i, f in enumerate(schema["fields"]):
        snippet = _type_snippet(f["type"])
        if snippet is None:
            return None
        lines.append(f"    v{i} = r.get({f['name']!r})")
        lines.extend("    " + line for line in snippet.format(v=f"v{i}").splitlines())
    scope = {"U": _Unsupported, "S": _SMALL_VARINTS, "Z": _zigzag, "PD": _DOUBLE.pack, "PF": _FLOAT.pack,
             "M": 2**63, "DT": datetime, "E": _EPOCH}  # fmt: skip
    exec(compile("\n".join(lines), "<avro-record-writer>", "exec"), scope)  # noqa: S102 - code from our own templates
    return scope["write"]


class FastRecordEncoder:
    """Confluent-framed Avro for flat records of primitive, optional and timestamp-millis fields,
    byte-identical to ``fastavro.schemaless_writer`` (tested) and several times faster. Any value
    it does not handle goes to fastavro, which encodes it or raises as usual."""

    def __init__(self, schema_id: int, schema: Any) -> None:
        self.schema = schema
        self.header = _HEADER.pack(MAGIC, schema_id)
        write = _compile_record_writer(schema)
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
        except (_Unsupported, UnicodeEncodeError, struct.error, OverflowError):
            buf = io.BytesIO()
            buf.write(self.header)
            fastavro.schemaless_writer(buf, self.schema, record)
            return buf.getvalue()
        return b"".join(out)
