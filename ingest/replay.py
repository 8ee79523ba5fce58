"""Replay any CSV or Parquet file of transactions: map its columns onto the transaction
schema, parse and validate every row, and stream the good rows in event-time order (with
labels from a column, if asked). Rows that cannot be mapped are kept as :class:`RowError`
with their line number, never dropped silently.

Line numbers: for CSV, the physical line where the row starts (the header is line 1; quoted
fields spanning lines are counted right); for Parquet, the 1-based row number.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from core.errors import FraudrayError
from features.validation import validate
from ingest.simulator.population import SALT_LABEL, hash01

REQUIRED: tuple[str, ...] = ("transaction_id", "user_id", "merchant_id", "amount", "currency", "event_time",
                             "country")  # fmt: skip
OPTIONAL: tuple[str, ...] = ("device_id", "channel", "merchant_category", "lat", "lon", "ip")
FIELDS: tuple[str, ...] = REQUIRED + OPTIONAL
_NUMERIC = frozenset({"amount", "lat", "lon"})
_STRINGS = tuple(f for f in FIELDS if f not in _NUMERIC and f != "event_time")
_UPPER = frozenset({"currency", "country"})
_TRUE = frozenset({"1", "1.0", "true", "t", "yes", "y", "fraud"})
_FALSE = frozenset({"0", "0.0", "false", "f", "no", "n", "genuine", "legit"})
TimeUnit = Literal["auto", "iso", "s", "ms", "us", "h"]
_UNIT_MS = {"s": 1_000.0, "ms": 1.0, "us": 0.001, "h": 3_600_000.0}


class ReplayError(FraudrayError):
    """The replay cannot start: unreadable file, bad ``--map``, missing column."""

    http_status = 422


def parse_pairs(spec: str | None, what: str) -> dict[str, str]:
    """``"a=B,c=D"`` as ``{"a": "B", "c": "D"}``."""
    out: dict[str, str] = {}
    for part in (spec or "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ReplayError(f"{what} entry {part.strip()!r} is not field=value")
        if key not in FIELDS:
            raise ReplayError(f"{what}: {key!r} is not a transaction field (fields: {', '.join(FIELDS)})")
        if key in out:
            raise ReplayError(f"{what}: {key!r} given twice")
        out[key] = value
    return out


@dataclass(frozen=True)
class FieldMap:
    """Which source column (or constant) fills each transaction field."""

    columns: dict[str, str]
    constants: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, map_spec: str | None, set_spec: str | None = None) -> FieldMap:
        columns, constants = parse_pairs(map_spec, "--map"), parse_pairs(set_spec, "--set")
        both = sorted(set(columns) & set(constants))
        if both:
            raise ReplayError(f"{', '.join(both)} both mapped (--map) and set (--set)")
        return cls(columns, constants)

    def resolve(self, available: list[str]) -> FieldMap:
        """Fill the fields neither mapped nor set from same-named columns; check the required ones."""
        columns = dict(self.columns)
        for f in FIELDS:
            if f not in columns and f not in self.constants and f in available:
                columns[f] = f
        # transaction_id may be absent: it is derived from the file name and line then
        missing = [
            f for f in REQUIRED if f not in columns and f not in self.constants and f != "transaction_id"
        ]
        if missing:
            raise ReplayError(
                f"required field(s) {', '.join(missing)} neither mapped (--map field=COLUMN), "
                f"set (--set field=VALUE) nor a column of the same name (columns: {', '.join(available)})"
            )
        return FieldMap(columns, dict(self.constants))


@dataclass(frozen=True, slots=True)
class RowError:
    line: int
    reason: str


@dataclass(frozen=True, eq=False)
class ReplayChunk:
    """A slice of the replay, in event-time order (a :class:`ingest.stream.Chunk`)."""

    rows: list[dict[str, Any]]
    event_ms: np.ndarray
    due_ms: np.ndarray | None  # label due time; labels only where has_label
    is_fraud: np.ndarray | None
    has_label: np.ndarray | None
    scenario: list[str | None] | None

    def __len__(self) -> int:
        return len(self.rows)

    def take(self, index: slice) -> ReplayChunk:
        def cut(a: Any) -> Any:
            return None if a is None else a[index]

        return ReplayChunk(self.rows[index], self.event_ms[index], cut(self.due_ms), cut(self.is_fraud),
                           cut(self.has_label), cut(self.scenario))  # fmt: skip

    def records(self) -> list[dict[str, Any]]:
        return self.rows

    def labels(self) -> tuple[np.ndarray, np.ndarray, list[str | None]] | None:
        if self.due_ms is None or self.is_fraud is None or self.has_label is None or self.scenario is None:
            return None
        if self.has_label.all():
            return self.due_ms, self.is_fraud, self.scenario
        # unlabelled rows: due never (the queue drops nothing, so hold them out here)
        keep = self.has_label
        return (
            self.due_ms[keep],
            self.is_fraud[keep],
            [s for s, k in zip(self.scenario, keep, strict=True) if k],
        )


@dataclass
class ReplayData:
    """A loaded file: the good rows as columns in event-time order, and the rows that failed.

    Transaction dicts are built a chunk at a time when sending (``chunks``), so a file of
    millions of rows costs its columns in memory, not millions of dicts.
    """

    path: Path
    rows_read: int
    columns: dict[str, list[Any]]  # every schema field but event_time, good rows only, sorted
    event_ms: np.ndarray
    lines: np.ndarray  # source line (or row) of each good row
    errors: list[RowError]
    is_fraud: np.ndarray | None = None
    has_label: np.ndarray | None = None
    scenario: list[str | None] | None = None
    blank_lines: int = 0

    def __len__(self) -> int:
        return len(self.event_ms)

    def records(self, index: slice = slice(None)) -> list[dict[str, Any]]:
        """Transaction dicts (schema field order) of the good rows in ``index``."""
        times = _datetimes(self.event_ms[index])
        columns = [times if f == "event_time" else self.columns[f][index] for f in FIELDS]
        return [dict(zip(FIELDS, values, strict=True)) for values in zip(*columns, strict=True)]

    def chunks(self, label_delay_s: float = 0.0, size: int = 4096) -> Iterator[ReplayChunk]:
        """The records as chunks; each label is due 0.5–1.5 × ``label_delay_s`` after its event."""
        delay = (label_delay_s * 1000 * (0.5 + hash01(SALT_LABEL, self.lines))).astype(np.int64)
        for lo in range(0, len(self), size):
            sl = slice(lo, lo + size)
            labelled = self.is_fraud is not None
            yield ReplayChunk(
                self.records(sl),
                self.event_ms[sl],
                (self.event_ms[sl] + delay[sl]) if labelled else None,
                self.is_fraud[sl] if self.is_fraud is not None else None,
                self.has_label[sl] if self.has_label is not None else None,
                self.scenario[sl] if self.scenario is not None else None,
            )


def _datetimes(event_ms: np.ndarray) -> list[datetime]:
    return list(pd.to_datetime(event_ms, unit="ms", utc=True).to_pydatetime())


# ---------------------------------------------------------------------------------------------
# reading


def _header(path: Path, parquet: bool) -> list[str]:
    if parquet:
        return list(pq.read_schema(path).names)
    with path.open(newline="", encoding="utf-8-sig") as fh:
        try:
            return [h.strip() for h in next(csv.reader(fh))]
        except StopIteration:
            raise ReplayError(f"{path}: empty file (no header line)") from None


def _read_csv(path: Path, wanted: list[str]) -> tuple[dict[str, pd.Series], np.ndarray, int, list[RowError]]:
    """The wanted columns as strings, the start line of every row, blank lines, ragged rows."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.reader(fh)
        try:
            header = next(reader)
        except StopIteration:
            raise ReplayError(f"{path}: empty file (no header line)") from None
        header = [h.strip() for h in header]
        _check_columns(path, header, wanted)
        index = [header.index(c) for c in wanted]
        width = len(header)
        columns: list[list[str]] = [[] for _ in wanted]
        lines: list[int] = []
        errors: list[RowError] = []
        blank = 0
        previous = reader.line_num
        for row in reader:
            start, previous = previous + 1, reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                blank += 1
                continue
            if len(row) != width:
                errors.append(RowError(start, f"row has {len(row)} fields, the header has {width}"))
                continue
            lines.append(start)
            for out, i in zip(columns, index, strict=True):
                out.append(row[i])
    series = {c: pd.Series(v, dtype=object) for c, v in zip(wanted, columns, strict=True)}
    return series, np.asarray(lines, dtype=np.int64), blank, errors


