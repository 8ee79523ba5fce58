"""Online feature store cost: µs per transaction at batch 500 and Redis memory per user.

Streams simulated traffic (``ingest.simulator``: users paying ~3 times a day, labels arriving
0.5-1.5 x 2 days later) through ``OnlineStore.update_and_compute`` in batches, the way the
consumer does, into a private key namespace; measures the per-batch time once the 7-day
windows are full, then sums ``MEMORY USAGE`` over the namespace's keys. The keys are deleted
at the end (``--keep`` leaves them).

    .venv/bin/python benchmarks/feature_store.py --users 20000 --days 8

``--shards URL[,URL…]`` spreads the users over those Redis instances besides FRAUDRAY_REDIS_URL
(default: FRAUDRAY_REDIS_SHARDS); Redis's CPU and memory are then summed over the instances,
with the busiest instance's CPU beside the sum (the instances work in parallel).

The process runs with the consumer actor's garbage-collector settings (``ingest.consumer.
tune_gc``), so that the client CPU is what an actor pays: with CPython's defaults the
collector's passes add to it (docs/benchmarks.md, "2026-12-07 (fifth session)").
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script, this file's folder comes first on sys.path: put the repository root there
# instead so the project's packages import as they do everywhere else.
if Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse
import collections
import heapq
import os
import statistics
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import redis

from core.settings import Settings
from features.kernel import to_ms
from features.online import OnlineStore
from ingest.consumer import tune_gc


def _simulated(users: int, days: float, seed: int) -> tuple[Any, datetime]:
    from ingest.simulator import SimConfig, Simulator

    start = datetime.now(UTC) - timedelta(days=days)
    config = SimConfig(seed=seed, users=users, merchants=max(2000, users // 10), start=start)
    return Simulator(config), start


def _batches(
    sim: Any, size: int, end_ms: int
) -> Iterator[tuple[list[dict[str, Any]], list[int], list[bool]]]:
    """Consumer-sized batches of the simulated stream, with each record's label time and verdict."""
    buf: list[dict[str, Any]] = []
    lab: list[int] = []
    fraud: list[bool] = []
    for chunk in sim.chunks():
        lab_ms, is_fraud, _ = chunk.labels()
        for rec, at, f in zip(chunk.records(), lab_ms.tolist(), is_fraud.tolist(), strict=True):
            if to_ms(rec["event_time"]) >= end_ms:
                if buf:
                    yield buf, lab, fraud
                return
            buf.append(rec)
            lab.append(int(at))
            fraud.append(bool(f))
            if len(buf) == size:
                yield buf, lab, fraud
                buf, lab, fraud = [], [], []


def _redis_cpu(clients: list[redis.Redis]) -> np.ndarray:
    """CPU seconds of each Redis's main thread (not inflated by other processes holding the CPU)."""
    infos = [r.info("cpu") for r in clients]
    return np.array(
        [float(i["used_cpu_user_main_thread"]) + float(i["used_cpu_sys_main_thread"]) for i in infos]
    )


def _calls(clients: list[redis.Redis]) -> collections.Counter[str]:
    """Commands each Redis has run so far (scripts' inner calls included), summed by name."""
    out: collections.Counter[str] = collections.Counter()
    for r in clients:
        for name, stat in r.info("commandstats").items():
            out[name.removeprefix("cmdstat_")] += int(stat["calls"])
    return out


def _key_class(key: str, ns: str) -> str:
    parts = key[len(ns) + 1 :].split(":")
    if parts[0] == "u":
        return f"user:{parts[-1]}"
    if parts[0] == "m":
        return f"merchant:{parts[2] if len(parts) > 3 else parts[-1]}"  # :mc:<hour> -> merchant:mc
    return parts[0]


