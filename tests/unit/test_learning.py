"""The learning loop's decisions without data: when a round is due, and the promotion guard."""

from __future__ import annotations

from core.settings import LearnSettings
from training.learning import due, guard

POLICY = LearnSettings(every_labels=100, every_minutes=30, margin=0.02, min_recent_frauds=20)


def test_a_round_is_due_on_labels_schedule_or_drift() -> None:
    assert due(0, 0.0, False, POLICY) == ""
    assert due(99, 29.0, False, POLICY) == ""
    assert due(100, 0.0, False, POLICY) == "labels:100"
    assert due(1, 31.0, False, POLICY) == "schedule:31min"
    assert due(0, 120.0, False, POLICY) == ""  # nothing new to learn from
    assert due(0, 0.0, True, POLICY) == "drift"


def test_guard_promotes_only_a_clear_win_with_enough_frauds() -> None:
    assert guard(0.50, 0.60, 19, POLICY)[0] == "refused"  # too few labels, however good
    assert "too few labels" in guard(0.50, 0.60, 19, POLICY)[1]
    assert guard(0.50, 0.49, 50, POLICY)[0] == "refused"  # a regression
    assert "regression" in guard(0.50, 0.49, 50, POLICY)[1]
    assert guard(0.50, 0.51, 50, POLICY)[0] == "candidate"  # better, but within the margin
    assert guard(0.50, 0.53, 50, POLICY)[0] == "promoted"
    assert guard(None, 0.10, 50, POLICY)[0] == "promoted"  # nothing in production yet
