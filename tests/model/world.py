"""A small simulated, labelled world written to PostgreSQL (``transactions`` + ``labels``) for
the training tests: ids carry a uuid prefix and event times start on 2002-06-03 (no other
test writes that year), so the offline frames of ``[start, end)`` see this world only,
whatever else the shared database holds. ``delete`` removes it again.

The world is the same on every run (seeded simulator, fixed dates): with ~40 frauds in the
test day, the test metrics of random worlds spread widely (XGBoost's AP from 0.31 to 0.99
over 11 worlds), and a threshold on them would be a coin toss rather than a check."""

from __future__ import annotations

import dataclasses
import io
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg2

from core.settings import Settings
from ingest.simulator import SimConfig, Simulator
from ingest.simulator.simulate import parse_mix

TX_COLUMNS = (
    "transaction_id", "user_id", "merchant_id", "amount", "currency", "event_time", "country",
    "device_id", "channel", "merchant_category", "lat", "lon", "ip",
)  # fmt: skip


@dataclass(frozen=True)
class World:
    prefix: str
    start: datetime
    end: datetime
    rows: int
    fraud: int


def _field(value: Any) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value).replace("\\", "\\\\").replace("\t", " ").replace("\n", " ")


def _copy(cur: Any, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    buf = io.StringIO("".join("\t".join(_field(v) for v in row) + "\n" for row in rows))
    cur.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buf)


def write_world(
    settings: Settings,
    *,
    users: int = 600,
    days: float = 6.0,
    fraud_rate: float = 0.03,
    seed: int = 0,
    start: datetime = datetime(2002, 6, 3, tzinfo=UTC),
    fraud_mix: str | None = None,
) -> World:
    """``days`` of simulated traffic with a label for every transaction (late, 0.5–1.5 days)."""
    prefix = f"tw{uuid.uuid4().hex[:8]}-"
    config = SimConfig(
        seed=seed,
        users=users, merchants=max(1000, users // 5), fraud_rate=fraud_rate,
        label_delay_s=86_400.0, start=start,
    )  # fmt: skip
    if fraud_mix is not None:
        config = dataclasses.replace(config, fraud_mix=parse_mix(fraud_mix))
    end = start + timedelta(days=days)
    end_ms = int(end.timestamp() * 1000)
    tx_rows: list[tuple[Any, ...]] = []
    label_rows: list[tuple[Any, ...]] = []
    for chunk in Simulator(config).chunks():
        keep = int((chunk.event_ms < end_ms).sum())
        part = chunk.take(slice(0, keep))
        labelled_ms, fraud, scenarios = part.labels()
        for rec, f, s, t in zip(part.records(), fraud, scenarios, labelled_ms, strict=True):
            tid = prefix + rec["transaction_id"]
            r = rec | {
                "transaction_id": tid,
                "user_id": prefix + rec["user_id"],
                "merchant_id": prefix + rec["merchant_id"],
            }
            tx_rows.append(tuple(r[c] for c in TX_COLUMNS))
            label_rows.append((tid, bool(f), s, datetime.fromtimestamp(int(t) / 1000, UTC)))
        if keep < len(chunk):
            break
    conn = psycopg2.connect(settings.postgres.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            _copy(cur, "transactions", TX_COLUMNS, tx_rows)
            _copy(cur, "labels", ("transaction_id", "is_fraud", "scenario", "labelled_at"), label_rows)
    finally:
        conn.close()
    return World(prefix, start, end, len(tx_rows), sum(1 for row in label_rows if row[1]))


def delete_world(settings: Settings, world: World) -> None:
    conn = psycopg2.connect(settings.postgres.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            like = world.prefix + "%"
            cur.execute("DELETE FROM decisions WHERE transaction_id LIKE %s", (like,))
            cur.execute("DELETE FROM labels WHERE transaction_id LIKE %s", (like,))
            cur.execute("DELETE FROM transactions WHERE transaction_id LIKE %s", (like,))
    finally:
        conn.close()


def delete_registry_rows(settings: Settings, var_dir: str, world: World | None = None) -> None:
    """Registry rows whose artefacts live under ``var_dir`` (a test's private folder), and the
    training runs whose window lies in ``world`` (nothing else trains on 2002) or whose source
    starts with ``tests:``."""
    conn = psycopg2.connect(settings.postgres.dsn.get_secret_value())
    try:
        with conn, conn.cursor() as cur:
            cur.execute("DELETE FROM models WHERE uri LIKE %s", (var_dir.rstrip("/") + "/%",))
            cur.execute("DELETE FROM training_runs WHERE config->>'source' LIKE 'tests:%%'")
            if world is not None:
                cur.execute(
                    "DELETE FROM training_runs WHERE config->'window'->'train'->>0 LIKE %s",
                    (world.start.date().isoformat() + "%",),
                )
    finally:
        conn.close()
