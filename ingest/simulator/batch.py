"""Columnar transaction batches: numpy arrays while simulating, transaction dicts (the Avro
schema's fields) for Kafka, or an Arrow record batch (plus the label columns) for Parquet.

Both outputs come from the same columns, so the Kafka stream and ``--to-file`` hold the same
records.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pyarrow as pa

from ingest.simulator import world
from ingest.simulator.population import Population, hash64

GENUINE = 0
SCENARIOS: tuple[str, ...] = (
    "account_takeover",
    "card_testing",
    "compromised_merchant",
    "impossible_travel",
    "bust_out",
)
SCENARIO_CODE: dict[str, int] = {name: i + 1 for i, name in enumerate(SCENARIOS)}

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_CATEGORY = np.array(world.CATEGORY_NAMES, dtype=object)
_CURRENCY = np.array(world.CURRENCY_CODES, dtype=object)
_COUNTRY = np.array(world.COUNTRY_CODES, dtype=object)
_CHANNEL = np.array(world.CHANNELS, dtype=object)
_SCENARIO = np.array([None, *SCENARIOS], dtype=object)

ARROW_SCHEMA = pa.schema(
    [
        ("transaction_id", pa.string()),
        ("user_id", pa.string()),
        ("merchant_id", pa.string()),
        ("amount", pa.float64()),
        ("currency", pa.string()),
        ("event_time", pa.timestamp("ms", tz="UTC")),
        ("country", pa.string()),
        ("device_id", pa.string()),
        ("channel", pa.string()),
        ("merchant_category", pa.string()),
        ("lat", pa.float64()),
        ("lon", pa.float64()),
        ("ip", pa.string()),
        ("is_fraud", pa.bool_()),
        ("scenario", pa.string()),
    ]
)


@dataclass(frozen=True, eq=False)
class Columns:
    """Transactions as parallel arrays; nulls are -1 (integers) or NaN (floats)."""

    t: np.ndarray  # int64 event time, epoch ms
    user: np.ndarray  # int64 user number (synthetic bust-out accounts come after the population)
    merchant: np.ndarray  # int64
    amount: np.ndarray  # float64, in `currency`, rounded to its minor unit
    currency: np.ndarray  # int16 index of world.CURRENCY_CODES
    country: np.ndarray  # int16 index of world.COUNTRY_CODES: where the transaction happens
    device: np.ndarray  # int64 device number, -1 = none
    channel: np.ndarray  # int8 index of world.CHANNELS
    lat: np.ndarray  # float64, NaN = none
    lon: np.ndarray
    ip: np.ndarray  # int64 packed IPv4, -1 = none
    scenario: np.ndarray  # int8: 0 genuine, else 1 + index in SCENARIOS

    def __len__(self) -> int:
        return len(self.t)

    def take(self, index: np.ndarray | slice) -> Columns:
        return Columns(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    @staticmethod
    def concat(parts: Sequence[Columns]) -> Columns:
        parts = [p for p in parts if len(p)]
        if not parts:
            return EMPTY
        if len(parts) == 1:
            return parts[0]
        return Columns(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(Columns)}
        )


def _empty() -> Columns:
    i64, i16, i8, f64 = (np.empty(0, dtype=d) for d in (np.int64, np.int16, np.int8, np.float64))
    return Columns(i64, i64, i64, f64, i16, i16, i64, i8, f64, f64, i64, i8)


EMPTY = _empty()


def id_prefix(seed: int) -> str:
    """First 16 hex digits (UUID layout) of every transaction id of a seed's stream."""
    h = f"{int(hash64(seed, 0x7A)):016x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-"


def transaction_ids(prefix: str, seq: np.ndarray) -> list[str]:
    mask = (1 << 48) - 1
    return [f"{prefix}{s >> 48:04x}-{s & mask:012x}" for s in seq.tolist()]


def _ids(fmt: str, values: np.ndarray) -> list[str | None]:
    return [None if v < 0 else fmt.format(v) for v in values.tolist()]


