"""The PostgreSQL sink on the real database: COPY binary stores every column type as the text
format did (NULLs, non-ASCII text, extreme floats, timestamps in any offset), a re-sent batch
writes nothing twice and a partly written batch is completed."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import psycopg2
import pytest

from cluster import backup
from core.contracts import DECISION_COLUMNS, TX_COLUMNS, DecisionRow, TxRow
from core.db import apply_migrations
from core.settings import Settings
from ingest.sinks import COLUMN_TYPES, PostgresSink

pytestmark = [pytest.mark.integration]

# What the validator lets through into text columns: anything but NUL and its reserved
# separators (0x01, 0x1c-0x1f), so tabs, newlines, backslashes and COPY text's own markers too.
TEXTS = ["Zürich", "東京都", "💳🏧", "مرحبا", "e\u0301", "tab\there", "new\nline\r\n", "back\\slash",
         "\\N", "\\.", "\x7f\x0b\x08", "' OR 1=1 --", "", " padded "]  # fmt: skip
FLOATS = [0.0, -0.0, 0.1, 1 / 3, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308,
          -1.7976931348623157e308, 1e-4, 123456789.12345679]  # fmt: skip
TIMES = [
    datetime(2000, 1, 1, tzinfo=UTC),  # PostgreSQL's epoch: 0 µs
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(1970, 1, 1, tzinfo=UTC),
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 12, 5, 3, 4, 5, 678000, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2026, 3, 29, 1, 30, tzinfo=timezone(timedelta(hours=-8))),
]
# json.dumps escapes non-ASCII by default; the consumer's JSON is plain ASCII, this one is not.
SCORES = [json.dumps({"if": 0.5}), json.dumps({"ae": 1e-300, "名前": "ü💳", "nested": [1, None, True]},
                                              ensure_ascii=False)]  # fmt: skip
TYPES = {"text": "text", "bpchar": "text", "float8": "float8", "timestamptz": "timestamptz",
         "int4": "int4", "int8": "int8", "jsonb": "jsonb", "bool": "bool"}  # fmt: skip


@pytest.fixture
def dsn(local_stack: Settings) -> str:
    return local_stack.postgres.dsn.get_secret_value()


@pytest.fixture
def tag(dsn: str) -> Iterator[str]:
    """A prefix for this test's transaction ids; its rows are deleted afterwards."""
    tag = f"pgsink-{uuid.uuid4().hex[:8]}-"
    yield tag
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM decisions WHERE transaction_id LIKE %s", (tag + "%",))
        cur.execute("DELETE FROM transactions WHERE transaction_id LIKE %s", (tag + "%",))
    conn.close()


def _rows(tag: str, n: int) -> tuple[list[TxRow], list[DecisionRow]]:
    """``n`` rows cycling through the values above; every nullable column NULL in some rows."""
    tx, dec = [], []
    for i in range(n):
        text, x, t = TEXTS[i % len(TEXTS)], FLOATS[i % len(FLOATS)], TIMES[i % len(TIMES)]
        null = i % 3 == 0
        tx_id = f"{tag}{i:04d}-{text}"
        tx.append(TxRow(tx_id, text or "u", f"m-{text}", abs(x), "EUR", t, "DE",
                        None if null else text, None if null else "online", None if null else text,
                        None if null else x, None if null else -x, None if null else text,
                        2**31 - 1, 2**63 - 1 - i))  # fmt: skip
        dec.append(DecisionRow(tx_id, text or "u", SCORES[i % 2], x, i % 2 == 0, f"v-{text}", x,
                               math.nan if null else x, math.inf if null else x,
                               None if null else text))  # fmt: skip
    return tx, dec


