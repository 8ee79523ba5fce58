"""Training data: temporal splits of a labelled frame, and any labelled CSV as a frame.

Splits are by event time, never random across time: train on the earliest window,
validate (early stopping, ensemble stacking, threshold) on the next, test on the last.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from cluster.errors import FraudrayError

LABEL = "is_fraud"
TIME = "event_time"
NON_FEATURES = frozenset({LABEL, TIME, "transaction_id", "scenario", "user_id", "merchant_id"})


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

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.y_train), "val": len(self.y_val), "test": len(self.y_test)}


def temporal_split(
    frame: pd.DataFrame, feature_names: list[str] | None = None, val: float = 0.2, test: float = 0.2
) -> Split:
    """Cut ``frame`` at the time quantiles so that train < val < test in event time."""
    if LABEL not in frame or TIME not in frame:
        raise DataError(f"the frame needs {LABEL!r} and {TIME!r} columns")
    names = feature_names or [c for c in frame.columns if c not in NON_FEATURES]
    frame = frame.sort_values(TIME, kind="stable")
    t = frame[TIME]
    t_val, t_test = t.quantile(1 - val - test), t.quantile(1 - test)
    parts = (frame[t < t_val], frame[(t >= t_val) & (t < t_test)], frame[t >= t_test])
    if any(len(p) == 0 for p in parts):
        raise DataError(f"too few distinct event times to split {len(frame)} rows into train/val/test")

    def xy(p: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        return p[names].to_numpy(dtype=np.float32), p[LABEL].to_numpy(dtype=np.int8)

    (a, b), (c, d), (e, f) = (xy(p) for p in parts)
    return Split(names, a, b, c, d, e, f, (str(t_val), str(t_test)))


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