def _read_parquet(path: Path, wanted: list[str]) -> tuple[dict[str, pd.Series], np.ndarray]:
    schema = pq.read_schema(path)
    _check_columns(path, list(schema.names), wanted)
    table = pq.read_table(path, columns=wanted)
    series = {c: table.column(c).to_pandas() for c in wanted}
    return series, np.arange(1, table.num_rows + 1, dtype=np.int64)


def _check_columns(path: Path, available: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in available]
    if missing:
        raise ReplayError(
            f"{path}: no column(s) {', '.join(map(repr, missing))} (columns: {', '.join(available)})"
        )


# ---------------------------------------------------------------------------------------------
# converting columns; each returns values plus a per-row error message ("" = fine)


def _blank(s: pd.Series) -> np.ndarray:
    if not (pd.api.types.is_object_dtype(s) or pd.api.types.is_string_dtype(s)):
        return np.asarray(s.isna())  # numbers, datetimes: only missing values are blank
    return np.asarray(s.isna() | (s.astype("string").str.strip() == ""))


def _strings(s: pd.Series) -> list[str | None]:
    """Stripped strings, None for missing/blank cells; integral floats lose their ``.0``."""
    if pd.api.types.is_float_dtype(s):  # 123.0 → "123" (ids read from a float column)
        return [None if math.isnan(v) else (str(int(v)) if v.is_integer() else str(v)) for v in s.tolist()]
    text = s.astype("string").str.strip()
    text = text.mask(text == "")
    return list(text.astype(object).where(text.notna(), None))


