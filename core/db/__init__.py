"""PostgreSQL access for every room: ``transaction(dsn)`` (connect, commit or roll back, close;
a database that cannot be reached becomes ``StoreUnavailable`` with one line) and the versioned
schema, ``NNNN_name.sql`` files applied once each, in order."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2

from core.errors import StoreUnavailable

MIGRATIONS_DIR = Path(__file__).resolve().parent


def connect(dsn: str, timeout_s: int = 10) -> Any:
    """A new psycopg2 connection; one line of error when PostgreSQL cannot be reached."""
    try:
        return psycopg2.connect(dsn, connect_timeout=timeout_s)
    except psycopg2.OperationalError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StoreUnavailable(f"PostgreSQL is unreachable ({reason})") from exc


@contextmanager
def transaction(dsn: str, timeout_s: int = 10) -> Iterator[Any]:
    """A cursor inside one transaction on a connection of its own: committed when the block
    ends, rolled back when it raises, and the connection closed either way."""
    conn = connect(dsn, timeout_s)
    try:
        with conn, conn.cursor() as cur:
            yield cur
    finally:
        conn.close()


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("[0-9][0-9][0-9][0-9]_*.sql"))


def apply_migrations(dsn: str) -> list[str]:
    """Apply the migrations not yet recorded in ``schema_migrations``; return their names.

    Each file runs in its own transaction together with its bookkeeping row, and an
    advisory lock keeps two concurrent callers from applying the same file twice.
    """
    applied: list[str] = []
    conn = connect(dsn)
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