def memory_by_class(clients: list[redis.Redis], ns: str) -> tuple[dict[str, int], dict[str, int]]:
    """Bytes and key count per key class of the namespace (MEMORY USAGE ... SAMPLES 0), summed
    over the instances."""
    size: dict[str, int] = defaultdict(int)
    count: dict[str, int] = defaultdict(int)
    for r in clients:
        _memory_of(r, ns, size, count)
    return dict(size), dict(count)


def _memory_of(r: redis.Redis, ns: str, size: dict[str, int], count: dict[str, int]) -> None:
    batch: list[str] = []

    def flush() -> None:
        pipe = r.pipeline(transaction=False)
        for k in batch:
            pipe.memory_usage(k, samples=0)
        for k, b in zip(batch, pipe.execute(), strict=True):
            c = _key_class(k, ns)
            size[c] += int(b or 0)
            count[c] += 1
        batch.clear()

    for key in r.scan_iter(f"{ns}:*", count=5000):
        batch.append(key.decode())
        if len(batch) >= 2000:
            flush()
    if batch:
        flush()


@dataclass
class Run:
    """What one streaming run measured."""

    total: int = 0
    timed_tx: int = 0
    wall: list[float] = field(default_factory=list)  # seconds per timed batch
    client_cpu: float = 0.0
    redis_cpu: float = 0.0  # summed over the instances
    busiest_cpu: float = 0.0  # of the instance that spent the most
    label_s: float = 0.0
    run_s: float = 0.0
    last: list[dict[str, Any]] = field(default_factory=list)
    calls: collections.Counter[str] = field(default_factory=collections.Counter)  # over the timed days
    calls_tx: int = 0  # transactions (labels too) those calls served


def stream(
    store: OnlineStore, clients: list[redis.Redis], sim: Any, batch: int, *, end_ms: int, measure_from: int
) -> Run:
    """Labels due by each batch's last event, then the batch, as the consumer would."""
    run = Run()
    pending: list[tuple[int, str, bool]] = []  # (labelled_at ms, tx id, is_fraud)
    per_instance = np.zeros(len(clients))
    t_run = time.perf_counter()
    calls0: collections.Counter[str] | None = None
    for part, lab_ms, lab_fraud in _batches(sim, batch, end_ms):
        t_last = to_ms(part[-1]["event_time"])
        if calls0 is None and t_last >= measure_from:
            calls0 = _calls(clients)
        if calls0 is not None:
            run.calls_tx += len(part)
        due = []
        while pending and pending[0][0] <= t_last:
            at, tx, fraud = heapq.heappop(pending)
            due.append({"transaction_id": tx, "is_fraud": fraud, "labelled_at": at})
        t0 = time.perf_counter()
        store.apply_labels(due)
        run.label_s += time.perf_counter() - t0
        r0, c0, t0 = _redis_cpu(clients), time.process_time(), time.perf_counter()
        store.update_and_compute(part)
        elapsed, c1, r1 = time.perf_counter() - t0, time.process_time(), _redis_cpu(clients)
        if t_last >= measure_from and len(part) == batch:
            run.client_cpu += c1 - c0
            run.redis_cpu += float((r1 - r0).sum())
            per_instance += r1 - r0
            run.wall.append(elapsed)
            run.timed_tx += len(part)
        run.total += len(part)
        run.last = part
        for rec, at, fraud in zip(part, lab_ms, lab_fraud, strict=True):
            heapq.heappush(pending, (at, rec["transaction_id"], fraud))
    run.run_s = time.perf_counter() - t_run
    if calls0 is not None:
        run.calls = _calls(clients) - calls0
    run.busiest_cpu = float(per_instance.max())
    return run


