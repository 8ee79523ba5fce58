"""Avro writers and readers compiled for one flat record schema: the hot paths of the producer
and the consumer.

fastavro walks the schema for every record it writes or reads. A record schema whose fields are
primitives, ``timestamp-millis`` or a union of ``null`` with one of them is compiled here, once,
into one straight-line Python function (as ``dataclasses`` builds its ``__init__``):
:func:`compile_writer` appends a record's body byte-identical to ``fastavro.schemaless_writer``,
:func:`compile_reader` gives the dict ``fastavro.schemaless_reader`` gives. Both classify the
schema's fields with :func:`flat_kind`; a schema with a field either side has no code for gets
``None`` and stays with fastavro (docs/simulator.md, docs/benchmarks.md "2026-12-07 (sixth
session)").

Both are strict: the writer raises :class:`Unsupported` for a value it does not handle, the
reader raises on a truncated body, a bad union index, invalid UTF-8, trailing bytes or a varint
beyond 64 bits; :mod:`ingest.serde` then hands the record or value to fastavro, which encodes or
reads it, or raises with its own reason (a dead letter's reason is fastavro's).
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

Writer = Callable[[dict[str, Any], list[bytes]], None]
Reader = Callable[[bytes, int], dict[str, Any]]

_DOUBLE = struct.Struct("<d")
_FLOAT = struct.Struct("<f")
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)  # n * _MS: exact integer arithmetic, as fastavro's
_PRIMITIVES = frozenset({"string", "bytes", "double", "float", "long", "int", "boolean"})


def flat_kind(avro_type: Any) -> tuple[str, int | None] | None:
    """A field type's kind (a primitive's name or ``timestamp-millis``) and, for a union with
    null, the null branch's index; None for anything else (records, arrays, enums, wider unions)."""
    if isinstance(avro_type, list):
        if len(avro_type) != 2 or "null" not in avro_type:
            return None
        null_index = avro_type.index("null")
        inner = flat_kind(avro_type[1 - null_index])
        return None if inner is None or inner[1] is not None else (inner[0], null_index)
    if isinstance(avro_type, str):
        return (avro_type, None) if avro_type in _PRIMITIVES else None
    if isinstance(avro_type, dict):
        logical, base = avro_type.get("logicalType"), avro_type.get("type")
        if logical == "timestamp-millis" and base == "long":
            return ("timestamp-millis", None)
        if logical is None and isinstance(base, str) and base in _PRIMITIVES:
            return (base, None)
    return None


# -- writing ------------------------------------------------------------------------------------


class Unsupported(Exception):
    """The compiled writer cannot encode this value; fastavro decides (and raises if it is invalid)."""


_SMALL_VARINTS = [bytes([i]) for i in range(128)]


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


# Source snippets per kind; ``{v}`` is the value, ``a`` appends to the output list.
_WRITE: dict[str, str] = {
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
_WRITE["int"] = _WRITE["long"].replace("M", "2147483648")


def compile_writer(schema: Any) -> Writer | None:
    """``write(record, out)`` appending the record's Avro body to ``out``, or None."""
    lines = ["def write(r, out):", "    a = out.append"]
    for i, spec in enumerate(schema["fields"]):
        kind = flat_kind(spec["type"])
        if kind is None or kind[0] not in _WRITE:
            return None
        snippet, null_index = _WRITE[kind[0]], kind[1]
        if null_index is not None:
            body = "".join("    " + line + "\n" for line in snippet.splitlines())
            snippet = (
                f"if {{v}} is None: a(S[{null_index * 2}])\nelse:\n    a(S[{(1 - null_index) * 2}])\n{body}"
            )
        lines.append(f"    v{i} = r.get({spec['name']!r})")
        lines.extend("    " + line for line in snippet.format(v=f"v{i}").splitlines())
    scope: dict[str, Any] = {"U": Unsupported, "S": _SMALL_VARINTS, "Z": _zigzag, "PD": _DOUBLE.pack,
                             "PF": _FLOAT.pack, "M": 2**63, "DT": datetime, "E": _EPOCH}  # fmt: skip
    exec(compile("\n".join(lines), "<avro-record-writer>", "exec"), scope)  # noqa: S102 - code from our own templates
    writer: Writer = scope["write"]
    return writer


# -- reading ------------------------------------------------------------------------------------


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


_LENGTH = (
    "n = b[pos]\npos += 1\n"
    "if n & 0x80:\n    n, pos = _varint(b, pos - 1)\nelse:\n    n = (n >> 1) ^ -(n & 1)\n"
)
_TEXT = (
    _LENGTH + "end = pos + n\n"
    "if n < 0 or end > size:\n    raise ValueError('a string or bytes value runs past the end')\n"
    "{v} = b[pos:end]{decode}\npos = end\n"
)
# Source snippets per kind reading one value at ``pos`` of ``b`` into ``{v}``.
_READ: dict[str, str] = {
    "string": _TEXT.replace("{decode}", ".decode()"),
    "bytes": _TEXT.replace("{decode}", ""),
    "double": "({v},) = _DOUBLE(b, pos)\npos += 8\n",
    "long": _LENGTH + "{v} = n\n",
    "timestamp-millis": _LENGTH + "{v} = _EPOCH + n * _MS\n",
}


def compile_reader(schema: Any) -> Reader | None:
    """``read(value, start)``: the record whose Avro body is ``value[start:]`` (it must end
    there), as fastavro would give it; None for a schema with a kind ``_READ`` lacks."""
    if not isinstance(schema, dict) or schema.get("type") != "record":
        return None
    lines = ["def read(b, pos):", "    size = len(b)"]
    names: list[str] = []
    for i, spec in enumerate(schema.get("fields", ())):
        kind = flat_kind(spec["type"])
        if kind is None or kind[0] not in _READ:
            return None
        snippet, null_index = _READ[kind[0]].format(v=f"v{i}"), kind[1]
        if null_index is None:
            lines.extend("    " + line for line in snippet.splitlines())
        else:  # a union's branch index is a zigzag varint: 0 -> byte 0, 1 -> byte 2
            lines += ["    u = b[pos]", "    pos += 1", f"    if u == {2 * null_index}:",
                      f"        v{i} = None", f"    elif u == {2 - 2 * null_index}:"]  # fmt: skip
            lines.extend("        " + line for line in snippet.splitlines())
            lines += ["    else:", "        raise ValueError('a union branch index out of range')"]
        names.append(spec["name"])
    lines += [
        "    if pos != size:",
        "        raise ValueError('trailing bytes after the record')",
        "    return {" + ", ".join(f"{name!r}: v{i}" for i, name in enumerate(names)) + "}",
    ]
    scope: dict[str, Any] = {"_varint": _varint, "_EPOCH": _EPOCH, "_MS": _MS, "_DOUBLE": _DOUBLE.unpack_from}
    exec(compile("\n".join(lines), f"<avro reader {schema.get('name', '?')}>", "exec"), scope)  # noqa: S102 - code from our own templates
    reader: Reader = scope["read"]
    return reader
