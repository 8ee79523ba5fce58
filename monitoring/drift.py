"""Feature drift: the population stability index (PSI) of live features against the training
window, and a bounded window of recent values to compute it from (pure numpy, no Ray)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

# Conventional PSI reading: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
PSI_SIGNIFICANT = 0.25
# Empty bins get this share instead of 0, so log(q/p) stays finite.
_EPS = 1e-4


def _shares(counts: np.ndarray) -> np.ndarray:
    return np.clip(counts / max(int(counts.sum()), 1), _EPS, None)


def psi(expected: np.ndarray, actual: np.ndarray, bins: int = 10) -> float:
    """Population stability index of ``actual`` against ``expected`` (0 = same distribution).

    Continuous features use ``bins`` quantile bins of ``expected`` with open outer bins, so
    live values beyond the training range land in the extreme bins. A feature with at most
    ``bins`` distinct training values (flags, hours) gets one bin per value plus one for
    values never seen in training. Non-finite values are ignored.
    """
    if bins < 2:
        raise ValueError(f"bins must be at least 2, got {bins}")
    e = np.asarray(expected, dtype=np.float64).ravel()
    a = np.asarray(actual, dtype=np.float64).ravel()
    e, a = e[np.isfinite(e)], a[np.isfinite(a)]
    if e.size == 0 or a.size == 0:
        raise ValueError("psi needs at least one finite value on each side")
    levels = np.unique(e)
    if levels.size <= bins:
        e_idx = np.searchsorted(levels, e)
        pos = np.searchsorted(levels, a).clip(max=levels.size - 1)
        a_idx = np.where(levels[pos] == a, pos, levels.size)  # unseen value -> extra bin
        n = levels.size + 1
    else:
        cuts = np.unique(np.quantile(e, np.linspace(0.0, 1.0, bins + 1)[1:-1]))
        e_idx = np.searchsorted(cuts, e, side="right")
        a_idx = np.searchsorted(cuts, a, side="right")
        n = cuts.size + 1
    p = _shares(np.bincount(e_idx, minlength=n).astype(np.float64))
    q = _shares(np.bincount(a_idx, minlength=n).astype(np.float64))
    return float(np.sum((q - p) * np.log(q / p)))


class DriftWindow:
    """The last ``size`` live values of each tracked feature, compared with the training window.

    ``add`` takes one batch's feature matrix (a column per name in ``feature_names``) and
    costs one array copy per batch; ``psi_by_feature`` is meant to run every few seconds or
    batches, not per batch.
    """

    def __init__(
        self,
        reference: Mapping[str, np.ndarray],
        feature_names: tuple[str, ...] | list[str],
        *,
        size: int = 5000,
        min_samples: int = 500,
        bins: int = 10,
    ) -> None:
        unknown = set(reference) - set(feature_names)
        if unknown:
            raise ValueError(f"reference has features the matrix lacks: {sorted(unknown)}")
        self.reference = {k: np.asarray(v, dtype=np.float64).ravel() for k, v in reference.items()}
        self._columns = [feature_names.index(name) for name in self.reference]
        self.size, self.min_samples, self.bins = size, min_samples, bins
        self._buf = np.empty((size, len(self._columns)), dtype=np.float64)
        self._next = 0
        self._filled = 0

    def add(self, matrix: np.ndarray) -> None:
        rows = np.asarray(matrix)[-self.size :, self._columns]
        n = len(rows)
        end = self._next + n
        if end <= self.size:
            self._buf[self._next : end] = rows
        else:  # wrap around the ring
            split = self.size - self._next
            self._buf[self._next :] = rows[:split]
            self._buf[: n - split] = rows[split:]
        self._next = end % self.size
        self._filled = min(self.size, self._filled + n)

    def psi_by_feature(self) -> dict[str, float]:
        """PSI per feature, or ``{}`` until ``min_samples`` live rows were seen."""
        if self._filled < self.min_samples:
            return {}
        live = self._buf[: self._filled]
        return {name: psi(ref, live[:, i], self.bins) for i, (name, ref) in enumerate(self.reference.items())}