def _numbers(s: pd.Series, name: str, required: bool) -> tuple[np.ndarray, list[str]]:
    values = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    blank = _blank(s)
    bad = np.isnan(values) & ~blank
    raw = s.tolist()
    return values, [
        f"{name} {raw[i]!r} is not a number" if b else (f"{name} is empty" if e and required else "")
        for i, (b, e) in enumerate(zip(bad.tolist(), blank.tolist(), strict=True))
    ]


def _times(s: pd.Series, name: str, unit: TimeUnit, origin: datetime | None) -> tuple[np.ndarray, list[str]]:
    """Epoch ms per row (NaN-free; invalid rows get 0 and a message)."""
    blank = _blank(s)
    origin_ms = int(origin.timestamp() * 1000) if origin is not None else 0
    if pd.api.types.is_datetime64_any_dtype(s):
        ts = pd.to_datetime(s, utc=True)
        unit = "iso"
    elif unit == "iso" or (unit == "auto" and not _mostly_numeric(s, blank)):
        ts = pd.to_datetime(s.where(~blank), utc=True, errors="coerce", format="ISO8601")
        unit = "iso"
    if unit == "iso":
        ok = np.asarray(ts.notna())
        since = (ts - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(milliseconds=1)
        ms = np.asarray(since.fillna(0).astype(np.int64))
        what = "an ISO-8601 date/time"
    else:
        values = pd.to_numeric(s, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        if unit == "auto":
            unit = _guess_unit(values, name, origin)
        ok = np.isfinite(values)
        ms = origin_ms + np.round(np.where(ok, values, 0) * _UNIT_MS[unit]).astype(np.int64)
        what = f"a number of {unit}"
    raw = s.tolist()
    reasons = [
        "" if good else (f"{name} is empty" if empty else f"{name} {raw[i]!r} is not {what}")
        for i, (good, empty) in enumerate(zip(ok.tolist(), blank.tolist(), strict=True))
    ]
    return ms, reasons


def _mostly_numeric(s: pd.Series, blank: np.ndarray) -> bool:
    if pd.api.types.is_numeric_dtype(s):
        return True
    values = pd.to_numeric(s.where(~blank), errors="coerce")
    filled = int((~blank).sum())
    return filled > 0 and int(values.notna().sum()) >= 0.9 * filled


def _guess_unit(values: np.ndarray, name: str, origin: datetime | None) -> Literal["s", "ms", "us"]:
    finite = np.abs(values[np.isfinite(values)])
    typical = float(np.median(finite)) if len(finite) else 0.0
    if typical >= 1e14:
        return "us"
    if typical >= 1e11:
        return "ms"
    if typical >= 1e8 or origin is not None:
        return "s"
    raise ReplayError(
        f"{name} holds small numbers (median {typical:g}): offsets rather than epoch times? "
        "Give --time-origin (e.g. 2026-01-01T00:00:00Z) and --time-unit (s, ms, us or h)"
    )


def _labels(s: pd.Series, name: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(is_fraud, has_label, reasons): empty cells are unlabelled, not errors."""
    text = [str(v).strip().lower() if v is not None and not (isinstance(v, float) and math.isnan(v)) else ""
            for v in s.tolist()]  # fmt: skip
    fraud = np.array([t in _TRUE for t in text], dtype=bool)
    has = np.array([t != "" for t in text], dtype=bool)
    reasons = [
        f"{name} {t!r} is not a 0/1 (true/false, yes/no) label"
        if t and t not in _TRUE and t not in _FALSE
        else ""
        for t in text
    ]
    return fraud, has, reasons


# ---------------------------------------------------------------------------------------------


class _Reasons:
    """What is wrong with each row (empty list = nothing)."""

    def __init__(self, n: int) -> None:
        self.rows: list[list[str]] = [[] for _ in range(n)]

    def note(self, messages: list[str]) -> None:
        for i, m in enumerate(messages):
            if m:
                self.rows[i].append(m)

    def good(self) -> np.ndarray:
        return np.array([not r for r in self.rows], dtype=bool)


def _map_values(
    path: Path, data: dict[str, pd.Series], mapping: FieldMap, lines: np.ndarray, reasons: _Reasons
) -> dict[str, Any]:
    """Every field except event_time as a column (list of str/None, or float array with NaN)."""
    n = len(lines)
    values: dict[str, Any] = {}
    for f in _STRINGS:
        if f in mapping.columns:
            col = _strings(data[mapping.columns[f]])
            if f in _UPPER:
                col = [v.upper() if v is not None else None for v in col]
            values[f] = col
            if f in REQUIRED:
                reasons.note(
                    [f"{f} is empty (column {mapping.columns[f]})" if v is None else "" for v in col]
                )
        elif f in mapping.constants:
            values[f] = [mapping.constants[f].upper() if f in _UPPER else mapping.constants[f]] * n
        elif f == "transaction_id":
            values[f] = [f"{path.stem}:{line}" for line in lines.tolist()]
        else:
            values[f] = [None] * n
    for f in ("amount", "lat", "lon"):
        if f in mapping.columns:
            nums, msgs = _numbers(data[mapping.columns[f]], f, required=f in REQUIRED)
            reasons.note(msgs)
            values[f] = nums
        elif f in mapping.constants:
            values[f] = np.full(n, _constant_number(f, mapping.constants[f]))
        else:
            values[f] = np.full(n, np.nan)
        # Python floats for Avro; a missing optional coordinate is null
        numbers = values[f].tolist()
        values[f] = numbers if f == "amount" else [None if math.isnan(v) else v for v in numbers]
    return values


def _validate(values: dict[str, Any], event_ms: np.ndarray, reasons: _Reasons, now_ms: int) -> np.ndarray:
    """Rows without problems that also pass the consumer's own validation (others get a reason)."""
    rows = np.flatnonzero(reasons.good())
    times = _datetimes(event_ms[rows])
    kept: list[int] = []
    for j, i in enumerate(rows.tolist()):
        record = {f: values[f][i] for f in FIELDS if f != "event_time"}
        record["event_time"] = times[j]
        reason = validate(record, now_ms)
        if reason is None:
            kept.append(i)
        else:
            reasons.rows[i].append(reason)
    return np.asarray(kept, dtype=np.int64)


def load(
    path: Path,
    mapping: FieldMap,
    *,
    label_column: str | None = None,
    scenario_column: str | None = None,
    time_unit: TimeUnit = "auto",
    time_origin: datetime | None = None,
    start: datetime | None = None,
    now: datetime | None = None,
) -> ReplayData:
    """Read, map, parse and validate ``path`` (``.parquet``/``.pq`` = Parquet, else CSV).

    ``start`` shifts every event time so that the earliest is ``start``. Validation is the
    consumer's (:func:`features.validation.validate` against ``now``), so a replayed row that
    passes here is never dead-lettered downstream.
    """
    if not path.is_file():
        raise ReplayError(f"{path}: no such file")
    if scenario_column and not label_column:
        raise ReplayError("--scenario-column needs --label-column")
    parquet = path.suffix.lower() in {".parquet", ".pq"}
    mapping = mapping.resolve(_header(path, parquet))
    wanted = list(
        dict.fromkeys([*mapping.columns.values(), *(c for c in (label_column, scenario_column) if c)])
    )
    errors: list[RowError] = []
    blank = 0
    if parquet:
        data, lines = _read_parquet(path, wanted)
    else:
        data, lines, blank, errors = _read_csv(path, wanted)
    ragged, n = len(errors), len(lines)
    reasons = _Reasons(n)
    values = _map_values(path, data, mapping, lines, reasons)
    if "event_time" in mapping.columns:
        event_ms, msgs = _times(data[mapping.columns["event_time"]], "event_time", time_unit, time_origin)
        reasons.note(msgs)
    else:
        event_ms = np.full(n, _constant_time(mapping.constants["event_time"]), dtype=np.int64)
    is_fraud = has_label = None
    scenario: list[str | None] | None = None
    if label_column:
        is_fraud, has_label, msgs = _labels(data[label_column], label_column)
        reasons.note(msgs)
        scenario = _strings(data[scenario_column]) if scenario_column else [None] * n
    good = reasons.good()
    if start is not None and good.any():
        event_ms = event_ms + (int(start.timestamp() * 1000) - int(event_ms[good].min()))

    idx = _validate(values, event_ms, reasons, int((now or datetime.now(UTC)).timestamp() * 1000))
    errors.extend(RowError(int(lines[i]), "; ".join(r)) for i, r in enumerate(reasons.rows) if r)
    errors.sort(key=lambda e: e.line)
    idx = idx[np.argsort(event_ms[idx], kind="stable")]
    order = idx.tolist()
    return ReplayData(
        path=path,
        rows_read=n + ragged,
        columns={f: [values[f][i] for i in order] for f in FIELDS if f != "event_time"},
        event_ms=event_ms[idx],
        lines=lines[idx],
        errors=errors,
        is_fraud=is_fraud[idx] if is_fraud is not None else None,
        has_label=has_label[idx] if has_label is not None else None,
        scenario=[scenario[i] for i in order] if scenario is not None else None,
        blank_lines=blank,
    )


def _constant_number(name: str, value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise ReplayError(f"--set {name}={value!r} is not a number") from None


def _constant_time(value: str) -> int:
    try:
        t = pd.Timestamp(value)
    except ValueError:
        raise ReplayError(f"--set event_time={value!r} is not an ISO-8601 date/time") from None
    if t.tzinfo is None:
        t = t.tz_localize("UTC")
    return int(t.timestamp() * 1000)


def write_errors(errors: list[RowError], path: Path) -> None:
    """All row errors as CSV (line, reason)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["line", "reason"])
        w.writerows((e.line, e.reason) for e in errors)
