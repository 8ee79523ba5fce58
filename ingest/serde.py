"""Avro (de)serialisation of transactions in the Confluent wire format.

Every value is ``0x00`` (magic byte) + 4-byte big-endian schema id + Avro binary body.
Schema ids come from a :class:`FileSchemaRegistry` (``ingest/schemas/registry.json``).
Decoding a batch never raises for one bad record: bad records come back as
:class:`DecodeFailure` rows so the caller can send them to the dead-letter topic.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import fastavro

from cluster.errors import DecodeError

SCHEMAS_DIR = Path(__file__).resolve().parent / "schemas"
MAGIC = 0
_HEADER = struct.Struct(">bI")


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

    def __init__(self, registry: FileSchemaRegistry | None = None) -> None:
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
