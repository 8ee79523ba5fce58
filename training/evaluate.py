"""Model quality on labelled rows: ranking metrics, the confusion at a threshold, PR/ROC curves as PNG."""

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


def save_curves_png(metrics: dict[str, Any], path: Path, title: str) -> None:
    """The PR and ROC curves of ``metrics`` side by side as one PNG, with the random baseline
    and, when ``metrics`` has one, the operating point at the decision threshold."""
    if "pr_curve" not in metrics:
        return
    # The Agg canvas directly, not pyplot: no global figure state, no display, safe in threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4.4), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    pr_ax, roc_ax = fig.subplots(1, 2)
    base = metrics["fraud_rows"] / max(1, metrics["rows"])
    recall, precision = zip(*metrics["pr_curve"], strict=True)
    pr_ax.plot(recall, precision, color="tab:blue", lw=2, label=f"AP {metrics['aucpr']:.3f}")
    pr_ax.axhline(base, color="grey", ls="--", lw=1, label=f"random (base rate {base:.2%})")
    pr_ax.set(title=f"{title}: precision–recall", xlabel="recall", ylabel="precision")
    fpr, tpr = zip(*metrics["roc_curve"], strict=True)
    roc_ax.plot(fpr, tpr, color="tab:blue", lw=2, label=f"ROC AUC {metrics['roc_auc']:.3f}")
    roc_ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="random")
    roc_ax.set(title=f"{title}: ROC", xlabel="false-positive rate", ylabel="recall (true-positive rate)")
    if "threshold" in metrics:
        at = f"threshold {metrics['threshold']:.3g}"
        pr_ax.plot(metrics["recall"], metrics["precision"], "o", color="tab:red", label=at)
        roc_ax.plot(metrics["fpr"], metrics["recall"], "o", color="tab:red", label=at)
    for ax in (pr_ax, roc_ax):
        ax.set(xlim=(0, 1.02), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)  # a good PR curve fills the top right
    fig.savefig(path, format="png")
