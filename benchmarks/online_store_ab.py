"""A/B of the online store's features stage: another version of the store (e.g. the Lua one of
commit afc7124, ``git show afc7124:features/online.py > DIR/online_old.py``) against the
current one, on the same workload at the consumer's batch size, in interleaved pairs.

Prints µs/tx of wall time, of this process's CPU (the actor's share) and of Redis's CPU
(``INFO cpu``), with the 1-minute load. Point ``--redis`` at a private instance
(``redis-server --port 6391 --save ''``): Redis's CPU is only this run's there.

    .venv/bin/python -m benchmarks.online_store_ab --old-dir DIR --redis redis://127.0.0.1:6391/0
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import time
import uuid
from typing import Any

import redis

from features.online import OnlineStore
from ingest.simulator import demo_transactions, retag


def _old_store(directory: str) -> Any:
    spec = importlib.util.spec_from_file_location("online_old", os.path.join(directory, "online_old.py"))
    if spec is None or spec.loader is None:
        raise SystemExit(f"no online_old.py in {directory}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OnlineStore


def _run(cls: Any, label: str, base: list[dict[str, Any]], url: str, batch: int) -> None:
    r = redis.Redis.from_url(url)
    ns = f"ab{uuid.uuid4().hex[:8]}"
    records = list(retag(base, ns, ("transaction_id", "user_id", "merchant_id")))
    store = cls(url, namespace=ns)
    warm, rest = records[: len(records) // 5], records[len(records) // 5 :]
    for i in range(0, len(warm), batch):
        store.update_and_compute(warm[i : i + batch])

    def redis_cpu() -> float:
        info: dict[str, float] = r.info("cpu")
        return info["used_cpu_sys"] + info["used_cpu_user"]

    c0, r0, w0 = time.process_time(), redis_cpu(), time.perf_counter()
    for i in range(0, len(rest), batch):
        store.update_and_compute(rest[i : i + batch])
    c1, r1, w1 = time.process_time(), redis_cpu(), time.perf_counter()
    k = len(rest) / 1e6
    print(
        f"{label}: wall {(w1 - w0) / k:6.1f}  actor CPU {(c1 - c0) / k:6.1f}  Redis CPU {(r1 - r0) / k:6.1f}"
        f" µs/tx  (load1 {os.getloadavg()[0]:.1f})",
        flush=True,
    )
    for key_batch in _chunks(list(r.scan_iter(f"{ns}:*", count=5000)), 5000):
        r.delete(*key_batch)


def _chunks(items: list[Any], n: int) -> list[list[Any]]:
    return [items[i : i + n] for i in range(0, len(items), n)]


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--old-dir", required=True, help="directory holding online_old.py")
    ap.add_argument("--redis", required=True, help="a private Redis URL")
    ap.add_argument("--count", type=int, default=30_000)
    ap.add_argument("--users", type=int, default=2_000)
    ap.add_argument("--batch", type=int, default=2_000)
    ap.add_argument("--pairs", type=int, default=3)
    args = ap.parse_args()
    old = _old_store(args.old_dir)
    base = list(demo_transactions(args.count, seed=1, users=args.users))
    for _ in range(args.pairs):
        _run(old, "old", base, args.redis, args.batch)
        _run(OnlineStore, "new", base, args.redis, args.batch)


if __name__ == "__main__":
    main()
