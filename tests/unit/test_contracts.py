"""The shapes that cross rooms: row types match the tables' column tuples, and the stream's
decision JSON built in parts parses back to what GET /predict answers."""

from __future__ import annotations

import json
import math

import pytest

from core import contracts
from core.db import migration_files


def test_column_tuples_are_the_row_types_fields_and_exist_in_the_schema() -> None:
    schema = "\n".join(p.read_text() for p in migration_files())
    for table, columns in (("transactions", contracts.TX_COLUMNS), ("decisions", contracts.DECISION_COLUMNS),
                           ("labels", contracts.LABEL_COLUMNS)):  # fmt: skip
        assert f"{table}" in schema
        for column in columns:
            assert column in schema, f"{table}.{column} is in no migration"
    assert contracts.DecisionRow._fields == contracts.DECISION_COLUMNS


def test_decision_json_is_the_documented_object() -> None:
    tail = contracts.decision_tail(0.5, "ensemble-3", {"if": "1", "xgb": "2", "ensemble": "3"})
    text = contracts.decision_json(0.75, True, json.dumps({"if": 0.4, "xgb": 0.9}), tail)
    assert json.loads(text) == {
        "anomaly_score": 0.75, "is_fraud": True, "model_scores": {"if": 0.4, "xgb": 0.9},
        "threshold": 0.5, "model_version": "ensemble-3",
        "model_versions": {"if": "1", "xgb": "2", "ensemble": "3"},
    }  # fmt: skip
    assert contracts.parse_decision(text) == json.loads(text)


@pytest.mark.parametrize("score", [math.inf, -math.inf, math.nan])
def test_decision_json_with_a_non_finite_score_is_still_parseable(score: float) -> None:
    text = contracts.decision_json(score, False, "{}", contracts.decision_tail(0.1, "v", {}))
    parsed = contracts.parse_decision(text)
    assert parsed is not None and parsed["is_fraud"] is False


@pytest.mark.parametrize("junk", [b"", b"[1, 2]", b"not json", b'"a string"'])
def test_a_junk_entry_parses_to_none(junk: bytes) -> None:
    assert contracts.parse_decision(junk) is None