def report(run: Run, args: argparse.Namespace, ns: str, size: dict[str, int], count: dict[str, int]) -> None:
    users = count.get("user:st", 0)  # the state key, one per user
    per_user = sum(b for c, b in size.items() if c.startswith("user:")) / max(users, 1)
    other = sum(b for c, b in size.items() if not c.startswith("user:"))
    per_batch_us = [t / args.batch * 1e6 for t in run.wall]
    print(
        f"namespace {ns}: {run.total:,} transactions, {args.users:,} users, {args.days} days, "
        f"{run.run_s:.0f} s"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(
        f"update_and_compute at batch {args.batch} (last {args.measure_days} d, {run.timed_tx:,} tx): "
        f"wall median {statistics.median(per_batch_us):.1f} µs/tx, min {min(per_batch_us):.1f}, "
        f"p95 {np.percentile(per_batch_us, 95):.1f}; CPU: client {run.client_cpu / run.timed_tx * 1e6:.1f} "
        f"+ Redis {run.redis_cpu / run.timed_tx * 1e6:.1f} µs/tx"
    )
    if args.instances > 1:
        busiest = run.busiest_cpu / run.timed_tx * 1e6
        print(f"  {args.instances} Redis instances: the busiest spent {busiest:.1f} µs/tx of its CPU")
    print(f"apply_labels: {run.label_s:.2f} s in total")
    if run.calls_tx:
        top = ", ".join(f"{name} {n / run.calls_tx:.2f}" for name, n in run.calls.most_common(8))
        print(f"Redis commands per transaction over the timed days (labels' included): {top}")
    for c in sorted(size):
        print(
            f"  {c:16s} {count[c]:>8,} keys {size[c] / 1e6:10.2f} MB  {size[c] / max(count[c], 1):8.0f} B/key"
        )
    print(
        f"user state: {users:,} users, {per_user:,.0f} B/user, "
        f"{per_user * 100_000 / 1e6:,.1f} MB per 100k users"
    )
    print(
        f"merchant state + tx->merchant map: {other / 1e6:.1f} MB, "
        f"{other / max(run.total, 1):.0f} B per tx seen"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--days", type=float, default=8.0, help="event time simulated")
    ap.add_argument("--measure-days", type=float, default=1.0, help="the last N days are timed")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--keep", action="store_true", help="leave the keys in Redis")
    ap.add_argument(
        "--state-cache-mb",
        type=int,
        default=0,
        help="MiB of the user states it wrote the store keeps (the consumer's consumer.state_cache_mb)",
    )
    ap.add_argument(
        "--shards",
        default=None,
        help="more Redis URLs to shard users over, comma-separated (default: settings)",
    )
    args = ap.parse_args()

    urls = Settings().redis.urls()
    if args.shards is not None:
        urls = [urls[0], *(u.strip() for u in args.shards.split(",") if u.strip())]
    args.instances = len(urls)
    ns = f"frbench{uuid.uuid4().hex[:8]}"
    store = OnlineStore(urls, namespace=ns, cache_bytes=args.state_cache_mb << 20)
    clients = [redis.Redis.from_url(u) for u in urls]
    sim, start = _simulated(args.users, args.days, args.seed)
    end_ms = to_ms(start + timedelta(days=args.days))
    tune_gc()
    try:
        run = stream(
            store,
            clients,
            sim,
            args.batch,
            end_ms=end_ms,
            measure_from=end_ms - int(args.measure_days * 86_400_000),
        )
        t0 = time.perf_counter()
        store.compute(run.last)  # POST /score: the same batch again, read-only
        compute_us = (time.perf_counter() - t0) / len(run.last) * 1e6
        size, count = memory_by_class(clients, ns)
        report(run, args, ns, size, count)
        print(f"compute (no update) at batch {len(run.last)}: {compute_us:.1f} µs/tx")
        if args.state_cache_mb:
            kept = store.kept_bytes / 2**20
            print(f"state cache: {store.cache_hits:,} user states read from it ({kept:.1f} MiB kept)")
    finally:
        if not args.keep:
            for r in clients:
                keys = list(r.scan_iter(f"{ns}:*", count=5000))
                for i in range(0, len(keys), 5000):
                    r.delete(*keys[i : i + 5000])


if __name__ == "__main__":
    main()
