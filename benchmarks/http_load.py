"""HTTP /predict latency under an open-loop load, and DeploymentHandle throughput.

Open loop: requests start on a fixed schedule (``--rps``) whatever the server's latency, so a
slow server shows up as latency, not as a lower offered rate (closed-loop generators hide it).

    # against a running app (fraudray serve / make run), users from the online store:
    .venv/bin/python -m benchmarks.http_load http --url http://127.0.0.1:8000 --key KEY \\
        --rps 100 300 --seconds 20
    # handle throughput (rows/s) at batch 1, 100, 1000 (the Ensemble, as the consumer calls it):
    .venv/bin/python -m benchmarks.http_load handle --batch 1 100 1000 --seconds 10

Both connect to the configured Ray cluster (FRAUDRAY_RAY_ADDRESS or the local head); ``http``
first writes ``--users`` users into the online store so /predict has something to read.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "token")
RAY_WORKER_NICENESS = 15  # Ray starts its worker processes at this niceness


def seed_users(n: int, tag: str) -> list[str]:
    """``n`` users ``<tag>-u<i>`` with one transaction each in the online store (drop them
    afterwards with ``OnlineStore.drop_population(tag)``)."""
    from cluster.settings import get_settings
    from features.online import OnlineStore

    now = datetime.now(UTC)
    records: list[dict[str, Any]] = [
        {"transaction_id": f"{tag}-{i}", "user_id": f"{tag}-u{i}", "merchant_id": f"{tag}-m{i % 50}",
         "amount": float(10 + i % 500), "currency": "EUR", "event_time": now - timedelta(seconds=i),
         "country": "FR", "channel": "online", "device_id": None, "merchant_category": "grocery",
         "lat": None, "lon": None, "ip": None}
        for i in range(n)
    ]  # fmt: skip
    OnlineStore(get_settings().redis.url.get_secret_value()).update_and_compute(records)
    return [str(r["user_id"]) for r in records]


async def open_loop(url: str, key: str, users: list[str], rps: float, seconds: float) -> dict[str, Any]:
    """``rps`` GET /predict a second for ``seconds``, on schedule whatever the latency.

    The generator shares the box with the server, so it is made light and polite: aiohttp
    (httpx cost ~3x the CPU per request here and became the bottleneck) and, for the duration,
    the niceness of Ray's workers (15), so that it does not starve the replicas it measures.
    """
    raised = max(0, RAY_WORKER_NICENESS - os.nice(0))
    os.nice(raised)
    try:
        return await _open_loop(url, key, users, rps, seconds)
    finally:
        with contextlib.suppress(PermissionError):  # only root may lower it again
            os.nice(-raised)


async def _open_loop(url: str, key: str, users: list[str], rps: float, seconds: float) -> dict[str, Any]:
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    sources: dict[str, int] = {}  # /predict's `source` of the answers: the stream's decision or scored
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=1000)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"X-API-Key": key}
    async with aiohttp.ClientSession(url, headers=headers, connector=connector, timeout=timeout) as http:

        async def one(i: int) -> None:
            t0 = time.perf_counter()
            try:
                async with http.get("/predict", params={"user_id": users[i % len(users)]}) as r:
                    body = await r.read()
                    outcome = "ok" if r.status == 200 else f"http {r.status}"
                if outcome == "ok":
                    source = str(json.loads(body).get("source", "?"))
                    sources[source] = sources.get(source, 0) + 1
            except Exception as exc:  # noqa: BLE001 - a failed request is a data point
                outcome = type(exc).__name__
            if outcome == "ok":
                latencies.append(time.perf_counter() - t0)
            else:
                errors[outcome] = errors.get(outcome, 0) + 1

        await asyncio.gather(*(one(i) for i in range(20)))  # warm the connections
        tasks = []
        start = time.perf_counter()
        n = int(rps * seconds)
        for i in range(n):
            delay = start + i / rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i)))
        sent_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    lat = np.asarray(latencies) * 1000
    return {
        "rps_offered": rps, "rps_sent": round(n / sent_s, 1), "rps_done": round(len(lat) / wall, 1),
        "requests": n, "errors": sum(errors.values()), "error_kinds": errors, "sources": sources,
        "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
        "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
    }  # fmt: skip


def handle_throughput(batch: int, seconds: float, concurrency: int) -> dict[str, Any]:
    from ray import serve

    from cluster.settings import get_settings
    from features.catalogue import FEATURE_NAMES
    from serve_deployments.app import SCORER_NAME

    handle = serve.get_deployment_handle(SCORER_NAME, get_settings().serve.app_name)
    rows = np.random.default_rng(0).normal(size=(batch, len(FEATURE_NAMES))).astype(np.float32)
    handle.score.remote(rows).result()  # warm
    done = 0
    start = time.perf_counter()
    pending = [handle.score.remote(rows) for _ in range(concurrency)]
    while time.perf_counter() - start < seconds:
        pending.pop(0).result()
        done += batch
        pending.append(handle.score.remote(rows))
    for p in pending:
        p.result()
        done += batch
    wall = time.perf_counter() - start
    return {
        "batch": batch,
        "in_flight": concurrency,
        "rows_per_s": round(done / wall),
        "calls_per_s": round(done / batch / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("http")
    h.add_argument("--url", default="http://127.0.0.1:8000")
    h.add_argument("--key", default="")
    h.add_argument("--rps", type=float, nargs="+", default=[100.0, 300.0])
    h.add_argument("--seconds", type=float, default=20.0)
    h.add_argument("--users", type=int, default=1000)
    d = sub.add_parser("handle")
    d.add_argument("--batch", type=int, nargs="+", default=[1, 100, 1000])
    d.add_argument("--seconds", type=float, default=10.0)
    d.add_argument("--in-flight", type=int, default=8)
    d.add_argument("--address", default="", help="Ray GCS address (default: the settings' cluster)")
    args = parser.parse_args()
    if args.cmd == "http":
        from cluster.settings import get_settings
        from features.online import OnlineStore

        tag = f"bench-{uuid.uuid4().hex[:6]}"
        users = seed_users(args.users, tag)
        try:
            for rps in args.rps:
                print(asyncio.run(open_loop(args.url, args.key, users, rps, args.seconds)), flush=True)
        finally:
            OnlineStore(get_settings().redis.url.get_secret_value()).drop_population(tag)
    else:
        from cluster import ray_runtime
        from cluster.settings import get_settings

        if args.address:
            import ray

            ray.init(address=args.address, namespace=get_settings().ray.namespace, log_to_driver=False)
        else:
            ray_runtime.init(get_settings(), log_to_driver=False)
        for batch in args.batch:
            print(handle_throughput(batch, args.seconds, args.in_flight), flush=True)


if __name__ == "__main__":
    main()