def _ips(values: np.ndarray) -> list[str | None]:
    return [
        None if v < 0 else f"{v >> 24}.{(v >> 16) & 255}.{(v >> 8) & 255}.{v & 255}" for v in values.tolist()
    ]


def _floats(values: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else v for v in np.round(values, 5).tolist()]


@dataclass(frozen=True, eq=False)
class TxBatch:
    """A slice of the stream in event-time order: columns plus global sequence numbers."""

    cols: Columns
    seq: np.ndarray  # int64, position in the stream (drives the transaction id)
    population: Population
    prefix: str

    def __len__(self) -> int:
        return len(self.seq)

    def take(self, index: np.ndarray | slice) -> TxBatch:
        return TxBatch(self.cols.take(index), self.seq[index], self.population, self.prefix)

    @property
    def event_ms(self) -> np.ndarray:
        return self.cols.t

    @property
    def is_fraud(self) -> np.ndarray:
        return self.cols.scenario != GENUINE

    def transaction_ids(self) -> list[str]:
        return transaction_ids(self.prefix, self.seq)

    def scenarios(self) -> list[str | None]:
        return list(_SCENARIO[self.cols.scenario])

    def _string_columns(self) -> dict[str, list[Any]]:
        c = self.cols
        return {
            "transaction_id": self.transaction_ids(),
            "user_id": [f"u{u:07d}" for u in c.user.tolist()],
            "merchant_id": [f"m{m:06d}" for m in c.merchant.tolist()],
            "currency": list(_CURRENCY[c.currency]),
            "country": list(_COUNTRY[c.country]),
            "device_id": _ids("d{:010x}", c.device),
            "channel": list(_CHANNEL[c.channel]),
            "merchant_category": list(_CATEGORY[self.population.m_category[c.merchant]]),
            "ip": _ips(c.ip),
        }

    def records(self) -> list[dict[str, Any]]:
        """Transaction dicts with exactly the Avro schema's fields (no label)."""
        s = self._string_columns()
        c = self.cols
        times = [_EPOCH + timedelta(milliseconds=t) for t in c.t.tolist()]
        return [
            {
                "transaction_id": tx,
                "user_id": u,
                "merchant_id": m,
                "amount": a,
                "currency": cur,
                "event_time": t,
                "country": co,
                "device_id": d,
                "channel": ch,
                "merchant_category": cat,
                "lat": la,
                "lon": lo,
                "ip": ip,
            }
            for tx, u, m, a, cur, t, co, d, ch, cat, la, lo, ip in zip(
                s["transaction_id"],
                s["user_id"],
                s["merchant_id"],
                c.amount.tolist(),
                s["currency"],
                times,
                s["country"],
                s["device_id"],
                s["channel"],
                s["merchant_category"],
                _floats(c.lat),
                _floats(c.lon),
                s["ip"],
                strict=True,
            )
        ]

    def to_arrow(self) -> pa.RecordBatch:
        """The same records plus ``is_fraud`` and ``scenario``, as an Arrow record batch."""
        s = self._string_columns()
        c = self.cols
        lat, lon = np.round(c.lat, 5), np.round(c.lon, 5)
        arrays = {
            **s,
            "amount": pa.array(c.amount, pa.float64()),
            "event_time": pa.array(c.t, pa.timestamp("ms", tz="UTC")),
            "lat": pa.array(lat, pa.float64(), mask=np.isnan(lat)),
            "lon": pa.array(lon, pa.float64(), mask=np.isnan(lon)),
            "is_fraud": pa.array(self.is_fraud, pa.bool_()),
            "scenario": self.scenarios(),
        }
        columns = [
            x if isinstance(x := arrays[f.name], pa.Array) else pa.array(x, f.type) for f in ARROW_SCHEMA
        ]
        return pa.RecordBatch.from_arrays(columns, schema=ARROW_SCHEMA)
