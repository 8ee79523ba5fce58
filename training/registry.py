"""Model registry: artefacts under ``var/models/<name>/<version>/`` and one row per version
in the PostgreSQL ``models`` table. Exactly one version per name is in ``production``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg2

from cluster.errors import ModelNotReady
from cluster.settings import Settings


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: str
    uri: str
    stage: str
    metrics: dict[str, Any]
    params: dict[str, Any]
    feature_names: list[str]


class Registry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.var_dir / "models"

    def _connect(self) -> Any:
        return psycopg2.connect(self.settings.postgres.dsn.get_secret_value())

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
    ) -> ModelVersion:
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(
                    "INSERT INTO models (name, version, uri, metrics, params, feature_names)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (name, version) DO NOTHING",
                    (name, version, str(path), json.dumps(metrics), json.dumps(params),
                     json.dumps(feature_names)),
                )  # fmt: skip
                if promote:
                    self._promote(cur, name, version)
        finally:
            conn.close()
        return self.get(name, version)

    @staticmethod
    def _promote(cur: Any, name: str, version: str) -> None:
        cur.execute("UPDATE models SET stage = 'archived' WHERE name = %s AND stage = 'production'", (name,))
        cur.execute(
            "UPDATE models SET stage = 'production' WHERE name = %s AND version = %s", (name, version)
        )

    def promote(self, name: str, version: str) -> None:
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                self._promote(cur, name, version)
        finally:
            conn.close()

    _SELECT = "SELECT name, version, uri, stage, metrics, params, feature_names FROM models WHERE "

    def _rows(self, where: str, args: tuple[Any, ...]) -> list[ModelVersion]:
        """``where`` is one of this class's fixed clauses; values always travel as ``args``."""
        conn = self._connect()
        try:
            with conn, conn.cursor() as cur:
                cur.execute(self._SELECT + where + " ORDER BY created_at DESC", args)
                return [ModelVersion(*row) for row in cur.fetchall()]
        finally:
            conn.close()

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