def _read(dsn: str, tag: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """This test's rows as stored, ids without ``tag``; the defaulted columns too."""
    out = []
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        for table, columns, default in (("transactions", TX_COLUMNS, "ingested_at"),
                                        ("decisions", DECISION_COLUMNS, "scored_at")):  # fmt: skip
            cur.execute(
                f"SELECT {', '.join(columns)}, {default} FROM {table} WHERE transaction_id LIKE %s",
                (tag + "%",),
            )
            out.append(sorted((row[0].removeprefix(tag), *row[1:]) for row in cur.fetchall()))
    conn.close()
    return out[0], out[1]


def _text_format_write(dsn: str, tx: list[TxRow], dec: list[DecisionRow]) -> None:
    """The rows as the sink wrote them before COPY binary: COPY text + INSERT … SELECT."""
    sink = PostgresSink(dsn)
    conn = sink._connection()
    with conn, conn.cursor() as cur:
        sink._merge(cur, "transactions", TX_COLUMNS, tx, binary=False)
        sink._merge(cur, "decisions", DECISION_COLUMNS, dec, binary=False)
    sink.close()


def test_column_types_are_the_schemas(dsn: str) -> None:
    with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
        for table, columns in (("transactions", TX_COLUMNS), ("decisions", DECISION_COLUMNS)):
            cur.execute(
                "SELECT column_name, udt_name FROM information_schema.columns WHERE table_name = %s",
                (table,),
            )
            schema = dict(cur.fetchall())
            assert {c: TYPES[schema[c]] for c in columns} == {c: COLUMN_TYPES[c] for c in columns}
    conn.close()


def test_binary_copy_stores_every_column_type_as_text_copy_did(dsn: str, tag: str) -> None:
    tx, dec = _rows(tag + "bin-", 56)
    sink = PostgresSink(dsn)
    try:
        assert sink.write(tx, dec) == len(dec)
    finally:
        sink.close()
    _text_format_write(dsn, *_rows(tag + "txt-", 56))
    binary, text = _read(dsn, tag + "bin-"), _read(dsn, tag + "txt-")
    for got, old in zip(binary, text, strict=True):
        assert [row[:-1] for row in got] == [row[:-1] for row in old]  # all but the defaulted time
    stored_tx = {row[0]: row for row in binary[0]}
    stored_dec = {row[0]: row for row in binary[1]}
    for t, d in zip(*_rows("", 56), strict=True):
        row, drow = stored_tx[t.transaction_id], stored_dec[t.transaction_id]
        # Exactly the values given: text byte for byte, floats bit for bit (-0.0 too), the
        # instant of each timestamp, NULL for None and for non-finite floats.
        assert row[:15] == tuple(t)
        assert math.copysign(1, row[3]) == math.copysign(1, t.amount)
        assert t.lat is None or math.copysign(1, row[10]) == math.copysign(1, t.lat)
        assert drow[2] == json.loads(d.scores)
        assert drow[3:7] == (d.ensemble_score, d.is_fraud, d.model_version, d.latency_ms)
        finite = [v if v is not None and math.isfinite(v) else None for v in d[7:9]]
        assert [drow[7], drow[8], drow[9]] == [*finite, d.shadow_version]


def test_a_resent_batch_writes_nothing_twice(dsn: str, tag: str) -> None:
    tx, dec = _rows(tag, 40)
    sink = PostgresSink(dsn)
    try:
        assert sink.write(tx, dec) == 40
        first = _read(dsn, tag)
        assert sink.write(tx, dec) == 0
        assert sink.write(tx[:10], dec[:10]) == 0
        assert _read(dsn, tag) == first  # not one row again, none rewritten (same ingested/scored_at)
        # One transaction twice in a new batch: written once, the first copy wins.
        twice = tx[0]._replace(transaction_id=tag + "twice")
        again = twice._replace(amount=99.0)
        d = dec[0]._replace(transaction_id=twice.transaction_id)
        assert sink.write([twice, again], [d, d._replace(ensemble_score=0.99)]) == 1
    finally:
        sink.close()
    stored = _read(dsn, tag)
    assert len(stored[0]) == len(stored[1]) == 41
    row = next(r for r in stored[0] if r[0] == "twice")
    assert row[3] == tx[0].amount


def test_a_partly_written_batch_is_completed(dsn: str, tag: str) -> None:
    tx, dec = _rows(tag, 40)
    sink = PostgresSink(dsn)
    try:
        assert sink.write(tx[5:25], dec[5:20]) == 15  # an earlier batch held some of these rows
        early = _read(dsn, tag)
        assert sink.write(tx, dec) == 25
    finally:
        sink.close()
    done = _read(dsn, tag)
    ids = sorted(t.transaction_id.removeprefix(tag) for t in tx)
    assert [r[0] for r in done[0]] == [r[0] for r in done[1]] == ids
    assert all(row in done[0] for row in early[0]) and all(row in done[1] for row in early[1])  # untouched


def test_a_nul_character_fails_the_batch_and_writes_none_of_it(dsn: str, tag: str) -> None:
    """PostgreSQL refuses NUL in text; the consumer splits the batch down to the one record."""
    tx, dec = _rows(tag, 6)
    bad = tx[3]._replace(device_id="a\x00b")
    sink = PostgresSink(dsn)
    try:
        with pytest.raises(psycopg2.DataError):
            sink.write([*tx[:3], bad, *tx[4:]], dec)
        assert _read(dsn, tag) == ([], [])
        assert sink.write(tx, dec) == 6  # reconnected, the next batch goes on
    finally:
        sink.close()


def test_writes_into_emptied_and_vacuumed_tables_scan_no_table_per_row(local_stack: Settings) -> None:
    """Tables whose rows were all deleted and then vacuumed carry statistics of 0 rows. A
    per-row check planned on those (a foreign key's) scanned ``transactions`` once per
    decision, so a batch took longer the more the table held. On a database of its own: 20
    batches of 200 rows may scan the table a few times, never once per row."""
    database = f"sinkvac_{uuid.uuid4().hex[:8]}"
    dsn = backup.create_database(local_stack, database)
    try:
        apply_migrations(dsn)
        tag = "vac-"
        tx, dec = _rows(tag, 4_000)
        sink = PostgresSink(dsn)
        sink.write(tx, dec)
        sink.close()
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("DELETE FROM decisions")
            cur.execute("DELETE FROM transactions")
            cur.execute("VACUUM (ANALYZE) decisions, transactions")
            cur.execute("SELECT reltuples FROM pg_class WHERE relname = 'transactions'")
            assert cur.fetchone()[0] == 0  # the statistics a new session plans with

            def scans(inserted: int) -> tuple[int, int]:
                """(rows inserted, sequential scans) of ``transactions`` once the statistics
                hold ``inserted`` rows: a closed session publishes its own when it ends."""
                deadline = time.monotonic() + 10
                while True:
                    cur.execute("SELECT pg_stat_clear_snapshot()")
                    cur.execute(
                        "SELECT n_tup_ins, seq_scan FROM pg_stat_user_tables WHERE relname = 'transactions'"
                    )
                    ins, seq = cur.fetchone()
                    if ins >= inserted or time.monotonic() > deadline:
                        return int(ins), int(seq)
                    time.sleep(0.2)

            ins, seq_before = scans(4_000)
            assert ins == 4_000
            sink = PostgresSink(dsn)
            for k in range(20):
                assert sink.write(tx[k * 200 : (k + 1) * 200], dec[k * 200 : (k + 1) * 200]) == 200
            sink.close()
            ins, seq_after = scans(8_000)
        conn.close()
        assert ins == 8_000
        assert seq_after - seq_before < 20
    finally:
        admin = psycopg2.connect(backup.dsn_for_database(dsn, "postgres", "postgres"))
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
