"""Versioned PostgreSQL schema: ``NNNN_name.sql`` files applied once each, in order."""

from __future__ import annotations

from pathlib import Path

import psycopg2

MIGRATIONS_DIR = Path(__file__).resolve().parent


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def apply_migrations(dsn: str) -> list[str]:
    """Apply the migrations not yet recorded in ``schema_migrations``; return their names.

    Each file runs in its own transaction together with its bookkeeping row, and an
    advisory lock keeps two concurrent callers from applying the same file twice.
    """
    applied: list[str] = []
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for path in migration_files():
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(7355608)")
                cur.execute("SELECT 1 FROM schema_migrations WHERE version = %s", (path.stem,))
                if cur.fetchone() is not None:
                    continue
                cur.execute(path.read_text())
                cur.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (path.stem,))
                applied.append(path.stem)
    finally:
        conn.close()
    return applied
