"""`serve deploy deploy/serve_config.yaml` the way ray_cluster.yaml and the compose entry
point run it: through the dashboard's REST API of a token-protected Ray head, with the app's
settings (API keys included) taken from the node's FRAUDRAY_* environment, not from the
config (its `args` stay empty). Only sizes and ports are adapted to this box. A private head
(own GCS and dashboard ports, own temp dir), stopped by pid, never with `ray stop`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cluster.first_start import ensure_models
from core import ray_client
from core.families import SCORER_DEPLOYMENT
from core.ports import free_port
from core.settings import REPO_ROOT, Settings
from tests.integration.test_multinode import RAY, SERVE, run_checked, stop_nodes, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]

API_KEY = "deploy-test-key"


@dataclass(frozen=True)
class Head:
    dashboard: str  # http://127.0.0.1:<port>
    http_port: int  # where the Serve proxy will listen
    env: dict[str, str]  # the node's environment (token auth on, FRAUDRAY_API_KEYS)
    config_dir: Path


@pytest.fixture
def head(local_stack: Settings) -> Iterator[Head]:
    ensure_models(local_stack)  # the app takes the registry's production model, as on a cluster
    temp_dir = Path(tempfile.mkdtemp(prefix="frdp-", dir="/tmp"))
    gcs, dashboard = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_ADDRESS", "FRAUDRAY_"))}
    # What ray_cluster.yaml's env file and the compose file give every node.
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=ray_client.ensure_token(), FRAUDRAY_API_KEYS=API_KEY)
    try:
        run_checked([RAY, "start", "--head", "--port", str(gcs), "--num-cpus", "2",
                     "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp_dir),
                     "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dashboard),
                     "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", "0",
                     "--metrics-export-port", str(free_port()), "--object-store-memory",
                     str(256 * 1024 * 1024), "--disable-usage-stats"], env)  # fmt: skip
        yield Head(f"http://127.0.0.1:{dashboard}", free_port(), env, temp_dir)
    finally:
        stop_nodes(temp_dir, gcs)
        subprocess.run(["rm", "-rf", str(temp_dir)], check=False)


def _config_for_this_box(http_port: int) -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((REPO_ROOT / "deploy" / "serve_config.yaml").read_text())
    config["http_options"] = {"host": "127.0.0.1", "port": http_port}
    (app,) = config["applications"]
    assert app["args"] == {}, "the shipped config carries no settings: they come from the nodes"
    for d in app["deployments"]:
        d["ray_actor_options"] = {"num_cpus": 0.25}
        d["autoscaling_config"].update(min_replicas=1, max_replicas=1)
    return config


def test_serve_deploy_of_the_config_through_the_token_protected_dashboard(head: Head) -> None:
    config = head.config_dir / "serve_config.yaml"
    config.write_text(yaml.safe_dump(_config_for_this_box(head.http_port)))
    deploy = [SERVE, "deploy", str(config), "--address", head.dashboard]

    refused = subprocess.run(deploy, env={**head.env, "RAY_AUTH_TOKEN": "not-the-token"},
                             capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert refused.returncode != 0, "the dashboard must refuse a wrong token"
    run_checked(deploy, head.env)

    base = f"http://127.0.0.1:{head.http_port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, 180, "Serve app fraud healthy after serve deploy")
    status = run_checked([SERVE, "status", "--address", head.dashboard], head.env).stdout
    assert SCORER_DEPLOYMENT in status and "RUNNING" in status, status

    tx = {"transaction_id": "deploy-test-1", "user_id": "u-deploy", "merchant_id": "m1", "amount": 42.5,
          "currency": "EUR", "event_time": datetime.now(UTC).isoformat(), "country": "DE"}  # fmt: skip
    assert httpx.post(f"{base}/score", json=tx, timeout=30).status_code == 401, "keys from FRAUDRAY_API_KEYS"
    scored = httpx.post(f"{base}/score", json=tx, headers={"X-API-Key": API_KEY}, timeout=30)
    assert scored.status_code == 200, scored.text
    (out,) = scored.json()
    assert out["transaction_id"] == "deploy-test-1" and isinstance(out["anomaly_score"], float)
    assert out["model_version"]
