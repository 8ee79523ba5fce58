"""PostgreSQL sink cost: µs per transaction (its ``transactions`` row and its ``decisions`` row)
of the consumer's write, the sink's ways of writing side by side on the same rows, in
interleaved rounds, on the configured PostgreSQL (the local stack's).

Each variant writes the rows in batches of ``--batch`` on a connection of its own, then sends
every batch again (a redelivery: must write nothing). Printed per variant: wall time, this
process's CPU (encoding the rows, psycopg2) and the PostgreSQL backend's CPU (``/proc``: the
server is on this box), each in µs per transaction, and the batches resent. The rows each
variant leaves in PostgreSQL are read back and compared with the first variant's; all the
benchmark's rows are deleted at the end.

- ``text, staged``: COPY text into a temp staging table, ``INSERT … SELECT … ON CONFLICT DO
  NOTHING`` per table (the sink before 2026-12-05).
- ``binary, staged``: the same with COPY binary (``ingest.sinks.copy_binary``).
- ``binary, staged, 1 INSERT``: both tables' inserts in one statement (a data-modifying CTE).
- ``binary, direct``: ``PostgresSink``: COPY binary straight into the tables; a batch with a
  row already written is rolled back and merged through the staging tables.

    .venv/bin/python -m benchmarks.pg_sink --rows 50000 --batch 500 --rounds 3
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.stages import delete_rows
from core import db
from core.contracts import DECISION_COLUMNS, TX_COLUMNS, DecisionRow, TxRow
from core.settings import Settings
from ingest.simulator import demo_transactions
from ingest.sinks import PostgresSink, copy_binary, copy_text

_TICK = os.sysconf("SC_CLK_TCK")
Rows = Sequence[Sequence[Any]]


def workload(count: int, seed: int = 1) -> tuple[list[TxRow], list[DecisionRow]]:
    """The consumer's rows for ``count`` simulated transactions: three models' scores as JSON,
    the event latency NULL (NaN) on a replay but for every 10th row, a shadow score on half."""
    rng = np.random.default_rng(seed)
    tx, dec = [], []
    for i, r in enumerate(demo_transactions(count, seed=seed)):
        tx.append(
            TxRow(r["transaction_id"], r["user_id"], r["merchant_id"], r["amount"], r["currency"],
                  r["event_time"], r["country"], r["device_id"], r["channel"], r["merchant_category"],
                  r["lat"], r["lon"], r["ip"], i % 6, i)
        )  # fmt: skip
        s = rng.random(4)
        dec.append(
            DecisionRow(r["transaction_id"], r["user_id"],
                        json.dumps({"if": float(s[0]), "xgb": float(s[1]), "ae": float(s[2])}),
                        float(s[:3].mean()), bool(s[1] > 0.9), "ensemble-20261205", float(s[3] * 40),
                        float(s[3] * 50) if i % 10 == 0 else math.nan,
                        float(s[3]) if i % 2 else None, "ensemble-20261206" if i % 2 else None)
        )  # fmt: skip
    return tx, dec


def tagged(tx: list[TxRow], dec: list[DecisionRow], tag: str) -> tuple[list[TxRow], list[DecisionRow]]:
    """The rows under transaction ids of their own (``tag`` + id): each run writes new rows."""
    return (
        [t._replace(transaction_id=tag + t.transaction_id) for t in tx],
        [d._replace(transaction_id=tag + d.transaction_id) for d in dec],
    )


class StagedSink(PostgresSink):
    """Every batch through the staging tables, COPY text or binary; ``one_insert``: both
    tables' ``INSERT … SELECT`` in one statement."""

    def __init__(self, dsn: str, *, binary: bool, one_insert: bool = False) -> None:
        super().__init__(dsn)
        self._binary, self._one_insert = binary, one_insert

    def write(self, transactions: Rows, decisions: Rows, labels: Rows = ()) -> int:
        conn = self._connection()
        with conn, conn.cursor() as cur:
            if not self._one_insert:
                self._merge(cur, "transactions", TX_COLUMNS, transactions, binary=self._binary)
                return self._merge(cur, "decisions", DECISION_COLUMNS, decisions, binary=self._binary)
            for table, columns, rows in (("transactions", TX_COLUMNS, transactions),
                                         ("decisions", DECISION_COLUMNS, decisions)):  # fmt: skip
                cols = ", ".join(columns)
                data = io_of(columns, rows, binary=self._binary)
                fmt = " (FORMAT binary)" if self._binary else ""
                cur.copy_expert(f"COPY stage_{table} ({cols}) FROM STDIN{fmt}", data)
            tcols, dcols = ", ".join(TX_COLUMNS), ", ".join(DECISION_COLUMNS)
            cur.execute(
                f"WITH t AS (INSERT INTO transactions ({tcols}) SELECT {tcols} FROM stage_transactions"  # noqa: S608
                f" ON CONFLICT DO NOTHING) INSERT INTO decisions ({dcols}) SELECT {dcols}"
                " FROM stage_decisions ON CONFLICT DO NOTHING"
            )
            return int(cur.rowcount)


