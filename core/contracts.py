"""The shapes that cross room boundaries: PostgreSQL rows (one column tuple each, a typed row),
the scorer's reply, and the stream's decision as /predict serves it (one JSON shape, built here
and parsed here)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from json.encoder import encode_basestring_ascii
from typing import Any, NamedTuple, NotRequired, TypedDict

import numpy as np


class TxRow(NamedTuple):
    """A ``transactions`` row (COPY column order)."""

    transaction_id: str
    user_id: str
    merchant_id: str
    amount: float
    currency: str
    event_time: Any  # datetime (Avro timestamp-millis)
    country: str
    device_id: str | None
    channel: str | None
    merchant_category: str | None
    lat: float | None
    lon: float | None
    ip: str | None
    kafka_partition: int
    kafka_offset: int


class DecisionRow(NamedTuple):
    """A ``decisions`` row (COPY column order); ``scores`` is the per-model scores' JSON."""

    transaction_id: str
    user_id: str
    scores: str
    ensemble_score: float
    is_fraud: bool
    model_version: str
    latency_ms: float  # pipeline latency: decision time minus the record's Kafka timestamp
    event_latency_ms: float | None  # decision time minus event time; NULL (None/NaN) unless live
    # The shadow challenger's ensemble score of the same feature row, and its version (#23): set
    # only while the learning loop has a challenger installed in the scorer; never deciding.
    shadow_score: float | None = None
    shadow_version: str | None = None


class LabelRow(NamedTuple):
    """A ``labels`` row (COPY column order)."""

    transaction_id: str
    is_fraud: bool
    scenario: str | None
    labelled_at: Any  # datetime


TX_COLUMNS: tuple[str, ...] = TxRow._fields
DECISION_COLUMNS: tuple[str, ...] = DecisionRow._fields
LABEL_COLUMNS: tuple[str, ...] = LabelRow._fields


class ScoreResult(TypedDict):
    """The Ensemble deployment's reply to ``score(matrix)``: one entry per row in each array."""

    scores: np.ndarray  # the decision score (ensemble probability, or the IF score without one)
    is_fraud: np.ndarray
    threshold: float
    model_version: str  # the version that decided (ensemble, or the IF without one)
    model_scores: dict[str, np.ndarray]  # family -> each member's raw score
    model_versions: dict[str, str]  # family (and "ensemble" when stacked) -> version
    # Only while a shadow challenger is installed (serve_deployments/app.py, #23): its ensemble
    # score of every row (never deciding) and its ensemble version. Absent otherwise, or when
    # the challenger failed on this call (the decision never waits on or fails for it).
    shadow_scores: NotRequired[np.ndarray]
    shadow_version: NotRequired[str]


# -- the stream's decision, as GET /predict answers it --------------------------------------------
# {"anomaly_score", "is_fraud", "model_scores", "threshold", "model_version", "model_versions"}
# The consumer builds one per user and batch, so the parts shared by the batch are encoded once.


def _json_float(x: float) -> str:
    """``json.dumps(x)`` for a float, faster: JSON writes finite floats as their repr."""
    return repr(x) if math.isfinite(x) else json.dumps(x)


def decision_tail(threshold: float, model_version: str, model_versions: dict[str, str]) -> str:
    """The part of every decision of one batch that the batch shares (ends the JSON object)."""
    shared = {"threshold": float(threshold), "model_version": model_version, "model_versions": model_versions}
    return json.dumps(shared)[1:]


def decision_json(score: float, is_fraud: bool, model_scores_json: str, tail: str) -> str:
    """One decision's JSON from its own parts and its batch's ``decision_tail``."""
    flag = "true" if is_fraud else "false"
    return (
        f'{{"anomaly_score": {_json_float(score)}, "is_fraud": {flag}, '
        f'"model_scores": {model_scores_json}, {tail}'
    )


def parse_decision(text: str | bytes) -> dict[str, Any] | None:
    """A stored decision, or None when the entry is not a JSON object (a junk entry is scored)."""
    try:
        parsed = json.loads(text)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


# -- a batch's decisions as JSON, without a json.dumps per row ------------------------------------
# The consumer writes every decision as JSON twice (the per-model scores in PostgreSQL, the
# decisions topic's message); one json.dumps of a dict per row was ~14 % of an actor's CPU.


def json_floats(values: np.ndarray) -> list[str]:
    """Each value as ``json.dumps(float(value))`` writes it."""
    out = [repr(x) for x in np.asarray(values, dtype=np.float64).tolist()]
    for i in np.flatnonzero(~np.isfinite(values)).tolist():
        out[i] = _json_float(float(values[i]))
    return out


def model_scores_jsons(model_scores: dict[str, np.ndarray], rows: int) -> tuple[list[str], list[str]]:
    """Per row, ``json.dumps({family: float(score)})`` twice: with json.dumps's default separators
    (PostgreSQL's decisions.scores, /predict's copy) and compact, ``separators=(",", ":")`` (the
    decisions topic); the floats are formatted once for both."""
    texts = [json_floats(v) for v in model_scores.values()]
    spaced = _rows_json(model_scores, texts, rows, compact=False)
    return spaced, _rows_json(model_scores, texts, rows, compact=True)


def _rows_json(
    model_scores: dict[str, np.ndarray], texts: list[list[str]], rows: int, *, compact: bool
) -> list[str]:
    if not model_scores:
        return ["{}"] * rows
    item_sep, key_sep = (",", ":") if compact else (", ", ": ")
    fields = (json.dumps(k).replace("%", "%%") + key_sep + "%s" for k in model_scores)
    template = "{" + item_sep.join(fields) + "}"
    return [template % row for row in zip(*texts, strict=True)]


def decision_messages(
    transaction_ids: Sequence[str],
    user_ids: Sequence[str],
    scores: np.ndarray,
    is_fraud: np.ndarray,
    *,
    model_version: str,
    model_scores: Sequence[str],
) -> list[bytes]:
    """Per row, the decisions (and alerts) topic's message: ``json.dumps({"transaction_id",
    "user_id", "score", "is_fraud", "model_version", "scores"}, separators=(",", ":"))``, encoded;
    ``model_scores``: the compact half of ``model_scores_jsons``."""
    version = encode_basestring_ascii(model_version)
    rows = zip(transaction_ids, user_ids, json_floats(scores), is_fraud.tolist(), model_scores, strict=True)
    return [
        (
            f'{{"transaction_id":{encode_basestring_ascii(t)},"user_id":{encode_basestring_ascii(u)},'
            f'"score":{s},"is_fraud":{"true" if f else "false"},"model_version":{version},"scores":{m}}}'
        ).encode()
        for t, u, s, f, m in rows
    ]
