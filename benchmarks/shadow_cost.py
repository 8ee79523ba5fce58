"""What live shadow scoring costs the stream (#23): backlog drains of the same seeded workload
with and without a shadow challenger installed in the Serve scorer, alternating (off, on, off,
on, …) so that the box's background load hits both alike.

    .venv/bin/python -m benchmarks.shadow_cost [--count 20000] [--actors 2] [--rounds 2]

On a private local Ray with the app deployed from the registry's production models (as
``fraudray bench``); the shadow is the production versions themselves: the same families and
sizes as any challenger the learning loop fits, so the same cost, and its scores must equal the
deciding ones (checked). Prints one line per drain and the median tx/s of each mode; writes
``var/bench/shadow_cost.json``.
"""

from __future__ import annotations

import os

from core.ray_client import ray_env

os.environ.update(ray_env())  # token auth and Serve's fast path, before anything imports ray

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks import e2e, stages
from core import db, ray_client
from core.ports import free_port
from core.settings import Settings, get_settings
from features.online import OnlineStore

ROOT = Path(__file__).resolve().parent.parent


def _shadowed(settings: Settings, ids: list[str]) -> tuple[int, float]:
    """How many of ``ids``' decisions carry a shadow score, and the largest |shadow - score|."""
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute(
            "SELECT count(shadow_score), coalesce(max(abs(shadow_score - ensemble_score)), 0)"
            " FROM decisions WHERE transaction_id = ANY(%s)",
            (ids,),
        )
        n, diff = cur.fetchone()
    return int(n), float(diff)


def run(base: Settings, count: int, actors: int, rounds: int) -> dict[str, Any]:

    from serve_deployments.app import production_versions
    from serve_deployments.deploy import install_shadow

    report: dict[str, Any] = {"machine": e2e.machine(), "count": count, "actors": actors, "drains": []}
    base = base.model_copy(update={"serve": base.serve.model_copy(update={"http_port": free_port()})})
    topics = e2e.Topics(base)
    s = e2e.with_kafka(base, labels_topic=topics.new("labels"), decisions_topic=topics.new("decisions"),
                       alerts_topic=topics.new("alerts"), dlq_topic=topics.new("dlq"))  # fmt: skip
    run_id = uuid.uuid4().hex[:6]
    workload = e2e.Workload(count, seed=7, users=5000)
    ids: list[str] = []
    try:
        e2e.start_ray(s)
        e2e.deploy(s, "shadow-cost-bench")
        shadow = {f: v["version"] for f, v in production_versions(s).items()}
        # a warm-up drain: replicas' first batches (imports, allocations) cost more
        warm = workload.tagged(f"s{run_id}w", min(count, 5000))
        ids += [r["transaction_id"] for r in warm]
        e2e.drain_run(s, topics, warm, actors)
        for i in range(rounds):
            for mode in ("off", "on"):
                install_shadow(s, shadow if mode == "on" else None)
                records = workload.tagged(f"s{run_id}{mode}{i}")
                batch = [r["transaction_id"] for r in records]
                ids += batch
                row = e2e.drain_run(s, topics, records, actors)
                n, diff = _shadowed(s, batch)
                row |= {"shadow": mode, "shadowed": n, "max_abs_shadow_minus_score": diff}
                report["drains"].append(row)
                print(f"shadow {mode}: {row['tx_per_s']:,} tx/s ({row['wall_s']} s), {n:,} of {len(batch):,}"
                      f" decisions shadow-scored (max |shadow - score| {diff:.2g}), µs/tx {row['us_per_tx']},"
                      f" load {row['load1']}", flush=True)  # fmt: skip
        install_shadow(s, None)
    finally:
        try:
            if ids:
                stages.delete_rows(s, ids)
            OnlineStore(s.redis.url.get_secret_value()).drop_population(f"s{run_id}")
            topics.close()
        finally:
            ray_client.shutdown()  # the private Ray goes down, Serve and all
    for mode in ("off", "on"):
        rates = [d["tx_per_s"] for d in report["drains"] if d["shadow"] == mode]
        report[f"median_tx_per_s_shadow_{mode}"] = statistics.median(rates) if rates else 0
    off, on = report["median_tx_per_s_shadow_off"], report["median_tx_per_s_shadow_on"]
    report["ratio_on_off"] = round(on / off, 3) if off else None
    report["machine"]["load1_end"] = e2e.load1()
    return report


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--count", type=int, default=20_000, help="transactions per drain")
    ap.add_argument("--actors", type=int, default=2, help="consumer actors")
    ap.add_argument("--rounds", type=int, default=2, help="pairs of drains (without, with a shadow)")
    ap.add_argument("--report", type=Path, default=ROOT / "var/bench/shadow_cost.json")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    report = run(get_settings(), args.count, args.actors, args.rounds)
    report["seconds"] = round(time.monotonic() - t0, 1)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=1, default=str))
    print(
        f"median drain: {report['median_tx_per_s_shadow_off']:,} tx/s without a shadow,"
        f" {report['median_tx_per_s_shadow_on']:,} with one (x{report['ratio_on_off']});"
        f" report {args.report} ({report['seconds']} s)"
    )


if __name__ == "__main__":
    main()
