"""Pure computations on query results (no Streamlit, no database): PR/ROC curves from score bins,
the registry's headline metrics, and which version is in production."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

HEADLINE_METRICS = ("roc_auc", "aucpr", "precision", "recall", "fpr", "threshold", "rows", "fraud_rows")
CURVE_KEYS = ("pr_curve", "roc_curve")


@dataclass(frozen=True)
class Curves:
    """PR and ROC curves over thresholds (highest threshold first) and their areas."""

    threshold: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    fpr: np.ndarray
    roc_auc: float
    average_precision: float
    positives: int
    negatives: int


def curves_from_bins(bins: pd.DataFrame) -> Curves | None:
    """PR/ROC from per-score-bin counts (columns ``threshold``, ``positives``, ``negatives``):
    flag everything scoring at or above each bin's lower edge. ``None`` when the labels hold only
    one class (a curve needs both)."""
    if bins.empty:
        return None
    ordered = bins.sort_values("threshold", ascending=False)
    pos = ordered["positives"].to_numpy(dtype=np.int64)
    neg = ordered["negatives"].to_numpy(dtype=np.int64)
    n_pos, n_neg = int(pos.sum()), int(neg.sum())
    if n_pos == 0 or n_neg == 0:
        return None
    tp, fp = np.cumsum(pos), np.cumsum(neg)
    recall = tp / n_pos
    fpr = fp / n_neg
    precision = tp / np.maximum(tp + fp, 1)
    # ROC area by trapezoids from (0, 0); ties inside one bin count as half, like sklearn.
    roc_x = np.r_[0.0, fpr]
    roc_y = np.r_[0.0, recall]
    roc_auc = float(np.sum(np.diff(roc_x) * (roc_y[1:] + roc_y[:-1]) / 2))
    # Average precision: precision weighted by the recall gained at each threshold.
    average_precision = float(np.sum(np.diff(np.r_[0.0, recall]) * precision))
    return Curves(
        threshold=ordered["threshold"].to_numpy(dtype=np.float64),
        precision=precision,
        recall=recall,
        fpr=fpr,
        roc_auc=roc_auc,
        average_precision=average_precision,
        positives=n_pos,
        negatives=n_neg,
    )


def as_dict(value: Any) -> dict[str, Any]:
    """A jsonb column value as a dict (psycopg2 already decodes jsonb; text is parsed)."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str) and value:
        try:
            parsed = json.loads(value)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}
    return {}


def headline_metrics(registry: pd.DataFrame) -> pd.DataFrame:
    """One row per registry entry: name, version, stage, created_at and the scalar metrics
    (curves and nested values left out; they have their own charts)."""
    rows = []
    for rec in registry.to_dict("records"):
        metrics = as_dict(rec.get("metrics"))
        row: dict[str, Any] = {k: rec[k] for k in ("name", "version", "stage", "created_at")}
        for key in HEADLINE_METRICS:
            value = metrics.get(key)
            row[key] = float(value) if isinstance(value, int | float) else None
        rows.append(row)
    return pd.DataFrame(rows, columns=["name", "version", "stage", "created_at", *HEADLINE_METRICS])


def production_versions(registry: pd.DataFrame) -> dict[str, str]:
    """Model family → the version whose stage is ``production`` (the newest if several)."""
    if registry.empty:
        return {}
    prod = registry[registry["stage"] == "production"].sort_values("created_at", ascending=False)
    return {str(name): str(group.iloc[0]["version"]) for name, group in prod.groupby("name", sort=True)}


def registry_curve(metrics: dict[str, Any], key: str) -> pd.DataFrame | None:
    """A stored curve (``pr_curve``: [recall, precision] pairs, ``roc_curve``: [fpr, tpr]) as a
    frame, or ``None`` when the registry row has none."""
    points = metrics.get(key)
    if not isinstance(points, list) or not points:
        return None
    columns = ("recall", "precision") if key == "pr_curve" else ("fpr", "tpr")
    try:
        return pd.DataFrame([(float(p[0]), float(p[1])) for p in points], columns=list(columns))
    except (TypeError, ValueError, IndexError):
        return None
