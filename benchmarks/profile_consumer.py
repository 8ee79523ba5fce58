"""A py-spy flame graph of one consumer actor draining a backlog: where its time goes.

    .venv/bin/python -m benchmarks.profile_consumer --count 30000 --seconds 20 \\
        --out docs/img/consumer-actor-flame.svg
    .venv/bin/python -m benchmarks.profile_consumer --cpu --out var/bench/actor-cpu.txt

As `fraudray bench` does: a private local Ray with the Serve app, a seeded backlog in a fresh
topic (rows deleted afterwards), one consumer actor. py-spy samples the actor's process while it
drains, idle frames included: the actor mostly waits on Redis (the features script), Serve and
PostgreSQL, and those waits are what the graph must show. ``--cpu`` samples only while the actor
runs on a CPU: what its own work costs; ``--gil`` only the thread holding the GIL (the actor's
threads wait for it, and those waits count as on-CPU otherwise). An ``--out`` ending in ``.txt``
gets py-spy's collapsed stacks (one line per stack with its sample count) instead of an SVG.
Prints the actor's own µs/tx per stage next to it. The stack must be up (`fraudray stack up`).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

from benchmarks import stages
from benchmarks.e2e import Topics, Workload, check, deploy, produce, start_ray, with_kafka
from benchmarks.procstat import cmdline
from core import ray_client
from core.settings import Settings


def actor_pids() -> list[int]:
    """The processes of the consumer actors on this box (Ray names them after the class)."""
    return [
        int(p.name)
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and cmdline(int(p.name)).startswith("ray::ConsumerActor")
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--count", type=int, default=30_000, help="transactions in the backlog")
    ap.add_argument("--seconds", type=float, default=20.0, help="how long py-spy samples")
    ap.add_argument("--out", type=Path, default=Path("var/bench/consumer-actor-flame.svg"))
    ap.add_argument("--cpu", action="store_true", help="on-CPU samples only (no idle frames)")
    ap.add_argument(
        "--gil", action="store_true", help="samples of the thread holding the GIL only (no waits for it)"
    )
    args = ap.parse_args(argv)

    from ingest.consumer import ConsumerPool, stage_us_per_tx, throughput

    py_spy = Path(sys.executable).parent / "py-spy"
    if not py_spy.exists():
        sys.exit("py-spy is not installed: `make setup` installs requirements-dev.txt")
    base = Settings()
    topics = Topics(base)
    s = with_kafka(base, labels_topic=topics.new("labels"), decisions_topic=topics.new("decisions"),
                   alerts_topic=topics.new("alerts"), dlq_topic=topics.new("dlq"),
                   transactions_topic=topics.new("tx"))  # fmt: skip
    s = s.model_copy(update={"serve": s.serve.model_copy(update={"http_port": 18_100})})
    run = uuid.uuid4().hex[:6]
    records = Workload(args.count, seed=7, users=max(1_000, args.count // 10)).tagged(f"prof{run}")
    ids = [r["transaction_id"] for r in records]
    try:
        start_ray(s)
        deploy(s, api_key=uuid.uuid4().hex)
        print(f"produced {len(records)} in {produce(s, records):.1f} s")
        pool = ConsumerPool(s, 1, f"profile-{run}")
        deadline = time.monotonic() + 120
        while not (pids := actor_pids()) or not any(x["scored"] for x in pool.stats()):
            if time.monotonic() > deadline:
                sys.exit("the consumer actor did not start scoring within 120 s")
            time.sleep(0.5)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        fmt = "raw" if args.out.suffix == ".txt" else "flamegraph"
        cmd = [str(py_spy), "record", *([] if args.cpu or args.gil else ["--idle"]),
               *(["--gil"] if args.gil else []), "--rate", "100",
               "--duration", str(int(args.seconds)), "--format", fmt, "--output", str(args.out),
               "--pid", str(pids[0])]  # fmt: skip
        spy = threading.Thread(target=subprocess.run, args=(cmd,), kwargs={"check": True})
        spy.start()
        stats = pool.drain(timeout=900)
        spy.join()
        checked = check(s, ids)
        print(f"{throughput(stats):,.0f} tx/s, exactly once: {checked['exactly_once']}")
        print("µs/tx per stage:", {k: round(v) for k, v in stage_us_per_tx(stats).items()})
        print(f"flame graph: {args.out}")
    finally:
        stages.delete_rows(s, ids)
        topics.close()
        ray_client.shutdown()  # the private Ray goes down, Serve and all


if __name__ == "__main__":
    main()
