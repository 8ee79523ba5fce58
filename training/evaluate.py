"""Model quality on labelled rows: ranking metrics and the confusion at a threshold."""

from __future__ import annotations

from pathlib import Path
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
    """At most ``points`` of the curve, spread evenly along its length, both ends kept. Evenly
    by index would spend nearly all of them in the low-precision tail of a PR curve (most
    thresholds sit among the genuine rows) and draw its top as one straight line."""
    xy = np.column_stack([x, y]).astype(np.float64)
    along = np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(xy, axis=0).T))])
    idx = np.unique(np.searchsorted(along, np.linspace(0.0, along[-1], min(points, len(xy)))))
    return [[round(float(xy[i, 0]), 5), round(float(xy[i, 1]), 5)] for i in idx]


def recall_at_fpr(scores: np.ndarray, y: np.ndarray, fpr: float) -> float:
    """Share of fraud rows caught at the threshold that flags ``fpr`` of the genuine rows."""
    threshold = threshold_for_fpr(scores, y, fpr)
    fraud = np.asarray(scores)[np.asarray(y) == 1]
    return float((fraud >= threshold).mean()) if len(fraud) else 0.0


def evaluate(
    scores: np.ndarray,
    y: np.ndarray,
    threshold: float | None = None,
    scenarios: np.ndarray | None = None,
    k: int = 100,
) -> dict[str, Any]:
    """AUCPR, ROC AUC, recall at 0.1 % and 1 % FPR, precision@k and the PR/ROC curves; with a
    ``threshold`` also precision/recall/FPR there, and per fraud scenario the recall there."""
    scores, y = np.asarray(scores, dtype=np.float64), np.asarray(y).astype(int)
    out: dict[str, Any] = {"rows": len(y), "fraud_rows": int(y.sum())}
    if 0 < y.sum() < len(y):
        out["roc_auc"] = float(roc_auc_score(y, scores))
        out["aucpr"] = float(average_precision_score(y, scores))
        out["recall_at_0.1pct_fpr"] = recall_at_fpr(scores, y, 0.001)
        out["recall_at_1pct_fpr"] = recall_at_fpr(scores, y, 0.01)
        top = np.argsort(-scores, kind="stable")[: min(k, len(y))]
        out[f"precision_at_{k}"] = float(y[top].mean())
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
        if scenarios is not None:
            scen = np.asarray(scenarios, dtype=object)
            out["recall_by_scenario"] = {
                str(name): float(flagged[(y == 1) & (scen == name)].mean())
                for name in sorted({s for s in scen[y == 1] if s is not None})
            }
    return out


def _svg_panel(points: list[list[float]], x0: int, title: str, xlabel: str, ylabel: str) -> str:
    size, pad = 260, 40
    path = " ".join(f"{x0 + pad + x * size:.1f},{pad + (1 - y) * size:.1f}" for x, y in points)
    return (
        f'<rect x="{x0 + pad}" y="{pad}" width="{size}" height="{size}" fill="none" stroke="#999"/>'
        f'<polyline points="{path}" fill="none" stroke="#1f77b4" stroke-width="2"/>'
        f'<text x="{x0 + pad}" y="{pad - 10}" font-size="13">{title}</text>'
        f'<text x="{x0 + pad + size // 2}" y="{pad + size + 25}" font-size="11">{xlabel} (0–1)</text>'
        f'<text x="{x0 + 12}" y="{pad + size // 2}" font-size="11" '
        f'transform="rotate(-90 {x0 + 12} {pad + size // 2})">{ylabel} (0–1)</text>'
    )


def save_curves_svg(metrics: dict[str, Any], path: Path, title: str) -> None:
    """The PR and ROC curves of ``metrics`` side by side as one SVG (no plotting library)."""
    if "pr_curve" not in metrics:
        return
    body = _svg_panel(
        metrics["pr_curve"], 0, f"{title}: PR, AP {metrics['aucpr']:.3f}", "recall", "precision"
    )
    body += _svg_panel(
        metrics["roc_curve"],
        340,
        f"{title}: ROC, AUC {metrics['roc_auc']:.3f}",
        "false-positive rate",
        "recall",
    )
    head = '<svg xmlns="http://www.w3.org/2000/svg" width="680" height="340" font-family="sans-serif">'
    path.write_text(f"{head}{body}</svg>\n")
