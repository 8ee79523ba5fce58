"""The shapes that cross rooms: row types match the tables' column tuples, and the stream's
decision JSON built in parts parses back to what GET /predict answers."""

from __future__ import annotations

import json
import math

import numpy as np
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


def _model_scores() -> dict[str, np.ndarray]:
    return {
        "IsolationForest": np.array([0.1, -0.5, math.nan, 1e-300], dtype=np.float64),
        "XGBoost": np.array([0.3, 1.0, math.inf, -math.inf], dtype=np.float32),  # float32 as sent
        'odd "name" 100%': np.array([1e20, 0.0, -0.0, 2.5], dtype=np.float32),
    }


@pytest.mark.parametrize("compact", [False, True])
def test_model_scores_jsons_are_json_dumps_of_each_rows_dict(compact: bool) -> None:
    scores = _model_scores()
    separators = (",", ":") if compact else (", ", ": ")  # json.dumps's default is the latter
    expected = [
        json.dumps({k: float(v[i]) for k, v in scores.items()}, separators=separators) for i in range(4)
    ]
    assert contracts.model_scores_jsons(scores, 4)[int(compact)] == expected
    assert contracts.model_scores_jsons({}, 3) == (["{}"] * 3, ["{}"] * 3)
    assert contracts.model_scores_jsons({k: v[:0] for k, v in scores.items()}, 0) == ([], [])


def test_decision_messages_are_the_compact_json_of_each_decision() -> None:
    scores = _model_scores()
    tx = ["t-1", 'q"uote', "back\\slash", "ünï\u2028code"]
    users = ["u-1", "u-2", "\x7f\x00ctl", "u-4"]
    final = np.array([0.25, math.nan, 0.999, 1.0], dtype=np.float32)
    flags = np.array([False, True, True, False])
    got = contracts.decision_messages(
        tx,
        users,
        final,
        flags,
        model_version='ens-"7"',
        model_scores=contracts.model_scores_jsons(scores, 4)[1],
    )
    expected = [
        json.dumps(
            {"transaction_id": tx[i], "user_id": users[i], "score": float(final[i]),
             "is_fraud": bool(flags[i]), "model_version": 'ens-"7"',
             "scores": {k: float(v[i]) for k, v in scores.items()}},
            separators=(",", ":"),
        ).encode()
        for i in range(4)
    ]  # fmt: skip
    assert got == expected