def io_of(columns: Sequence[str], rows: Rows, *, binary: bool) -> Any:
    """The COPY data of ``rows``, a file for ``copy_expert``."""
    return io.BytesIO(copy_binary(columns, rows)) if binary else copy_text(rows)


VARIANTS: dict[str, Any] = {
    "text, staged": lambda dsn: StagedSink(dsn, binary=False),
    "binary, staged": lambda dsn: StagedSink(dsn, binary=True),
    "binary, staged, 1 INSERT": lambda dsn: StagedSink(dsn, binary=True, one_insert=True),
    "binary, direct": PostgresSink,
}


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (/proc/PID/stat fields 14 and 15)."""
    rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / _TICK


def _read_back(dsn: str, ids: list[str], tag: str) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """The rows written under ``ids``, in id order, their ids without ``tag``."""
    out = []
    with db.transaction(dsn) as cur:
        for table, columns in (("transactions", TX_COLUMNS), ("decisions", DECISION_COLUMNS)):
            cur.execute(
                f"SELECT {', '.join(columns)} FROM {table} WHERE transaction_id = ANY(%s)",  # noqa: S608
                (ids,),
            )
            out.append(sorted((row[0].removeprefix(tag), *row[1:]) for row in cur.fetchall()))
    return out[0], out[1]


def run_variant(name: str, dsn: str, tx: list[TxRow], dec: list[DecisionRow], batch: int) -> dict[str, Any]:
    """One variant over the rows (new ids), then the same batches again; the rows it left."""
    tag = f"pgb{uuid.uuid4().hex[:8]}-"
    tx, dec = tagged(tx, dec, tag)
    sink = VARIANTS[name](dsn)
    conn = sink._connection()
    pid = conn.get_backend_pid()
    batches = [(tx[i : i + batch], dec[i : i + batch]) for i in range(0, len(tx), batch)]
    n = len(tx) / 1e6
    out: dict[str, Any] = {"variant": name}
    try:
        for phase in ("new", "resent"):
            w0, c0, s0, new = time.perf_counter(), time.process_time(), _cpu_s(pid), 0
            for t, d in batches:
                new += sink.write(t, d)
            w1, c1, s1 = time.perf_counter(), time.process_time(), _cpu_s(pid)
            out[phase] = {"wall": (w1 - w0) / n, "client": (c1 - c0) / n, "server": (s1 - s0) / n, "new": new}
        ids = [t.transaction_id for t in tx]
        out["rows"] = _read_back(dsn, ids, tag)
    finally:
        sink.close()
        delete_rows(Settings(), [t.transaction_id for t in tx])
    return out


def encode_us(tx: list[TxRow], dec: list[DecisionRow], batch: int) -> dict[str, float]:
    """µs per transaction of building the COPY data alone, text and binary."""
    out = {}
    for label, binary in (("text", False), ("binary", True)):
        t0 = time.perf_counter()
        for i in range(0, len(tx), batch):
            io_of(TX_COLUMNS, tx[i : i + batch], binary=binary)
            io_of(DECISION_COLUMNS, dec[i : i + batch], binary=binary)
        out[label] = 1e6 * (time.perf_counter() - t0) / len(tx)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rows", type=int, default=50_000, help="transactions (each with its decision)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--variants", default=";".join(VARIANTS), help="separated by ';', of: " + "; ".join(VARIANTS)
    )
    args = ap.parse_args()
    dsn = Settings().postgres.dsn.get_secret_value()
    names = [v.strip() for v in args.variants.split(";")]
    tx, dec = workload(args.rows)
    enc = encode_us(tx, dec, args.batch)
    print(f"encoding alone: text {enc['text']:.1f}, binary {enc['binary']:.1f} µs/tx", flush=True)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    reference: Any = None
    for rnd in range(args.rounds):
        for name in names if rnd % 2 == 0 else reversed(names):
            res = run_variant(name, dsn, tx, dec, args.batch)
            rows = res.pop("rows")
            reference = reference or rows
            same = rows == reference and len(rows[0]) == len(rows[1]) == args.rows
            new, resent = res["new"], res["resent"]
            print(
                f"round {rnd + 1} {name:26s} new: wall {new['wall']:5.1f} client {new['client']:5.1f}"
                f" server {new['server']:5.1f} | resent: wall {resent['wall']:5.1f} (new rows"
                f" {resent['new']}) | same rows {'yes' if same else 'NO'}  load1 {os.getloadavg()[0]:.1f}",
                flush=True,
            )
            if not same or resent["new"] or new["new"] != args.rows:
                raise SystemExit(f"{name}: rows differ from {names[0]}'s or a resent batch wrote rows")
            results[name].append(res)
    print("median µs/tx over the rounds (wall; client CPU; PostgreSQL backend CPU):")
    for name, runs in results.items():
        med = {k: float(np.median([r["new"][k] for r in runs])) for k in ("wall", "client", "server")}
        resent = float(np.median([r["resent"]["wall"] for r in runs]))
        print(
            f"  {name:26s} new {med['wall']:5.1f} ({med['client']:.1f}; {med['server']:.1f})"
            f"   resent {resent:5.1f}"
        )


if __name__ == "__main__":
    main()
