"""Training data: point-in-time frames from the feature store (PostgreSQL), any labelled CSV
as a frame, and temporal splits of either.

Splits are by event time, never random across time: train on the earliest window,
validate (early stopping, ensemble stacking, threshold) on the next, test on the last. When
the data spans at least three days the cuts fall on day boundaries (UTC midnight), so
training covers whole earlier days and validation/test whole later ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from core import db
from core.errors import FraudrayError
from core.settings import Settings

LABEL = "is_fraud"
TIME = "event_time"
SCENARIO = "scenario"
NON_FEATURES = frozenset({LABEL, TIME, "transaction_id", SCENARIO, "user_id", "merchant_id"})
# Below these a split cannot train XGBoost, stack the ensemble or measure recall.
MIN_ROWS = 1000
MIN_FRAUD_PER_PART = 5


class DataError(FraudrayError):
    http_status = 422


@dataclass(frozen=True)
class Split:
    feature_names: list[str]
    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    boundaries: tuple[str, str]  # first val time, first test time
    span: tuple[str, str] = ("", "")  # first and last event time of the whole frame
    scenario_test: np.ndarray | None = None  # fraud scenario per test row (simulated data)
    # Explicit [start, end) windows (``split_by_windows``, gaps allowed) as ISO strings, else None.
    windows: dict[str, tuple[str, str]] | None = None

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}

    def window(self) -> dict[str, Any]:
        """The training window and the later validation/test windows (half-open, ISO times)."""
        first, last = self.span
        val_from, test_from = self.boundaries
        w = self.windows or {
            "train": (first, val_from),
            "val": (val_from, test_from),
            "test": (test_from, last),
        }
        return {
            "train": list(w["train"]), "val": list(w["val"]), "test": list(w["test"]),
            "rows": self.sizes(),
            "fraud": {"train": int(self.y_train.sum()), "val": int(self.y_val.sum()),
                      "test": int(self.y_test.sum())},
        }  # fmt: skip

    def require_fraud(self, minimum: int = MIN_FRAUD_PER_PART) -> None:
        """Raise a :class:`DataError` unless every part holds at least ``minimum`` frauds."""
        counts = self.window()["fraud"]
        short = {part: n for part, n in counts.items() if n < minimum}
        if short:
            raise DataError(
                f"too little labelled fraud to train and evaluate: {counts} fraud rows per "
                f"train/val/test window (at least {minimum} each needed); produce more labelled "
                "traffic (`fraudray produce` + `fraudray consume`), widen --start/--end, or pass --csv"
            )


def temporal_split(
    frame: pd.DataFrame, feature_names: list[str] | None = None, val: float = 0.2, test: float = 0.2
) -> Split:
    """Cut ``frame`` at the time quantiles so that train < val < test in event time."""
    if LABEL not in frame or TIME not in frame:
        raise DataError(f"the frame needs {LABEL!r} and {TIME!r} columns")
    names = feature_names or [c for c in frame.columns if c not in NON_FEATURES]
    frame = frame.sort_values(TIME, kind="stable")
    t = frame[TIME]
    t_val, t_test = _cuts(t, val, test)
    parts = (frame[t < t_val], frame[(t >= t_val) & (t < t_test)], frame[t >= t_test])
    if any(len(p) == 0 for p in parts):
        raise DataError(f"too few distinct event times to split {len(frame)} rows into train/val/test")

    def xy(p: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return p[names].to_numpy(dtype=np.float32), p[LABEL].to_numpy(dtype=np.int8)

    (a, b), (c, d), (e, f) = (xy(p) for p in parts)
    scen = parts[2][SCENARIO].to_numpy(dtype=object) if SCENARIO in frame else None
    span = (str(t.iloc[0]), str(t.iloc[-1]))
    return Split(names, a, b, c, d, e, f, (str(t_val), str(t_test)), span, scen)


Window = tuple[datetime | None, datetime | None]  # [start, end), UTC; None: open


def parse_window(text: str) -> Window:
    """``START:END`` (either side may be empty: open) as UTC times; ``..`` also separates.
    Times may hold colons themselves (``2026-01-05T06:00:2026-01-09``): the first cut where
    both sides parse wins."""
    if ".." in text:
        cuts = [text.split("..", 1)]
    else:
        cuts = [[text[:i], text[i + 1 :]] for i, ch in enumerate(text) if ch == ":"]
    for left, right in cuts:
        try:
            a, b = (_utc(x) for x in (left, right))
        except ValueError:
            continue
        if a is not None and b is not None and a >= b:
            raise DataError(f"window {text!r}: the start must come before the end")
        return a, b
    raise DataError(f"window {text!r} is not START:END (UTC dates or times, e.g. 2026-01-05:2026-01-09)")


def _utc(text: str) -> datetime | None:
    if not text.strip():
        return None
    t = datetime.fromisoformat(text.strip())  # ISO 8601 only: ValueError otherwise
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def backtest_windows(train: str | None, val: str | None, test: str | None) -> dict[str, Window] | None:
    """``--train/--val/--test START:END`` parsed (all three or none: None)."""
    given = {k: v for k, v in {"train": train, "val": val, "test": test}.items() if v is not None}
    if not given:
        return None
    if len(given) != 3:
        raise DataError("--train, --val and --test go together (each START:END)")
    return {k: parse_window(v) for k, v in given.items()}


def windows_span(windows: dict[str, Window] | None, start: datetime | None, end: datetime | None) -> Window:
    """The smallest [start, end) holding every window (to read the frame once), or
    ``(start, end)`` as given without windows."""
    if not windows:
        return start, end
    starts = [w[0] for w in windows.values()]
    ends = [w[1] for w in windows.values()]
    return (None if None in starts else min(s for s in starts if s is not None),
            None if None in ends else max(e for e in ends if e is not None))  # fmt: skip


def split_frame(
    frame: pd.DataFrame, feature_names: list[str] | None, windows: dict[str, Window] | None
) -> Split:
    """By the explicit windows when there are some, else the day-aligned time quantiles."""
    if windows:
        return split_by_windows(frame, feature_names, **windows)
    return temporal_split(frame, feature_names)


def split_by_windows(
    frame: pd.DataFrame, feature_names: list[str] | None, *, train: Window, val: Window, test: Window
) -> Split:
    """Train/validation/test as the given event-time windows ``[start, end)`` (a published
    backtest protocol): they must come in that order without overlapping; gaps are allowed
    and rows in no window are left out."""
    if LABEL not in frame or TIME not in frame:
        raise DataError(f"the frame needs {LABEL!r} and {TIME!r} columns")
    named = {"train": train, "val": val, "test": test}
    for (a_name, a), (b_name, b) in ((("train", train), ("val", val)), (("val", val), ("test", test))):
        if a[1] is None or b[0] is None or a[1] > b[0]:
            raise DataError(
                f"--{a_name} must end at or before --{b_name} starts (windows in time order, no "
                f"overlap; gaps allowed): {a_name} ends {a[1]}, {b_name} starts {b[0]}"
            )
    names = feature_names or [c for c in frame.columns if c not in NON_FEATURES]
    frame = frame.sort_values(TIME, kind="stable")
    t = pd.to_datetime(frame[TIME], utc=True)
    parts = []
    for name, (lo, hi) in named.items():
        mask = np.ones(len(frame), dtype=bool)
        if lo is not None:
            mask &= (t >= pd.Timestamp(lo)).to_numpy()
        if hi is not None:
            mask &= (t < pd.Timestamp(hi)).to_numpy()
        part = frame[mask]
        if part.empty:
            raise DataError(f"no labelled rows in the --{name} window {lo} .. {hi}")
        parts.append(part)

    def xy(p: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return p[names].to_numpy(dtype=np.float32), p[LABEL].to_numpy(dtype=np.int8)

    (a_, b_), (c_, d_), (e_, f_) = (xy(p) for p in parts)
    scen = parts[2][SCENARIO].to_numpy(dtype=object) if SCENARIO in frame else None

    def iso(x: datetime | None, p: pd.DataFrame, first: bool) -> str:
        return str(pd.Timestamp(x)) if x is not None else str(p[TIME].iloc[0 if first else -1])

    windows = {
        n: (iso(w[0], p, True), iso(w[1], p, False)) for (n, w), p in zip(named.items(), parts, strict=True)
    }
    span = (str(parts[0][TIME].iloc[0]), str(parts[2][TIME].iloc[-1]))
    return Split(names, a_, b_, c_, d_, e_, f_, (windows["val"][0], windows["test"][0]), span, scen, windows)


def _cuts(t: pd.Series, val: float, test: float) -> tuple[Any, Any]:
    """Time-quantile cut points, moved to the nearest UTC midnight when the data spans
    three days or more (and the day cuts still leave every part non-empty)."""
    t_val, t_test = t.quantile(1 - val - test), t.quantile(1 - test)
    if not pd.api.types.is_datetime64_any_dtype(t) or t.iloc[-1] - t.iloc[0] < pd.Timedelta(days=3):
        return t_val, t_test
    d_val, d_test = t_val.round("D"), t_test.round("D")
    if t.iloc[0] < d_val < d_test <= t.iloc[-1]:
        return d_val, d_test
    return t_val, t_test


_LABELLED_SQL = """
SELECT l.transaction_id, l.is_fraud FROM labels l JOIN transactions t USING (transaction_id)
WHERE (%(start)s::timestamptz IS NULL OR t.event_time >= %(start)s)
  AND (%(end)s::timestamptz IS NULL OR t.event_time < %(end)s)
