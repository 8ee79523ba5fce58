"""The learning loop's decisions without data: when a round is due, the promotion guard, and
where its rolling window ends (the newest labelled transaction, replayed data included)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.settings import LearnSettings, Settings
from training import learning
from training.data import DataError
from training.learning import due, guard, window_bounds, window_end

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


# -- where the rolling window ends (#23: replayed and back-filled data) ---------------------------
class _Cursor:
    """Answers the newest-labelled-transaction query with ``answers`` in turn; records params."""

    def __init__(self, *answers: datetime | None) -> None:
        self.answers = list(answers)
        self.params: list[dict[str, Any]] = []

    def execute(self, sql: str, params: dict[str, Any]) -> None:
        assert "received_at" in sql and "max(t.event_time)" in sql
        self.params.append(params)

    def fetchone(self) -> tuple[datetime | None]:
        return (self.answers.pop(0),)


REPLAYED = datetime(2018, 3, 9, 17, 4, 5, tzinfo=UTC)  # a replayed data set's newest labelled tx
LAST_ROUND = datetime(2026, 12, 4, 18, 0, tzinfo=UTC)  # wall-clock time of the previous round


def test_the_window_ends_at_the_newest_labelled_transaction_of_the_new_labels() -> None:
    cur = _Cursor(REPLAYED)
    end = window_end(cur, since=LAST_ROUND, id_prefix="tw1-")
    assert end == REPLAYED + timedelta(microseconds=1)  # exclusive end: the newest row is in
    assert cur.params == [{"since": LAST_ROUND, "prefix": "tw1-"}]
    start, stop = window_bounds(end, POLICY)
    assert stop - start == timedelta(days=POLICY.window_days) and start.year == 2018


def test_without_new_labels_the_window_ends_at_the_newest_labelled_transaction_of_all() -> None:
    cur = _Cursor(None, REPLAYED)  # a drift or a manual round: nothing received since
    assert window_end(cur, since=LAST_ROUND) == REPLAYED + timedelta(microseconds=1)
    assert [p["since"] for p in cur.params] == [LAST_ROUND, None]
    cur = _Cursor(REPLAYED)
    assert window_end(cur) == REPLAYED + timedelta(microseconds=1)
    assert cur.params == [{"since": None, "prefix": None}]


def test_no_labelled_transaction_at_all_is_too_little_data() -> None:
    with pytest.raises(DataError, match="no labelled transaction"):
        window_end(_Cursor(None, None), since=LAST_ROUND)


def test_the_loop_counts_labels_by_arrival_and_anchors_each_round_at_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """run_loop: labels received since the last round (database clock) make a round due, and the
    round gets that round's start as ``labels_since`` (its window follows those labels)."""
    clock = [LAST_ROUND + timedelta(minutes=m) for m in (0, 1, 2, 3)]
    counts = iter([(3, clock[1]), (150, clock[2]), (0, clock[3])])
    seen: list[datetime] = []
    rounds: list[datetime | None] = []
    monkeypatch.setattr(learning, "database_now", lambda settings: clock[0])

    def new_labels_since(settings: Any, since: datetime) -> tuple[int, datetime]:
        seen.append(since)
        return next(counts)

    def learn_once(settings: Any, **kw: Any) -> learning.Decision:
        rounds.append(kw["labels_since"])
        return learning.Decision("candidate", "", trigger=kw["trigger"])

    monkeypatch.setattr(learning, "new_labels_since", new_labels_since)
    monkeypatch.setattr(learning, "learn_once", learn_once)
    settings = Settings().model_copy(update={"learn": POLICY})
    checks: list[tuple[int, str]] = []
    learning.run_loop(settings, stop=lambda: len(checks) >= 3, sleep=lambda s: None,
                      on_check=lambda n, t: checks.append((n, t)))  # fmt: skip
    assert checks == [(3, ""), (150, "labels:150"), (0, "")]
    assert rounds == [clock[0]]  # the round learns where the labels received since clock[0] are
    assert seen == [clock[0], clock[0], clock[2]]  # after the round: counted from its check
