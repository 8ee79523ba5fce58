"""Backups and retention of the decision tables.

- ``backup``: ``pg_dump`` (custom format) of ``transactions``, ``decisions`` and ``labels`` taken
  in the same snapshot as a manifest of row counts and content checksums; the newest ``keep``
  dumps are kept, older ones deleted.
- ``restore``: ``pg_restore`` of a dump into another (scratch) database, then the manifest is
  checked against what arrived. Restoring over the live database is refused.
- ``cleanup``: transactions older than N days (event time) are written to Parquet together with
  their decisions and labels, then deleted in one PostgreSQL transaction per chunk (decisions
  first: they reference transactions). Kafka topic retention is (re)applied from the settings.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg2
from psycopg2 import sql

from core.errors import FraudrayError
from core.settings import Settings

BACKUP_TABLES = ("transactions", "decisions", "labels")
DUMP_GLOB = "fraudray-*.dump"


class BackupError(FraudrayError):
    """A dump, restore, verification or archive step failed."""


@dataclass(frozen=True)
class BackupResult:
    path: Path
    manifest: dict[str, dict[str, Any]]  # table -> {rows, checksum}
    removed: list[Path]


@dataclass
class CleanupResult:
    cutoff: datetime
    archived: dict[str, int] = field(default_factory=lambda: dict.fromkeys(BACKUP_TABLES, 0))
    files: list[Path] = field(default_factory=list)


def _pg_tool(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise BackupError(f"{name} is not installed (Debian package postgresql-client)")
    return found[-1]


def fingerprints(cur: Any, tables: tuple[str, ...] = BACKUP_TABLES) -> dict[str, dict[str, Any]]:
    """Row count and an order-independent-of-storage checksum (md5 over the rows by primary key)."""
    out: dict[str, dict[str, Any]] = {}
    for table in tables:
        cur.execute(
            sql.SQL(
                "SELECT count(*), coalesce(md5(string_agg(md5(x::text), '' ORDER BY x.transaction_id)), '')"
                " FROM {} AS x"
            ).format(sql.Identifier(table))
        )
        rows, checksum = cur.fetchone()
        out[table] = {"rows": int(rows), "checksum": checksum}
    return out


def backup_dir(settings: Settings) -> Path:
    return settings.var_dir / "backups"


def list_backups(directory: Path) -> list[Path]:
    """Dumps in ``directory``, oldest first (names carry a UTC timestamp)."""
    return sorted(directory.glob(DUMP_GLOB))


def backup(settings: Settings, directory: Path | None = None, keep: int = 7) -> BackupResult:
    """Dump the decision tables with a manifest, then keep only the newest ``keep`` dumps."""
    if keep < 1:
        raise BackupError("keep must be at least 1")
    directory = directory or backup_dir(settings)
    directory.mkdir(parents=True, exist_ok=True)
    dsn = settings.postgres.dsn.get_secret_value()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    path = directory / f"fraudray-{stamp}.dump"
    tmp = path.with_suffix(".dump.part")
    conn = psycopg2.connect(dsn)
    try:
        # One snapshot for the manifest and the dump: rows written meanwhile are in neither.
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot()")
            (snapshot,) = cur.fetchone()
            manifest = fingerprints(cur)
            cmd = [_pg_tool("pg_dump"), "--format=custom", "--no-owner", "--no-acl",
                   f"--snapshot={snapshot}", f"--file={tmp}", f"--dbname={dsn}"]  # fmt: skip
            for table in BACKUP_TABLES:
                cmd.append(f"--table={table}")
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if out.returncode != 0:
                tmp.unlink(missing_ok=True)
                raise BackupError(f"pg_dump failed: {out.stderr.strip()[-2000:]}")
        conn.rollback()
    finally:
        conn.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.rename(path)
    path.with_suffix(".json").write_text(
        json.dumps({"created_at": stamp, "tables": manifest}, indent=2, sort_keys=True)
    )
    removed = []
    for old in list_backups(directory)[:-keep]:
        old.unlink(missing_ok=True)
        old.with_suffix(".json").unlink(missing_ok=True)
        removed.append(old)
    return BackupResult(path, manifest, removed)


def read_manifest(dump: Path) -> dict[str, dict[str, Any]]:
    try:
        tables: dict[str, dict[str, Any]] = json.loads(dump.with_suffix(".json").read_text())["tables"]
    except (OSError, ValueError, KeyError) as exc:
        raise BackupError(f"no readable manifest next to {dump}: {exc}") from exc
    return tables


def dsn_for_database(dsn: str, database: str, user: str | None = None) -> str:
    """``dsn`` pointing at another database (and optionally another user) on the same server."""
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if user is not None:
        netloc = f"{user}@{netloc.rsplit('@', 1)[-1]}"
    return urlunsplit((parts.scheme, netloc, f"/{database}", parts.query, parts.fragment))


def create_database(settings: Settings, database: str, admin_user: str = "postgres") -> str:
    """Create ``database`` (owned by the configured role) unless it exists; return its DSN.

    Uses the server's superuser over the configured host/port: the local stack trusts it on
    loopback. Elsewhere, create the database yourself and pass its DSN to :func:`restore`.
    """
    pg = settings.postgres
    admin = psycopg2.connect(dsn_for_database(pg.dsn.get_secret_value(), "postgres", admin_user))
    admin.autocommit = True
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if cur.fetchone() is None:
                cur.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(database), sql.Identifier(pg.user)
                    )
                )
    finally:
        admin.close()
    return dsn_for_database(pg.dsn.get_secret_value(), database)


def restore(settings: Settings, dump: Path, target_dsn: str) -> dict[str, dict[str, Any]]:
    """Restore ``dump`` into the database of ``target_dsn`` and verify it against the manifest.

    Returns the verified fingerprints; raises :class:`BackupError` on any difference.
    """
    live = urlsplit(settings.postgres.dsn.get_secret_value())
    target = urlsplit(target_dsn)
    if (target.hostname, target.port, target.path) == (live.hostname, live.port, live.path):
        raise BackupError("refusing to restore over the live database: restore into another one")
    expected = read_manifest(dump)
    out = subprocess.run(
        [_pg_tool("pg_restore"), "--no-owner", "--no-acl", "--clean", "--if-exists", "--exit-on-error",
         "--single-transaction", f"--dbname={target_dsn}", str(dump)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise BackupError(f"pg_restore failed: {out.stderr.strip()[-2000:]}")
    conn = psycopg2.connect(target_dsn)
    try:
        with conn, conn.cursor() as cur:
            got = fingerprints(cur, tuple(expected))
    finally:
        conn.close()
    if got != expected:
        raise BackupError(f"restored tables differ from the manifest: expected {expected}, got {got}")
    return got


# -- retention -----------------------------------------------------------------------------------

_SELECT = {
    "transactions": "SELECT * FROM transactions WHERE transaction_id = ANY(%s) ORDER BY transaction_id",
    "decisions": "SELECT transaction_id, user_id, scores::text AS scores, ensemble_score, is_fraud,"
    " model_version, scored_at, latency_ms, event_latency_ms FROM decisions WHERE transaction_id = ANY(%s)"
    " ORDER BY transaction_id",
    "labels": "SELECT * FROM labels WHERE transaction_id = ANY(%s) ORDER BY transaction_id",
}


def archive_dir(settings: Settings) -> Path:
    return settings.var_dir / "archive"


def _write_parquet(cur: Any, table: str, ids: list[str], dest: Path) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    cur.execute(_SELECT[table], (ids,))
    names = [c.name for c in cur.description]
    rows = cur.fetchall()
    if not rows:
        return 0
    columns = {name: [r[i] for r in rows] for i, name in enumerate(names)}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".parquet.part")
    pq.write_table(pa.table(columns), tmp)
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    tmp.rename(dest)
    return len(rows)


def cleanup(
    settings: Settings,
    days: float,
    directory: Path | None = None,
    *,
    now: datetime | None = None,
    chunk: int = 50_000,
    dry_run: bool = False,
) -> CleanupResult:
    """Archive transactions with ``event_time`` older than ``days`` (and their decisions and
    labels) to Parquet under ``directory/<table>/``, then delete them.

    Per chunk: Parquet files are written and fsynced first, then the rows are deleted in one
    database transaction (decisions, labels, transactions). A crash in between leaves the rows in
    the database and a second run archives them again: the archive is at-least-once, never lossy.
    """
    if days <= 0:
        raise BackupError("days must be positive")
    directory = directory or archive_dir(settings)
    result = CleanupResult(cutoff=(now or datetime.now(UTC)) - timedelta(days=days))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    conn = psycopg2.connect(settings.postgres.dsn.get_secret_value())
    try:
        if dry_run:
            with conn, conn.cursor() as cur:
                for table in BACKUP_TABLES:
                    cur.execute(
                        sql.SQL(
                            "SELECT count(*) FROM {} WHERE transaction_id IN"
                            " (SELECT transaction_id FROM transactions WHERE event_time < %s)"
                        ).format(sql.Identifier(table)),
                        (result.cutoff,),
                    )
                    result.archived[table] = int(cur.fetchone()[0])
            return result
        part = 0
        while True:
            with conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT transaction_id FROM transactions WHERE event_time < %s"
                    " ORDER BY event_time, transaction_id LIMIT %s FOR UPDATE SKIP LOCKED",
                    (result.cutoff, chunk),
                )
                ids = [r[0] for r in cur.fetchall()]
                if not ids:
                    break
                for table in BACKUP_TABLES:
                    dest = directory / table / f"{stamp}-{part:05d}.parquet"
                    n = _write_parquet(cur, table, ids, dest)
                    if n:
                        result.archived[table] += n
                        result.files.append(dest)
                cur.execute("DELETE FROM decisions WHERE transaction_id = ANY(%s)", (ids,))
                cur.execute("DELETE FROM labels WHERE transaction_id = ANY(%s)", (ids,))
                cur.execute("DELETE FROM transactions WHERE transaction_id = ANY(%s)", (ids,))
                part += 1
    finally:
        conn.close()
    return result


def apply_topic_retention(settings: Settings) -> dict[str, int]:
    """Set ``retention.ms`` on every fraudray topic from the settings; returns topic -> ms."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    k = settings.kafka
    wanted = k.retention_ms_by_topic()
    admin = AdminClient(k.client_config("admin"))
    existing = set(admin.list_topics(timeout=10).topics)
    resources = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            topic,
            incremental_configs=[
                ConfigEntry("retention.ms", str(ms), incremental_operation=AlterConfigOpType.SET)
            ],
        )
        for topic, ms in wanted.items()
        if topic in existing
    ]
    if resources:
        for res, fut in admin.incremental_alter_configs(resources).items():
            try:
                fut.result()
            except Exception as exc:
                raise BackupError(f"setting retention on {res.name} failed: {exc}") from exc
    return {r.name: wanted[r.name] for r in resources}
