"""The floor of Serve's HTTP path on this box: what `GET /predict` could reach if scoring cost nothing.

Deploys, on a private local Ray, a FastAPI ingress that answers ``/predict`` with a constant
(``--what constant``) or with the user's stored features read from Redis
(``--what redis``, the first half of the real ``/predict``), with the app's own proxy settings,
and offers it the same open-loop load as ``fraudray bench`` (benchmarks/http_load.py). Whatever
the real ``/predict`` adds — the Ensemble and its three models — comes on top of these figures.

    .venv/bin/python -m benchmarks.http_floor --rps 100 300 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import uuid
from typing import Any

from core.ray_client import ray_env

os.environ.update(ray_env())  # token auth and Serve's fast path, before anything imports ray

from core.ports import free_port
from core.settings import get_settings


def build(what: str, redis_url: str) -> Any:
    from fastapi import FastAPI
    from ray import serve

    api = FastAPI()

    @serve.deployment(ray_actor_options={"num_cpus": 0.2}, max_ongoing_requests=256)
    @serve.ingress(api)
    class Floor:
        def __init__(self) -> None:
            from features.online import OnlineStore

            self.store = OnlineStore(redis_url)

        @api.get("/predict")
        async def predict(self, user_id: str) -> dict[str, Any]:
            if what == "constant":
                return {"user_id": user_id, "anomaly_score": 0.0}
            vector = await asyncio.to_thread(self.store.read_latest, user_id)
            return {"user_id": user_id, "features": [] if vector is None else vector.tolist()}

    return Floor.bind()  # type: ignore[attr-defined]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rps", type=float, nargs="+", default=[100.0, 300.0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--what", choices=("constant", "redis"), nargs="+", default=["constant", "redis"])
    ap.add_argument("--users", type=int, default=1000)
    args = ap.parse_args()

    from ray import serve

    from benchmarks.e2e import start_ray
    from benchmarks.http_load import open_loop, predict_requests, seed_users
    from features.online import OnlineStore

    settings = get_settings()
    redis_url = settings.redis.url.get_secret_value()
    tag = f"floor{uuid.uuid4().hex[:6]}"
    requests = predict_requests(seed_users(args.users, tag))
    start_ray(settings)  # as `fraudray bench` does: private, no dashboard competing for the cores
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        for what in args.what:
            serve.run(build(what, redis_url), name=f"floor-{what}", route_prefix="/")
            for rps in args.rps:
                row = asyncio.run(open_loop(f"http://127.0.0.1:{port}", "", requests, rps, args.seconds))
                print(json.dumps({"what": what, **row}), flush=True)
            serve.delete(f"floor-{what}")
    finally:
        serve.shutdown()
        import ray

        ray.shutdown()
        OnlineStore(redis_url).drop_population(tag)


if __name__ == "__main__":
    main()
