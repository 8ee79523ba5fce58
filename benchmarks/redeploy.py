"""How long a redeploy that changes only the API key takes, and whether it replaces replicas.

On a private local Ray (free ports: it never touches a `make run`), deploys the app with key A
the way `fraudray serve` / `make run` do (``serve_deployments.deploy.deploy``), then again with
key B, and reports both times, when the running app first accepted B, whether A is refused and
whether the replicas (ids and pids) are the same ones (issue #26; docs/serving.md).

    .venv/bin/python -m benchmarks.redeploy
"""

from __future__ import annotations

import os
import time
import uuid
from typing import Any

from core.ray_client import ray_env

os.environ.update(ray_env())  # token auth and Serve's fast path, before anything imports ray

from core.ports import free_port
from core.settings import get_settings


def _replicas(app_name: str) -> dict[str, Any]:
    """Running replicas of the app: replica id -> pid."""
    from ray.serve.context import _get_global_client

    client = _get_global_client()
    assert client is not None
    details = client.get_serve_details()["applications"][app_name]["deployments"]
    running = [r for d in details.values() for r in d["replicas"] if r["state"] == "RUNNING"]
    return {r["replica_id"]: r.get("pid") for r in running}


def run() -> dict[str, Any]:
    import httpx
    from ray import serve

    from core import ray_client
    from serve_deployments import deploy as serving

    base = get_settings()
    port = free_port()
    s = base.model_copy(update={"serve": base.serve.model_copy(update={"http_port": port})})
    ray_client.init(s, local=True, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/models"
    a, b = f"bench-a-{uuid.uuid4().hex}", f"bench-b-{uuid.uuid4().hex}"
    said: list[str] = []
    try:
        t0 = time.monotonic()
        serving.deploy(s, api_keys=[a])
        first = time.monotonic() - t0
        before = _replicas(s.serve.app_name)
        t0 = time.monotonic()
        serving.deploy(s, api_keys=[b], report=said.append)
        redeploy = time.monotonic() - t0
        while httpx.get(url, headers={"X-API-Key": b}, timeout=30).status_code != 200:
            time.sleep(0.1)
        accepted = time.monotonic() - t0
        return {
            "first_deploy_s": round(first, 1),
            "key_redeploy_s": round(redeploy, 1),
            "new_key_accepted_after_s": round(accepted, 1),
            "old_key_status": httpx.get(url, headers={"X-API-Key": a}, timeout=30).status_code,
            "replicas_unchanged": _replicas(s.serve.app_name) == before,
            "replicas": len(before),
            "change_kind": said[0] if said else "",
        }
    finally:
        ray_client.shutdown()  # the private Ray goes down, Serve and all


def main() -> None:
    import json

    print(json.dumps({"at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), **run()}, indent=2))


if __name__ == "__main__":
    main()
