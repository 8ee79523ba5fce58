"""Model registry: artefacts under ``var/models/<name>/<version>/`` and one row per version
in the PostgreSQL ``models`` table; one ``training_runs`` row per training or search run.

Exactly one version per name is in ``production``. Besides metrics (with PR/ROC curves),
hyperparameters and feature names, a version's ``params`` carry its ``training_window`` (the
train/val/test time ranges and sizes), its ``drift_reference`` (each feature's distribution
over the training window, see :func:`drift_reference`; ``Registry.drift_reference`` hands it
out in the shape :class:`monitoring.drift.DriftWindow` takes) and ``promoted_at`` (when it
entered production, which makes ``rollback`` exact).
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from core import db
from core.errors import ModelNotReady
from core.settings import Settings


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    uri: str
    stage: str
    metrics: dict[str, Any]
    params: dict[str, Any]
    feature_names: list[str]
    created_at: datetime | None = None

    @property
    def training_window(self) -> dict[str, Any]:
        window: dict[str, Any] = self.params.get("training_window") or {}
        return window


REFERENCE_PERCENTILES = np.linspace(0.0, 100.0, 101)
REFERENCE_MAX_LEVELS = 256  # up to this many distinct values a feature is kept as a histogram
REFERENCE_POINT_MASS = 0.005  # beyond that, values holding this share of rows are kept exactly
REFERENCE_SAMPLE = 2000


def drift_reference(X: np.ndarray, feature_names: list[str]) -> dict[str, dict[str, Any]]:
    """Per feature, the training window's distribution (finite values only).

    ``levels``/``counts``: the exact histogram of the feature's values when it has at most
    ``REFERENCE_MAX_LEVELS`` distinct ones (flags, hours, small counts), else of the values
    holding at least ``REFERENCE_POINT_MASS`` of the rows (zeros of a sparse feature);
    ``percentiles``: 0..100 of the remaining ``rest`` rows, taken as actual values — the bin
    edges of a 100-bin equal-mass histogram. :func:`reference_sample` turns an entry into the
    ``expected`` sample that :class:`monitoring.drift.DriftWindow` compares live values with.
    """
    out: dict[str, dict[str, Any]] = {}
    for i, name in enumerate(feature_names):
        col = np.asarray(X[:, i], dtype=np.float64)
        col = col[np.isfinite(col)]
        if not col.size:
            continue
        levels, counts = np.unique(col, return_counts=True)
        if len(levels) > REFERENCE_MAX_LEVELS:
            heavy = counts >= REFERENCE_POINT_MASS * len(col)
            rest = col[~np.isin(col, levels[heavy])]
            levels, counts = levels[heavy], counts[heavy]
        else:
            rest = col[:0]
        entry: dict[str, Any] = {"levels": levels.tolist(), "counts": counts.astype(float).tolist()}
        if rest.size:
            entry["rest"] = int(rest.size)
            entry["percentiles"] = np.percentile(rest, REFERENCE_PERCENTILES, method="nearest").tolist()
        out[name] = entry
    return out


def reference_sample(entry: dict[str, Any], n: int = REFERENCE_SAMPLE) -> np.ndarray:
    """About ``n`` values with the reference's distribution: each level repeated by its share
    (at least once, so no training level looks new), the rest spread over its percentiles."""
    counts = np.asarray(entry.get("counts", []), dtype=np.float64)
    rest = float(entry.get("rest", 0))
    total = counts.sum() + rest
    parts = [np.repeat(np.asarray(entry.get("levels", []), dtype=np.float64),
                       np.maximum(1, np.round(counts / total * n)).astype(int))]  # fmt: skip
    if rest:
        m = max(101, round(rest / total * n))
        parts.append(np.interp(np.linspace(0, 100, m), REFERENCE_PERCENTILES, entry["percentiles"]))
    return np.concatenate(parts)


class Registry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.var_dir / "models"

    def _transaction(self) -> AbstractContextManager[Any]:
        return db.transaction(self.settings.postgres.dsn.get_secret_value())

    def new_version_dir(self, name: str) -> tuple[str, Path]:
        version = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = self.root / name / version
        path.mkdir(parents=True, exist_ok=False)
        return version, path

    def register(
        self,
        name: str,
        version: str,
        path: Path,
        *,
        metrics: dict[str, Any],
        params: dict[str, Any],
        feature_names: list[str],
        promote: bool = False,
        window: dict[str, Any] | None = None,
        reference: dict[str, dict[str, Any]] | None = None,
    ) -> ModelVersion:
        """Insert the version (idempotent); ``window``/``reference`` go into its ``params``."""
        params = dict(params)
        if window is not None:
            params["training_window"] = window
        if reference is not None:
            params["drift_reference"] = reference
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO models (name, version, uri, metrics, params, feature_names)"
                " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name, version) DO NOTHING",
                (name, version, str(path), json.dumps(metrics, default=float),
                 json.dumps(params, default=float), json.dumps(feature_names)),
            )  # fmt: skip
            if promote:
                self._promote(cur, name, version)
        return self.get(name, version)

    @staticmethod
    def _promote(cur: Any, name: str, version: str, *, record: bool = True) -> None:
        """Archive the current production version of ``name`` and promote ``version``.

        ``record`` appends the time to the version's ``promoted_at`` (a rollback does not: the
        restored version keeps its place in the production history)."""
        cur.execute("SELECT 1 FROM models WHERE name = %s AND version = %s FOR UPDATE", (name, version))
        if cur.fetchone() is None:
            raise ModelNotReady(f"model {name} version {version} is not registered")
        cur.execute("UPDATE models SET stage = 'archived' WHERE name = %s AND stage = 'production'", (name,))
        if record:
            cur.execute(
                "UPDATE models SET stage = 'production', params = jsonb_set(params, '{promoted_at}',"
                " coalesce(params->'promoted_at', '[]'::jsonb) || to_jsonb(%s::text))"
                " WHERE name = %s AND version = %s",
                (datetime.now(UTC).isoformat(timespec="microseconds"), name, version),
            )
        else:
            cur.execute(
                "UPDATE models SET stage = 'production' WHERE name = %s AND version = %s", (name, version)
            )

    def promote(self, name: str, version: str) -> None:
        with self._transaction() as cur:
            self._promote(cur, name, version)

    def rollback(self, name: str) -> tuple[str, str]:
        """Put the version that was in production before the current one back into production
        (the current one is archived); returns ``(archived, restored)`` versions.

        "Before" follows ``promoted_at``: the restored version is the one whose last promotion
        is the latest before the current version's, so rolling back twice goes two steps back.
        """
        with self._transaction() as cur:
            cur.execute(
                "SELECT version, params->'promoted_at'->>-1 FROM models"
                " WHERE name = %s AND stage = 'production' FOR UPDATE",
                (name,),
            )
            current = cur.fetchone()
            if current is None:
                raise ModelNotReady(f"no production version of model {name!r} to roll back")
            cur.execute(
                "SELECT version FROM models WHERE name = %s AND version <> %s"
                " AND params ? 'promoted_at' AND stage <> 'production'"
                " AND (%s::text IS NULL OR params->'promoted_at'->>-1 < %s::text)"
                " ORDER BY params->'promoted_at'->>-1 DESC LIMIT 1",
                (name, current[0], current[1], current[1]),
            )
            previous = cur.fetchone()
            if previous is None and current[1] is None:  # versions from before promoted_at
                cur.execute(
                    "SELECT version FROM models WHERE name = %s AND stage = 'archived'"
                    " ORDER BY created_at DESC LIMIT 1",
                    (name,),
                )
                previous = cur.fetchone()
            if previous is None:
                raise ModelNotReady(f"model {name!r} has no earlier production version than {current[0]}")
            self._promote(cur, name, previous[0], record=False)
        return current[0], previous[0]

    _SELECT = (
        "SELECT name, version, uri, stage, metrics, params - 'drift_reference', feature_names, created_at"
        " FROM models WHERE "
    )

    def _rows(self, where: str, args: tuple[Any, ...]) -> list[ModelVersion]:
        """``where`` is one of this class's fixed clauses; values always travel as ``args``."""
        with self._transaction() as cur:
            cur.execute(self._SELECT + where + " ORDER BY created_at DESC", args)
            return [ModelVersion(*row) for row in cur.fetchall()]

    def get(self, name: str, version: str) -> ModelVersion:
        rows = self._rows("name = %s AND version = %s", (name, version))
        if not rows:
            raise ModelNotReady(f"model {name} version {version} is not registered")
        return rows[0]

    def production(self, name: str) -> ModelVersion:
        rows = self._rows("name = %s AND stage = 'production'", (name,))
        if not rows:
            raise ModelNotReady(f"no production version of model {name!r}: run `fraudray train`")
        return rows[0]

    def list(self, name: str | None = None) -> list[ModelVersion]:
        return self._rows("name = %s", (name,)) if name else self._rows("TRUE", ())

    def drift_reference(self, name: str, version: str | None = None) -> dict[str, np.ndarray]:
        """The version's (default: the production version's) training-window reference per
        feature as samples, ready for ``monitoring.drift.DriftWindow(reference, FEATURE_NAMES)``."""
        version = version or self.production(name).version
        with self._transaction() as cur:
            cur.execute(
                "SELECT params->'drift_reference' FROM models WHERE name = %s AND version = %s",
                (name, version),
            )
            row = cur.fetchone()
        if row is None or not row[0]:
            raise ModelNotReady(f"model {name} version {version} has no drift reference")
        return {k: reference_sample(v) for k, v in row[0].items()}

    # -- training_runs ----------------------------------------------------------------------

    def start_run(self, model_name: str, config: dict[str, Any]) -> str:
        run_id = f"{model_name}-{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        with self._transaction() as cur:
            cur.execute(
                "INSERT INTO training_runs (run_id, model_name, config) VALUES (%s, %s, %s)",
                (run_id, model_name, json.dumps(config, default=str)),
            )
        return run_id

    def finish_run(self, run_id: str, status: str, metrics: dict[str, Any]) -> None:
        with self._transaction() as cur:
            cur.execute(
                "UPDATE training_runs SET status = %s, metrics = %s, finished_at = now() WHERE run_id = %s",
                (status, json.dumps(metrics, default=float), run_id),
            )

    @contextmanager
    def run(self, model_name: str, config: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """A ``training_runs`` row around a block: ``finished`` with the metrics the block put
        into the yielded dict, or ``failed`` with the error."""
        run_id = self.start_run(model_name, config)
        metrics: dict[str, Any] = {}
        try:
            yield metrics
        except BaseException as exc:
            self.finish_run(run_id, "failed", metrics | {"error": f"{type(exc).__name__}: {exc}"[:2000]})
            raise
        self.finish_run(run_id, "finished", metrics)

    def runs(self, model_name: str | None = None, limit: int = 50) -> builtins.list[dict[str, Any]]:
        with self._transaction() as cur:
            cur.execute(
                "SELECT run_id, model_name, started_at, finished_at, status, config, metrics"
                " FROM training_runs WHERE (%s::text IS NULL OR model_name = %s)"
                " ORDER BY started_at DESC LIMIT %s",
                (model_name, model_name, limit),
            )
            cols = [d[0] for d in cur.description]
            return [dict(zip(cols, row, strict=True)) for row in cur.fetchall()]
