"""Model quality on labelled rows: ranking metrics and the confusion at a threshold."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve


def threshold_for_fpr(scores: np.ndarray, y: np.ndarray, target_fpr: float) -> float:
    """The lowest threshold whose false-positive rate on genuine rows is at most ``target_fpr``."""
    genuine = np.sort(np.asarray(scores)[np.asarray(y) == 0])
    if not len(genuine):
        return float(np.max(scores))
    # Rows scoring >= the threshold are flagged: leave at most floor(n * fpr) genuine rows there.
    k = int(np.ceil(len(genuine) * (1 - target_fpr)))
    if k >= len(genuine):
        return float(np.nextafter(genuine[-1], np.inf))
    return float(genuine[k])


def _curve(x: np.ndarray, y: np.ndarray, points: int = 50) -> list[list[float]]:
    idx = np.unique(np.linspace(0, len(x) - 1, min(points, len(x))).astype(int))
    return [[round(float(x[i]), 5), round(float(y[i]), 5)] for i in idx]


def evaluate(scores: np.ndarray, y: np.ndarray, threshold: float | None = None) -> dict[str, Any]:
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y).astype(int)
    out: dict[str, Any] = {"rows": len(y), "fraud_rows": int(y.sum())}
    if 0 < y.sum() < len(y):
        out["roc_auc"] = float(roc_auc_score(y, scores))
        out["aucpr"] = float(average_precision_score(y, scores))
        p, r, _ = precision_recall_curve(y, scores)
        fpr, tpr, _ = roc_curve(y, scores)
        out["pr_curve"] = _curve(r[::-1], p[::-1])
        out["roc_curve"] = _curve(fpr, tpr)
    if threshold is not None:
        flagged = scores >= threshold
        tp = int((flagged & (y == 1)).sum())
        fp = int((flagged & (y == 0)).sum())
        out.update(
            threshold=float(threshold),
            precision=tp / max(1, int(flagged.sum())),
            recall=tp / max(1, int(y.sum())),
            fpr=fp / max(1, int((y == 0).sum())),
        )
    return out