"""


def frame_from_store(
    settings: Settings,
    start: datetime | None = None,
    end: datetime | None = None,
    *,
    id_prefix: str | None = None,
    min_rows: int = MIN_ROWS,
) -> pd.DataFrame:
    """Point-in-time training frame of the transactions in PostgreSQL with
    ``start <= event_time < end`` (``features.offline.build_frame``), labelled rows only.

    Labels arrive late (a chargeback days after the payment): a transaction without a label
    yet is not known to be genuine, so it is left out when genuine transactions get labels
    too (the simulator's ``all`` mode). When only frauds are labelled (``fraud`` mode) an
    unlabelled row counts as genuine, except in the last stretch of the data where labels
    may still be on their way (newer than the latest label minus the 95th-percentile delay).
    ``id_prefix`` keeps only transaction ids with that prefix (tests share the database).
    """
    import psycopg2

    from features.offline import build_frame

    # Naive times (say from the command line) are UTC, like every time in the database.
    start, end = (t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t for t in (start, end))
    dsn = settings.postgres.dsn.get_secret_value()
    try:
        frame = build_frame(dsn, start, end)
        with db.transaction(dsn) as cur:
            cur.execute(_LABELLED_SQL, {"start": start, "end": end})
            rows = cur.fetchall()
            labelled = {row[0] for row in rows}
            genuine_labels = any(not row[1] for row in rows)
            cur.execute(
                "SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY l.labelled_at - t.event_time),"
                " max(l.labelled_at) FROM labels l JOIN transactions t USING (transaction_id)"
                " WHERE l.is_fraud"
            )
            p95_delay, last_label = cur.fetchone()
    except psycopg2.Error as exc:
        raise DataError(f"cannot read training data from PostgreSQL: {exc}".strip()) from exc
    if id_prefix is not None:
        frame = frame[frame["transaction_id"].str.startswith(id_prefix)]
    where = f" between {start or 'the beginning'} and {end or 'now'}"
    if frame.empty:
        raise DataError(
            f"no transactions in PostgreSQL{where}: produce and consume traffic first "
            "(`fraudray produce` + `fraudray consume`, or `make run`), or pass --csv"
        )
    if genuine_labels:
        frame = frame[frame["transaction_id"].isin(labelled)]
    elif p95_delay is not None and last_label is not None:
        frame = frame[frame[TIME] < pd.Timestamp(last_label) - pd.Timedelta(p95_delay)]
    n_fraud = int(frame[LABEL].sum()) if len(frame) else 0
    if len(frame) < min_rows or n_fraud < 3 * MIN_FRAUD_PER_PART:
        raise DataError(
            f"too little labelled data{where}: {len(frame)} labelled transactions, {n_fraud} of them "
            f"fraud (need at least {min_rows} rows and {3 * MIN_FRAUD_PER_PART} frauds); labels "
            "arrive days after the payment, so let the stream run longer, widen --start/--end, "
            "or pass --csv"
        )
    return frame.reset_index(drop=True)


def frame_from_csv(path: Path, label: str, time: str | None = None) -> pd.DataFrame:
    """Any labelled CSV (or Parquet) as a training frame: numeric columns become features."""
    raw = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    if label not in raw:
        raise DataError(f"{path}: no label column {label!r} (columns: {', '.join(map(str, raw.columns))})")
    y = pd.to_numeric(raw[label], errors="coerce")
    if y.isna().any() or not set(y.unique()) <= {0, 1}:
        raise DataError(f"{path}: label column {label!r} must hold only 0/1 (or true/false)")
    if time is not None and time not in raw:
        raise DataError(f"{path}: no time column {time!r}")
    features = raw.drop(columns=[c for c in (label, time) if c]).select_dtypes("number")
    if features.empty:
        raise DataError(f"{path}: no numeric feature columns besides the label")
    frame = features.astype(np.float32).fillna(0.0)
    frame[LABEL] = y.astype(np.int8).to_numpy()
    frame[TIME] = _times(raw[time], path, time) if time else np.arange(len(raw))  # row order as time
    return frame


def _times(column: pd.Series, path: Path, name: str) -> pd.Series:
    if pd.api.types.is_numeric_dtype(column) or pd.api.types.is_datetime64_any_dtype(column):
        return column
    try:
        return pd.to_datetime(column, utc=True)
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path}: time column {name!r} is neither numeric nor a date/time: {exc}") from exc
