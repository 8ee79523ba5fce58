"""A reader compiled for one flat Avro record schema: the consumer's hot path.

``fastavro.schemaless_reader`` walks the schema for every record it reads; for a 13-field
transaction that is most of its ~10 µs. :func:`compile_reader` turns a record schema whose
fields are ``string``, ``bytes``, ``double``, ``long`` (also ``timestamp-millis``) or a union of
``null`` with one of them into one straight-line Python function, as ``dataclasses`` builds its
``__init__``: about half the time, the same dict (docs/benchmarks.md, "2026-12-07 (sixth
session)"). Any other schema gets ``None`` and stays with fastavro.

The reader is strict (a truncated body, a bad union index, invalid UTF-8, trailing bytes,
a varint beyond 64 bits all raise); :class:`ingest.serde.TransactionSerde` reads a value it
refuses with fastavro again, so a bad record's dead-letter reason is fastavro's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

Reader = Callable[[bytes, int], dict[str, Any]]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)  # n * _MS: exact integer arithmetic, as fastavro's
_DOUBLE = struct.Struct("<d").unpack_from
_KINDS = {"string", "bytes", "double", "long"}


def _varint(b: bytes, pos: int) -> tuple[int, int]:
    """The zigzag varint at ``pos``: its value and the position after it."""
    x = shift = 0
    while True:
        c = b[pos]
        pos += 1
        x |= (c & 0x7F) << shift
        if not c & 0x80:
            return (x >> 1) ^ -(x & 1), pos
        shift += 7
        if shift > 63:
            raise ValueError("a varint longer than 64 bits")


def _kind(avro_type: Any) -> str | None:
    """The reader's name for a field type, None when it has no straight-line reading."""
    if isinstance(avro_type, str):
        return avro_type if avro_type in _KINDS else None
    if isinstance(avro_type, dict):
        logical = avro_type.get("logicalType")
        if logical == "timestamp-millis" and avro_type.get("type") == "long":
            return "timestamp-millis"
        if logical is None:
            return _kind(avro_type.get("type"))
    return None


def _read(kind: str, out: str, indent: str) -> list[str]:
    """Source lines reading one value of ``kind`` at ``pos`` of ``b`` into ``out``."""
    length = [
        f"{indent}n = b[pos]",
        f"{indent}pos += 1",
        f"{indent}if n & 0x80:",
        f"{indent}    n, pos = _varint(b, pos - 1)",
        f"{indent}else:",
        f"{indent}    n = (n >> 1) ^ -(n & 1)",
    ]
    if kind == "double":
        return [f"{indent}({out},) = _DOUBLE(b, pos)", f"{indent}pos += 8"]
    if kind == "long":
        return [*length, f"{indent}{out} = n"]
    if kind == "timestamp-millis":
        return [*length, f"{indent}{out} = _EPOCH + n * _MS"]
    decode = ".decode()" if kind == "string" else ""
    return [
        *length,
        f"{indent}end = pos + n",
        f"{indent}if n < 0 or end > size:",
        f"{indent}    raise ValueError('a string or bytes value runs past the end')",
        f"{indent}{out} = b[pos:end]{decode}",
        f"{indent}pos = end",
    ]


def compile_reader(schema: Any) -> Reader | None:
    """``read(value, start)``: the record whose Avro body is ``value[start:]`` (it must end
    there), as fastavro would give it; None for a schema beyond the kinds above."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    lines = ["def read(b, pos):", "    size = len(b)"]
    names: list[str] = []
    for i, spec in enumerate(schema.get("fields", ())):
        avro_type, out = spec["type"], f"v{i}"
        if isinstance(avro_type, list):
            if len(avro_type) != 2 or "null" not in avro_type:
                return None
            null_at = avro_type.index("null")
            kind = _kind(avro_type[1 - null_at])
            if kind is None:
                return None
            # a union's branch index is a zigzag varint: 0 -> byte 0, 1 -> byte 2
            lines += [
                "    u = b[pos]",
                "    pos += 1",
                f"    if u == {2 * null_at}:",
                f"        {out} = None",
                f"    elif u == {2 - 2 * null_at}:",
                *_read(kind, out, "        "),
                "    else:",
                "        raise ValueError('a union branch index out of range')",
            ]
        else:
            kind = _kind(avro_type)
            if kind is None:
                return None
            lines += _read(kind, out, "    ")
        names.append(spec["name"])
    lines += [
        "    if pos != size:",
        "        raise ValueError('trailing bytes after the record')",
        "    return {" + ", ".join(f"{name!r}: v{i}" for i, name in enumerate(names)) + "}",
    ]
    scope: dict[str, Any] = {"_varint": _varint, "_EPOCH": _EPOCH, "_MS": _MS, "_DOUBLE": _DOUBLE}
    exec(compile("\n".join(lines), f"<avro reader {schema.get('name', '?')}>", "exec"), scope)  # noqa: S102
    reader: Reader = scope["read"]
    return reader
