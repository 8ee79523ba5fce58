"""Explicit backtest windows (``fraudray train --train/--val/--test START:END``): parsing,
time order, gaps left out, and the windows recorded on the split."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from training.data import DataError, backtest_windows, parse_window, split_by_windows, windows_span


def frame(days: int = 10) -> pd.DataFrame:
    n = days * 24
    rng = np.random.default_rng(0)
    out = pd.DataFrame({"f0": rng.normal(size=n), "f1": rng.normal(size=n)})
    out["is_fraud"] = (np.arange(n) % 10 == 0).astype(np.int8)
    out["event_time"] = pd.date_range("2026-01-01", periods=n, freq="h", tz="UTC")
    return out


def test_parse_window_dates_times_and_open_ends() -> None:
    assert parse_window("2026-01-05:2026-01-09") == (
        datetime(2026, 1, 5, tzinfo=UTC),
        datetime(2026, 1, 9, tzinfo=UTC),
    )
    assert parse_window("2026-01-05T06:00:2026-01-09T12:30") == (
        datetime(2026, 1, 5, 6, tzinfo=UTC), datetime(2026, 1, 9, 12, 30, tzinfo=UTC))  # fmt: skip
    assert parse_window(":2026-01-02") == (None, datetime(2026, 1, 2, tzinfo=UTC))
    assert parse_window("2026-01-02..") == (datetime(2026, 1, 2, tzinfo=UTC), None)
    with pytest.raises(DataError, match="START:END"):
        parse_window("last week")
    with pytest.raises(DataError, match="before the end"):
        parse_window("2026-01-09:2026-01-05")


def test_split_by_windows_keeps_the_windows_and_leaves_gaps_out() -> None:
    given = {
        "train": "2026-01-01:2026-01-05",
        "val": "2026-01-06:2026-01-08",
        "test": "2026-01-09:2026-01-10",
    }
    w = {k: parse_window(v) for k, v in given.items()}
    split = split_by_windows(frame(), None, **w)
    assert split.feature_names == ["f0", "f1"]
    assert split.sizes() == {"train": 4 * 24, "val": 2 * 24, "test": 24}  # the gap days are in no part
    window = split.window()
    assert window["train"][0].startswith("2026-01-01") and window["val"] == [
        "2026-01-06 00:00:00+00:00", "2026-01-08 00:00:00+00:00"]  # fmt: skip
    assert window["test"][1].startswith("2026-01-10")
    span = (datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 10, tzinfo=UTC))
    assert windows_span(w, None, None) == span
    assert backtest_windows("2026-01-01:2026-01-05", "2026-01-06:2026-01-08", "2026-01-09:2026-01-10") == w
    assert backtest_windows(None, None, None) is None
    with pytest.raises(DataError, match="go together"):
        backtest_windows("2026-01-01:2026-01-05", None, None)


def test_split_by_windows_refuses_overlap_and_empty_windows() -> None:
    with pytest.raises(DataError, match="--train must end at or before --val"):
        split_by_windows(frame(), None, train=parse_window("2026-01-01:2026-01-06"),
                         val=parse_window("2026-01-05:2026-01-08"),
                         test=parse_window("2026-01-08:2026-01-10"))  # fmt: skip
    with pytest.raises(DataError, match="no labelled rows in the --test window"):
        split_by_windows(frame(), None, train=parse_window("2026-01-01:2026-01-05"),
                         val=parse_window("2026-01-05:2026-01-08"),
                         test=parse_window("2027-01-01:2027-01-02"))  # fmt: skip
