"""Ray bring-up: start (or reuse) a local head with the dashboard and metrics export, or
connect to an existing cluster named by ``FRAUDRAY_RAY_ADDRESS``.

Token authentication stays on (``RAY_AUTH_MODE=token``): the token lives in
``~/.ray/auth_token`` (``ray get-auth-token``) and the dashboard answers 401 without it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from cluster.errors import StackError
from cluster.settings import Settings

TOKEN_PATH = Path.home() / ".ray" / "auth_token"


def _ray_cli() -> str:
    path = shutil.which("ray")
    if path is None:
        raise StackError("the `ray` CLI is not on PATH: run `make setup` and use .venv/bin")
    return path


def auth_env() -> dict[str, str]:
    """Environment that makes Ray clients and `ray start` use token auth."""
    return {"RAY_AUTH_MODE": "token"}


def ensure_token() -> str:
    """The cluster token, generated on first use (kept out of the repo, in ~/.ray)."""
    if not TOKEN_PATH.exists():
        subprocess.run([_ray_cli(), "get-auth-token", "--generate"], check=True, capture_output=True)
    return TOKEN_PATH.read_text().strip()


def head_address(settings: Settings) -> str:
    return settings.ray.address or f"127.0.0.1:{settings.ray.head_port}"


def head_running(settings: Settings) -> bool:
    out = subprocess.run(
        [_ray_cli(), "status", "--address", head_address(settings)],
        capture_output=True,
        text=True,
        env={**os.environ, **auth_env()},
        check=False,
        timeout=60,
    )
    return out.returncode == 0


def start_head(settings: Settings) -> str:
    """Start a local Ray head unless one answers already (or an external cluster is set)."""
    if settings.ray.address:
        return f"using existing cluster at {settings.ray.address}"
    ensure_token()
    if head_running(settings):
        return "already running"
    r = settings.ray
    cmd = [
        _ray_cli(), "start", "--head",
        "--node-ip-address", "127.0.0.1",
        "--port", str(r.head_port),
        "--dashboard-host", r.dashboard_host,
        "--dashboard-port", str(r.dashboard_port),
        "--metrics-export-port", str(r.metrics_export_port),
        "--num-cpus", str(r.num_cpus),
        "--object-store-memory", str(r.object_store_mb * 1024 * 1024),
        "--disable-usage-stats",
    ]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **auth_env()}, check=False)
    if out.returncode != 0:
        raise StackError(f"`ray start --head` failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    return "started"


def stop_head(settings: Settings) -> str:
    if settings.ray.address:
        return "external cluster left running"
    subprocess.run([_ray_cli(), "stop", "--force"], capture_output=True, check=False, timeout=120)
    return "stopped"


def init(settings: Settings, *, local: bool = False, log_to_driver: bool = True) -> None:
    """``ray.init`` for a driver: a private local instance, or the configured/managed head."""
    import ray

    if ray.is_initialized():
        return
    os.environ.update(auth_env())
    if local:
        ray.init(
            address="local",  # never attach to a head that `make run` may have started
            num_cpus=settings.ray.num_cpus,
            namespace=settings.ray.namespace,
            include_dashboard=False,
            object_store_memory=settings.ray.object_store_mb * 1024 * 1024,
            log_to_driver=log_to_driver,
        )
    else:
        ray.init(
            address=head_address(settings),
            namespace=settings.ray.namespace,
            log_to_driver=log_to_driver,
        )
