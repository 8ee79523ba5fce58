"""Backups and retention on a private PostgreSQL (own port, own data): a dump with rotation,
a restore into a scratch database verified by row counts and checksums, the archive of old
transactions (with their decisions and labels) to Parquet, and Kafka topic retention."""

from __future__ import annotations

import json
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg2
import pyarrow.parquet as pq
import pytest
from confluent_kafka.admin import AdminClient, ConfigResource
from typer.testing import CliRunner

from cluster import backup
from core.contracts import DecisionRow, TxRow
from core.settings import Settings
from ingest.sinks import PostgresSink
from tests.helpers import private_postgres, with_topics

pytestmark = [pytest.mark.integration]

NOW = datetime.now(UTC)


@pytest.fixture(scope="module")
def private_pg(local_stack: Settings) -> Iterator[Settings]:
    var = Path(tempfile.mkdtemp(prefix="frbk-", dir="/tmp"))
    var.chmod(0o755)
    with private_postgres(local_stack, var) as s:
        yield s


def _fill(settings: Settings, n: int, start: datetime, prefix: str) -> list[str]:
    """``n`` transactions an hour apart from ``start``, each decided, every third labelled."""
    ids = [f"{prefix}-{i:05d}" for i in range(n)]
    tx = [TxRow(t, f"u{i % 7}", f"m{i % 5}", 10.0 + i, "EUR", start + timedelta(hours=i), "DE", None,
                "online", "grocery", 48.1, 11.6, "10.0.0.1", i % 6, i)
          for i, t in enumerate(ids)]  # fmt: skip
    dec = [DecisionRow(t, f"u{i % 7}", f'{{"if": {i / n}}}', i / n, i % 10 == 0, "v1", latency_ms=12.5,
                       event_latency_ms=None) for i, t in enumerate(ids)]  # fmt: skip
    sink = PostgresSink(settings.postgres.dsn.get_secret_value())
    try:
        sink.write(tx, dec)
    finally:
        sink.close()
    with psycopg2.connect(settings.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
        for i, t in enumerate(ids[::3]):
            cur.execute(
                "INSERT INTO labels (transaction_id, is_fraud, scenario, labelled_at)"
                " VALUES (%s, %s, %s, %s)",
                (t, i % 2 == 0, "card_testing", start + timedelta(hours=3 * i + 1)),
            )
    conn.close()
    return ids


def _counts(dsn: str) -> dict[str, int]:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        out = {}
        for t in backup.BACKUP_TABLES:
            cur.execute(f"SELECT count(*) FROM {t}")
            out[t] = cur.fetchone()[0]
    conn.close()
    return out


def test_backup_rotation_and_verified_restore(private_pg: Settings, tmp_path: Path) -> None:
    s = private_pg
    _fill(s, 3000, NOW - timedelta(days=200), f"bk-{uuid.uuid4().hex[:6]}")
    results = [backup.backup(s, tmp_path, keep=2) for _ in range(3)]
    assert backup.list_backups(tmp_path) == [r.path for r in results[1:]], "rotation keeps the newest 2"
    assert results[2].removed == [results[0].path] and not results[0].path.with_suffix(".json").exists()
    manifest = json.loads(results[2].path.with_suffix(".json").read_text())["tables"]
    assert manifest == results[2].manifest
    assert manifest["transactions"]["rows"] == manifest["decisions"]["rows"] == 3000
    assert manifest["labels"]["rows"] == 1000

    scratch = f"fraudray_restore_{uuid.uuid4().hex[:8]}"
    target = backup.create_database(s, scratch)
    verified = backup.restore(s, results[2].path, target)
    assert verified == manifest
    # Restoring twice is fine (--clean): the scratch database is replaced, not appended to.
    assert backup.restore(s, results[2].path, target) == manifest
    assert _counts(target) == {t: m["rows"] for t, m in manifest.items()}

    # A tampered manifest is caught: the restore is verified, not trusted.
    bad = json.loads(results[2].path.with_suffix(".json").read_text())
    bad["tables"]["decisions"]["checksum"] = "0" * 32
    results[2].path.with_suffix(".json").write_text(json.dumps(bad))
    with pytest.raises(backup.BackupError, match="differ from the manifest"):
        backup.restore(s, results[2].path, target)
    with pytest.raises(backup.BackupError, match="live database"):
        backup.restore(s, results[2].path, s.postgres.dsn.get_secret_value())


def test_cleanup_archives_old_rows_to_parquet_then_deletes_them(private_pg: Settings, tmp_path: Path) -> None:
    s = private_pg
    dsn = s.postgres.dsn.get_secret_value()
    before = _counts(dsn)
    prefix = f"rt-{uuid.uuid4().hex[:6]}"
    # 240 hourly transactions ending now: 10 days; keep the last 4 days.
    ids = _fill(s, 240, NOW - timedelta(hours=239, minutes=30), prefix)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM transactions WHERE event_time < %s", (NOW - timedelta(days=4),))
        old_total = cur.fetchone()[0]  # includes the other test's rows, 200 days old
    conn.close()
    dry = backup.cleanup(s, 4, tmp_path, now=NOW, dry_run=True)
    assert dry.archived["transactions"] == old_total and not dry.files
    assert _counts(dsn)["transactions"] == before["transactions"] + 240

    result = backup.cleanup(s, 4, tmp_path, now=NOW, chunk=1000)
    assert result.archived == dry.archived
    archived = {t: pq.read_table(tmp_path / t).to_pandas() for t in backup.BACKUP_TABLES}
    for t in backup.BACKUP_TABLES:
        assert len(archived[t]) == result.archived[t]
    ours = archived["transactions"][archived["transactions"].transaction_id.str.startswith(prefix)]
    assert len(ours) == 240 - 4 * 24  # the hours before the cutoff
    assert set(archived["decisions"].transaction_id) == set(archived["transactions"].transaction_id)
    assert json.loads(archived["decisions"].scores.iloc[0]) == {
        "if": pytest.approx(archived["decisions"].ensemble_score.iloc[0])
    }
    assert set(archived["labels"].transaction_id) <= set(archived["transactions"].transaction_id)

    after = _counts(dsn)
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM transactions WHERE event_time < %s", (result.cutoff,))
        assert cur.fetchone()[0] == 0
        cur.execute("SELECT count(*) FROM decisions d LEFT JOIN transactions t USING (transaction_id)"
                    " WHERE t.transaction_id IS NULL")  # fmt: skip
        assert cur.fetchone()[0] == 0, "no decision outlives its transaction"
        cur.execute("SELECT count(*) FROM transactions WHERE transaction_id = ANY(%s)", (ids,))
        assert cur.fetchone()[0] == 4 * 24
    conn.close()
    assert after["transactions"] == before["transactions"] + 240 - old_total
    assert backup.cleanup(s, 4, tmp_path, now=NOW).archived["transactions"] == 0  # idempotent


def test_cli_backup_restore_cleanup(
    private_pg: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cluster import cli

    monkeypatch.setattr(cli, "get_settings", lambda: private_pg)
    runner = CliRunner()
    out = runner.invoke(cli.app, ["backup", "--keep", "1", "--dest", str(tmp_path)])
    assert out.exit_code == 0, out.output
    (dump,) = backup.list_backups(tmp_path)
    db = f"fraudray_cli_{uuid.uuid4().hex[:6]}"
    out = runner.invoke(cli.app, ["restore", str(dump), "--database", db])
    assert out.exit_code == 0 and "verified" in out.output, out.output
    out = runner.invoke(cli.app, ["cleanup", "--days", "3650", "--dry-run"])
    assert out.exit_code == 0 and "would archive" in out.output, out.output


def test_topic_retention_from_settings(local_stack: Settings, new_topic: Callable[..., str]) -> None:
    # Every topic replaced by a fresh one: the shared stack's topics keep their retention.
    fields = ("transactions_topic", "labels_topic", "decisions_topic", "alerts_topic", "dlq_topic")
    names = {f: new_topic(f.split("_")[0]) for f in fields}
    s = with_topics(local_stack, **names)
    kafka = s.kafka.model_copy(update={"retention_hours": 5, "dlq_retention_hours": 9})
    s = s.model_copy(update={"kafka": kafka})
    admin = AdminClient({"bootstrap.servers": s.kafka.bootstrap})
    deadline = time.monotonic() + 30
    while not set(names.values()) <= set(admin.list_topics(timeout=10).topics):
        assert time.monotonic() < deadline, "new topics not in the metadata"
        time.sleep(0.2)
    applied = backup.apply_topic_retention(s)
    assert set(applied) == set(names.values())
    assert applied[s.kafka.transactions_topic] == 5 * 3_600_000
    assert applied[s.kafka.dlq_topic] == 9 * 3_600_000
    for topic, hours in ((s.kafka.transactions_topic, 5), (s.kafka.dlq_topic, 9)):
        res = ConfigResource(ConfigResource.Type.TOPIC, topic)
        deadline = time.monotonic() + 30  # the broker applies the metadata change asynchronously
        while admin.describe_configs([res])[res].result()["retention.ms"].value != str(hours * 3_600_000):
            assert time.monotonic() < deadline, f"retention of {topic} not applied"
            time.sleep(0.2)
