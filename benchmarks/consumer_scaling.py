"""End-to-end consumer throughput with 1..N actors on the local stack (backlog drain).

Produces a seeded backlog into a fresh 6-partition topic once, then drains it with a new
consumer group per actor count and reports scored tx/s (first polled record → last
committed batch) and the µs/tx of each stage. Needs `fraudray stack up`.

    .venv/bin/python benchmarks/consumer_scaling.py --count 100000 --actors 1 2 3
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path: put the repository root there
# instead so the project's packages import as they do everywhere else.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import json
import os
import time
import uuid

from core.ray_client import ray_env

os.environ.update(ray_env())  # token auth and Serve's fast path, before anything imports ray

from confluent_kafka.admin import AdminClient, NewTopic

from core import db, ray_client
from core.settings import ServeSettings, Settings, get_settings
from ingest.consumer import ConsumerPool, stage_us_per_tx, throughput
from ingest.producer import TransactionProducer
from ingest.simulator import demo_transactions
from ingest.simulator.frames import simulated_frame
from serve_deployments import deploy as serving
from training import quick


def _decisions(settings: Settings, ids: list[str]) -> int:
    with db.transaction(settings.postgres.dsn.get_secret_value()) as cur:
        cur.execute("SELECT count(*) FROM decisions WHERE transaction_id = ANY(%s)", (ids,))
        (n,) = cur.fetchone()
    return int(n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=100_000)
    ap.add_argument("--actors", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--out", default="var/bench/consumer_scaling.json")
    args = ap.parse_args()

    base = get_settings()
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    kafka = base.kafka.model_copy(update={"transactions_topic": topic})
    settings = Settings(kafka=kafka, serve=ServeSettings(http_port=18001))
    admin = AdminClient(kafka.client_config("admin"))
    admin.create_topics([NewTopic(topic, num_partitions=kafka.partitions, replication_factor=1)])[
        topic
    ].result()

    t0 = time.perf_counter()
    producer = TransactionProducer(settings)
    records = list(demo_transactions(args.count, seed=args.seed, users=20_000))
    producer.send_many(records)
    producer.flush()
    ids = [r["transaction_id"] for r in records]
    print(f"produced {args.count:,} in {time.perf_counter() - t0:.1f} s")

    ray_client.init(settings, local=True, log_to_driver=False)
    quick.ensure_models(settings, simulated_frame)
    serving.deploy(settings)
    results = []
    try:
        for n in args.actors:
            pool = ConsumerPool(settings, n, f"bench-{uuid.uuid4().hex[:8]}")
            stats = pool.drain()
            row = {
                "actors": n,
                "scored": sum(s["scored"] for s in stats),
                "tx_per_s": round(throughput(stats)),
                "us_per_tx": {k: round(v) for k, v in stage_us_per_tx(stats).items()},
                "decisions_in_pg": _decisions(settings, ids),
            }
            results.append(row)
            print(json.dumps(row))
    finally:
        admin.delete_topics([topic])
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump({"count": args.count, "cpus": os.cpu_count(), "results": results}, fh, indent=2)


if __name__ == "__main__":
    main()
