"""HTTP latency of GET /predict and POST /score under an open-loop load, and DeploymentHandle
throughput.

Open loop: requests start on a fixed schedule (``--rps``) whatever the server's latency, so a
slow server shows up as latency, not as a lower offered rate (closed-loop generators hide it).

    # against a running app (fraudray serve / make run), users from the online store:
    .venv/bin/python -m benchmarks.http_load http --url http://127.0.0.1:8000 --key KEY \\
        --rps 100 300 --seconds 20 [--endpoint score]
    # closed loop, 1/4/16 clients in flight, with every process's CPU per answered request:
    .venv/bin/python -m benchmarks.http_load http --key KEY --endpoint score --in-flight 1 4 16 \\
        --seconds 8 --cpu
    # handle throughput (rows/s) at batch 1, 100, 1000 (the Ensemble, as the consumer calls it):
    .venv/bin/python -m benchmarks.http_load handle --batch 1 100 1000 --seconds 10

Both connect to the configured Ray cluster (FRAUDRAY_RAY_ADDRESS or the local head); ``http``
first writes ``--users`` users into the online store so /predict has something to read (and
/score scores those users' transactions, one per request, without changing the store).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import numpy as np

from core.ray_client import ray_env

os.environ.update(ray_env())  # token auth and Serve's fast path, before anything imports ray
RAY_WORKER_NICENESS = 15  # Ray starts its worker processes at this niceness


ENDPOINTS = ("predict", "score")
# TransactionIn's fields: a workload record may carry more (the simulator's ground truth).
_TX_FIELDS = ("transaction_id", "user_id", "merchant_id", "amount", "currency", "event_time",
              "country", "device_id", "channel", "merchant_category", "lat", "lon", "ip")  # fmt: skip


class Request(NamedTuple):
    method: str
    path: str
    params: dict[str, str] | None
    body: bytes | None


def predict_requests(users: list[str]) -> list[Request]:
    return [Request("GET", "/predict", {"user_id": u}, None) for u in users]


def score_requests(transactions: list[dict[str, Any]]) -> list[Request]:
    """One transaction per POST /score, as a caller scoring a payment before it is sent on."""

    def body(tx: dict[str, Any]) -> bytes:
        out = {k: tx.get(k) for k in _TX_FIELDS}
        if isinstance(out["event_time"], datetime):
            out["event_time"] = out["event_time"].isoformat()
        return json.dumps(out).encode()

    return [Request("POST", "/score", None, body(tx)) for tx in transactions]


def seed_users(n: int, tag: str) -> list[str]:
    """``n`` users ``<tag>-u<i>`` with one transaction each in the online store (drop them
    afterwards with ``OnlineStore.drop_population(tag)``)."""
    return sorted({str(r["user_id"]) for r in seed_records(n, tag)})


def seed_records(n: int, tag: str) -> list[dict[str, Any]]:
    """The transactions of :func:`seed_users`, written into the online store."""
    from core.settings import get_settings
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
    return records


class _Tally:
    """What both generators record per request: latency of the answered ones, errors by kind,
    and /predict's `source` of each answer (the stream's decision or scored)."""

    def __init__(self) -> None:
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.sources: dict[str, int] = {}

    def clear(self) -> None:  # after a warm-up
        self.latencies.clear()
        self.errors.clear()
        self.sources.clear()

    async def send(self, http: Any, req: Request) -> None:
        t0 = time.perf_counter()
        try:
            async with http.request(req.method, req.path, params=req.params, data=req.body) as r:
                body = await r.read()
                outcome = "ok" if r.status == 200 else f"http {r.status}"
            if outcome == "ok" and req.path == "/predict":
                source = str(json.loads(body).get("source", "?"))
                self.sources[source] = self.sources.get(source, 0) + 1
        except Exception as exc:  # noqa: BLE001 - a failed request is a data point
            outcome = type(exc).__name__
        if outcome == "ok":
            self.latencies.append(time.perf_counter() - t0)
        else:
            self.errors[outcome] = self.errors.get(outcome, 0) + 1

    def row(self, endpoint: Request, wall: float) -> dict[str, Any]:
        lat = np.asarray(self.latencies) * 1000
        return {
            "endpoint": f"{endpoint.method} {endpoint.path}", "rps_done": round(len(lat) / wall, 1),
            "errors": sum(self.errors.values()), "error_kinds": self.errors,
            "p50_ms": round(float(np.percentile(lat, 50)), 1) if len(lat) else None,
            "p99_ms": round(float(np.percentile(lat, 99)), 1) if len(lat) else None,
        }  # fmt: skip


async def open_loop(
    url: str, key: str, requests: list[Request], rps: float, seconds: float
) -> dict[str, Any]:
    """``rps`` requests a second for ``seconds`` (``requests`` in turn), on schedule whatever
    the latency.

    The generator shares the box with the server, so it is made light and polite: aiohttp
    (httpx cost ~3x the CPU per request here and became the bottleneck) and, for the duration,
    the niceness of Ray's workers (15), so that it does not starve the replicas it measures.
    """
    raised = max(0, RAY_WORKER_NICENESS - os.nice(0))
    os.nice(raised)
    try:
        return await _open_loop(url, key, requests, rps, seconds)
    finally:
        with contextlib.suppress(PermissionError):  # only root may lower it again
            os.nice(-raised)


async def _open_loop(
    url: str, key: str, requests: list[Request], rps: float, seconds: float
) -> dict[str, Any]:
    import aiohttp

    tally = _Tally()
    connector = aiohttp.TCPConnector(limit=1000, limit_per_host=1000)
    timeout = aiohttp.ClientTimeout(total=30)
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    async with aiohttp.ClientSession(url, headers=headers, connector=connector, timeout=timeout) as http:
        await asyncio.gather(*(tally.send(http, requests[i % len(requests)]) for i in range(20)))  # warm
        tally.clear()
        tasks = []
        start = time.perf_counter()
        n = int(rps * seconds)
        for i in range(n):
            delay = start + i / rps - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(tally.send(http, requests[i % len(requests)])))
        sent_s = time.perf_counter() - start
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    return tally.row(requests[0], wall) | {
        "rps_offered": rps,
        "rps_sent": round(n / sent_s, 1),
        "requests": n,
        "sources": tally.sources,
    }


async def closed_loop(
    url: str, key: str, requests: list[Request], in_flight: int, seconds: float
) -> dict[str, Any]:
    """``in_flight`` clients, each sending its next request when the last one is answered, for
    ``seconds``: the throughput a server sustains at that concurrency (open_loop shows latency
    at a given rate instead)."""
    import aiohttp

    tally = _Tally()
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    connector = aiohttp.TCPConnector(limit=in_flight)
    async with aiohttp.ClientSession(url, headers=headers, connector=connector) as http:

        async def client(first: int, until: float) -> None:
            i = first
            while time.perf_counter() < until:
                await tally.send(http, requests[i % len(requests)])
                i += in_flight

        await asyncio.gather(*(client(i, time.perf_counter() + 1.0) for i in range(in_flight)))  # warm
        tally.clear()
        start = time.perf_counter()
        await asyncio.gather(*(client(i, start + seconds) for i in range(in_flight)))
        wall = time.perf_counter() - start
    return tally.row(requests[0], wall) | {
        "in_flight": in_flight,
        "requests": len(tally.latencies) + sum(tally.errors.values()),
    }


def with_box_cpu(run: Callable[[], dict[str, Any]], top: int = 8) -> dict[str, Any]:
    """``run()``'s row plus the CPU every process on the box used meanwhile, in ms per
    answered request: the ``top`` groups and the total (``procstat.box_snapshot``)."""
    from benchmarks import procstat

    before, t0 = procstat.box_snapshot(), time.monotonic()
    row = run()
    used = procstat.usage(before, procstat.box_snapshot(), time.monotonic() - t0)
    done = max(1, row["requests"] - row["errors"])
    per = {g: round(1000 * u["cpu_s"] / done, 2) for g, u in used.items()}
    return row | {
        "cpu_ms_per_request": dict(list(per.items())[:top]),
        "cpu_ms_per_request_total": round(sum(per.values()), 1),
    }


def handle_throughput(batch: int, seconds: float, concurrency: int) -> dict[str, Any]:
    from ray import serve

    from core.families import SCORER_DEPLOYMENT
    from core.settings import get_settings
    from features.catalogue import FEATURE_NAMES

    handle = serve.get_deployment_handle(SCORER_DEPLOYMENT, get_settings().serve.app_name)
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
    h.add_argument("--endpoint", choices=ENDPOINTS, default="predict")
    h.add_argument(
        "--in-flight", type=int, nargs="+", default=[],
        help="closed loop with N clients each (for --seconds) instead of the --rps sweep",
    )  # fmt: skip
    h.add_argument("--cpu", action="store_true", help="add every process's CPU per request")
    d = sub.add_parser("handle")
    d.add_argument("--batch", type=int, nargs="+", default=[1, 100, 1000])
    d.add_argument("--seconds", type=float, default=10.0)
    d.add_argument("--in-flight", type=int, default=8)
    d.add_argument("--address", default="", help="Ray GCS address (default: the settings' cluster)")
    args = parser.parse_args()
    if args.cmd == "http":
        from core.settings import get_settings
        from features.online import OnlineStore

        tag = f"bench-{uuid.uuid4().hex[:6]}"
        records = seed_records(args.users, tag)
        requests = (
            score_requests(records)
            if args.endpoint == "score"
            else predict_requests([str(r["user_id"]) for r in records])
        )

        def closed(n: int) -> dict[str, Any]:
            return asyncio.run(closed_loop(args.url, args.key, requests, n, args.seconds))

        def opened(rps: float) -> dict[str, Any]:
            return asyncio.run(open_loop(args.url, args.key, requests, rps, args.seconds))

        runs = [functools.partial(closed, n) for n in args.in_flight] or [
            functools.partial(opened, rps) for rps in args.rps
        ]
        try:
            for run in runs:
                print(with_box_cpu(run) if args.cpu else run(), flush=True)
        finally:
            OnlineStore(get_settings().redis.url.get_secret_value()).drop_population(tag)
    else:
        from core import ray_client
        from core.settings import get_settings

        if args.address:
            import ray

            ray.init(address=args.address, namespace=get_settings().ray.namespace, log_to_driver=False)
        else:
            ray_client.init(get_settings(), log_to_driver=False)
        for batch in args.batch:
            print(handle_throughput(batch, args.seconds, args.in_flight), flush=True)


if __name__ == "__main__":
    main()
