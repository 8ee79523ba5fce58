"""Late fraud labels: the JSON records of the ``labels`` topic, the queue that holds each
label back until the stream's event time reaches its due time, and their Kafka producer.

A label on Kafka (key = ``transaction_id``, value UTF-8 JSON)::

    {"transaction_id": "…", "is_fraud": true, "scenario": "card_testing",
     "labelled_at": "2026-03-04T10:15:00.123Z"}

``labelled_at`` is ISO-8601 in UTC with milliseconds and a ``Z`` (it maps straight onto the
``labels.labelled_at timestamptz`` column); ``scenario`` is null for genuine transactions and
for replayed data without a scenario column. Labels never travel inside a transaction record.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np

from core.settings import Settings
from ingest.producer import TopicProducer

LabelMode = Literal["all", "fraud", "none"]
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SEAL_ROWS = 4096


def iso_ms(epoch_ms: int) -> str:
    """``2026-03-04T10:15:00.123Z`` for an epoch-milliseconds instant."""
    return (
        (_EPOCH + timedelta(milliseconds=epoch_ms)).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@dataclass(frozen=True, slots=True)
class Label:
    transaction_id: str
    is_fraud: bool
    scenario: str | None
    labelled_at_ms: int

    def as_dict(self) -> dict[str, Any]:
        """The shape :meth:`features.online.OnlineStore.apply_labels` takes."""
        return {
            "transaction_id": self.transaction_id,
            "is_fraud": self.is_fraud,
            "labelled_at": self.labelled_at_ms,
        }

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "transaction_id": self.transaction_id,
                "is_fraud": self.is_fraud,
                "scenario": self.scenario,
                "labelled_at": iso_ms(self.labelled_at_ms),
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def from_json(cls, value: bytes | str) -> Label:
        raw: dict[str, Any] = json.loads(value)
        at = datetime.fromisoformat(raw["labelled_at"].replace("Z", "+00:00"))
        return cls(
            raw["transaction_id"], bool(raw["is_fraud"]), raw["scenario"], round(at.timestamp() * 1000)
        )


MAX_ID_LEN = 128
_MIN_MS = 946_684_800_000  # 2000-01-01
_DAY_MS = 86_400_000


class LabelError(ValueError):
    """A record on the labels topic that is not a label (the reason goes to the DLQ)."""


def parse_label(value: bytes | None, now_ms: int) -> Label:
    """A label from the topic, strictly: every field present and of its type, an id without
    control characters, ``labelled_at`` an ISO-8601 instant with a zone in [2000, now + 1 day]."""
    try:
        raw = json.loads(value or b"")
    except (ValueError, UnicodeDecodeError) as exc:
        raise LabelError(f"not JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise LabelError(f"expected a JSON object, got {type(raw).__name__}")
    missing = {"transaction_id", "is_fraud", "labelled_at"} - raw.keys()
    if missing:
        raise LabelError(f"missing field(s): {', '.join(sorted(missing))}")
    tx, fraud, scenario, at = raw["transaction_id"], raw["is_fraud"], raw.get("scenario"), raw["labelled_at"]
    if not isinstance(tx, str) or not 0 < len(tx) <= MAX_ID_LEN or any(ord(c) < 32 for c in tx):
        raise LabelError(f"transaction_id must be a string of 1..{MAX_ID_LEN} printable characters")
    if not isinstance(fraud, bool):
        raise LabelError(f"is_fraud must be true or false, got {fraud!r}")
    if scenario is not None and (not isinstance(scenario, str) or len(scenario) > MAX_ID_LEN):
        raise LabelError("scenario must be null or a short string")
    try:
        when = datetime.fromisoformat(str(at).replace("Z", "+00:00"))
    except ValueError:
        raise LabelError(f"labelled_at {at!r} is not an ISO-8601 instant") from None
    if when.tzinfo is None:
        raise LabelError(f"labelled_at {at!r} has no time zone")
    ms = round(when.timestamp() * 1000)
    if not _MIN_MS <= ms <= now_ms + _DAY_MS:
        raise LabelError(f"labelled_at {at!r} is outside [2000-01-01, now + 1 day]")
    return Label(tx, fraud, scenario, ms)


_ascii = json.encoder.encode_basestring_ascii  # what json.dumps uses


def encode_labels(labels: list[Label]) -> list[bytes]:
    """``[label.to_json() for label in labels]``, byte for byte, several times faster."""
    if not labels:
        return []
    at = np.datetime_as_string(
        np.array([x.labelled_at_ms for x in labels], dtype="datetime64[ms]"), unit="ms"
    )
    return [
        (
            f'{{"transaction_id":{_ascii(x.transaction_id)},"is_fraud":{"true" if x.is_fraud else "false"},'
            f'"scenario":{"null" if x.scenario is None else _ascii(x.scenario)},"labelled_at":"{t}Z"}}'
        ).encode()
        for x, t in zip(labels, at.tolist(), strict=True)
    ]


@dataclass
class _Chunk:
    due: np.ndarray  # sorted
    order: np.ndarray  # insertion number, breaks ties
    ids: np.ndarray  # object
    fraud: np.ndarray
    scenario: np.ndarray  # object
    pos: int = 0


class LabelQueue:
    """Labels waiting for their due time (event time of the transaction + its delay).

    ``mode``: ``all`` (a label for every transaction), ``fraud`` (only frauds, like chargebacks)
    or ``none``. Pending labels sit in chunks sorted by due time, so releasing the due ones costs
    a binary search per chunk.
    """

    def __init__(self, mode: LabelMode = "all") -> None:
        self.mode = mode
        self._chunks: list[_Chunk] = []
        self._stage: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
        self._stage_rows = 0
        self._stage_min = np.iinfo(np.int64).max
        self._added = 0

    def __len__(self) -> int:
        return self._stage_rows + sum(len(c.due) - c.pos for c in self._chunks)

    def add(
        self, ids: list[str], due_ms: np.ndarray, is_fraud: np.ndarray, scenario: list[str | None]
    ) -> None:
        if self.mode == "none" or not ids:
            return
        keep = np.ones(len(ids), bool) if self.mode == "all" else np.asarray(is_fraud, bool)
        if not keep.any():
            return
        self._stage.append(
            (
                np.asarray(due_ms, np.int64)[keep],
                np.asarray(ids, dtype=object)[keep],
                np.asarray(is_fraud, bool)[keep],
                np.asarray(scenario, dtype=object)[keep],
            )
        )
        self._stage_rows += int(keep.sum())
        self._stage_min = min(self._stage_min, int(self._stage[-1][0].min()))
        if self._stage_rows >= _SEAL_ROWS:
            self._seal()

    def _seal(self) -> None:
        if not self._stage:
            return
        due, ids, fraud, scen = (np.concatenate(parts) for parts in zip(*self._stage, strict=True))
        order = np.arange(self._added, self._added + len(due))
        self._added += len(due)
        s = np.argsort(due, kind="stable")
        self._chunks.append(_Chunk(due[s], order[s], ids[s], fraud[s], scen[s]))
        self._stage, self._stage_rows, self._stage_min = [], 0, np.iinfo(np.int64).max

    def pop_due(self, now_ms: int) -> list[Label]:
        """Labels due at or before ``now_ms`` (event time), by due time then insertion."""
        if self._stage and self._stage_min <= now_ms:
            self._seal()
        parts = []
        for c in self._chunks:
            if c.pos < len(c.due) and c.due[c.pos] <= now_ms:
                end = int(np.searchsorted(c.due, now_ms, side="right"))
                parts.append(
                    (
                        c.due[c.pos : end],
                        c.order[c.pos : end],
                        c.ids[c.pos : end],
                        c.fraud[c.pos : end],
                        c.scenario[c.pos : end],
                    )
                )
                c.pos = end
        self._chunks = [c for c in self._chunks if c.pos < len(c.due)]
        if not parts:
            return []
        due, order, ids, fraud, scen = (np.concatenate(p) for p in zip(*parts, strict=True))
        s = np.lexsort((order, due))
        return [
            Label(i, f, sc, d)
            for i, f, sc, d in zip(
                ids[s].tolist(), fraud[s].tolist(), scen[s].tolist(), due[s].tolist(), strict=True
            )
        ]

    def drain(self) -> list[Label]:
        """Every pending label, due or not (a bounded run ends by delivering them)."""
        return self.pop_due(np.iinfo(np.int64).max)


class LabelProducer(TopicProducer):
    """Sends :class:`Label` records as JSON to the ``labels`` topic, key = transaction id."""

    what = "labels"

    def __init__(self, settings: Settings, topic: str | None = None) -> None:
        super().__init__(settings, topic or settings.kafka.labels_topic)

    def send_many(self, labels: list[Label]) -> int:
        for i, (label, value) in enumerate(zip(labels, encode_labels(labels), strict=True), 1):
            self._produce(label.transaction_id, value)
            if i % 1000 == 0:
                self._producer.poll(0)
        self._producer.poll(0)
        self.sent += len(labels)
        return len(labels)
