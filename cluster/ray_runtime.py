"""Ray bring-up on this machine: start (or reuse) a local head with the dashboard and the
metrics export, and stop exactly the processes of that head. Connecting to Ray (address, token,
environment) is ``core.ray_client``."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from core.errors import StackError
from core.procs import pid_alive, port_open, process_table, with_descendants
from core.ray_client import ensure_token, head_address, ray_cli, ray_env
from core.settings import Settings


def head_running(settings: Settings) -> bool:
    """A Ray head answers on the configured port. Nothing listening there answers at once:
    `ray status` would retry the GCS connection for ~40 s before saying no (measured
    2026-12-05: 41.5 s of `make run`'s 46 s "Ray head" step on a box without one)."""
    if not settings.ray.address and not port_open(settings.ray.head_port):
        return False
    out = subprocess.run(
        [ray_cli(), "status", "--address", head_address(settings)],
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
        ray_cli(), "start", "--head",
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
    session = head_session(settings.ray.head_port, process_table())
    if session is None:
        raise StackError(f"`ray start --head` returned but no GCS server listens on port {r.head_port}")
    _session_file(settings).parent.mkdir(parents=True, exist_ok=True)
    _session_file(settings).write_text(session)
    return "started"


def head_session(port: int, table: dict[int, tuple[int, str]]) -> str | None:
    """The session directory of the head whose GCS server has ``port``, from that process's
    command line. Not ``<temp dir>/session_latest``: every Ray started on the box moves that link
    (the test suite's private instances, other users'), and a head that recorded another's
    session made ``stop_head`` stop *that* Ray and leave its own GCS server running (seen
    2026-12-04: a `make run` stopped a benchmark's Ray started 4 s after its own head)."""
    port_arg = re.compile(rf"--gcs_server_port={port}(?!\d)")
    for _ppid, cmd in table.values():
        if "gcs_server" in cmd and port_arg.search(cmd):
            found = re.search(r"--session-dir=(\S+)", cmd)
            if found:
                return found.group(1)
    return None


def _session_file(settings: Settings) -> Path:
    return settings.var_dir / "run" / "ray-head.session"


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
