"""Start and stop the dashboard's Streamlit server (``make run`` calls these through
``cluster/demo.py``): ``proc = start(settings)`` … ``stop(proc)``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from core.settings import Settings

DEFAULT_PORT = 8501
DEFAULT_ADDRESS = "127.0.0.1"
APP = Path(__file__).resolve().parent / "app.py"
REPO_ROOT = APP.parent.parent


def command(port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS) -> list[str]:
    """The argv of the server (static serving on: the map's country shapes come from it)."""
    return [
        sys.executable, "-m", "streamlit", "run", str(APP.relative_to(REPO_ROOT)),
        "--server.port", str(port),
        "--server.address", address,
        "--server.headless", "true",
        "--server.enableStaticServing", "true",
        "--client.toolbarMode", "minimal",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip


def url(port: int = DEFAULT_PORT, address: str = DEFAULT_ADDRESS) -> str:
    return f"http://{address}:{port}"


def start(
    settings: Settings,
    port: int = DEFAULT_PORT,
    log_path: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start the server in its own process group; output goes to ``var/log/dashboard.log``
    (or ``log_path``); ``env`` adds variables (e.g. ``FRAUDRAY_API_KEYS`` for /explain).
    Returns at once: see :func:`wait_ready`."""
    log_path = log_path or settings.var_dir / "log" / "dashboard.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command(port),
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {}), "PYTHONUNBUFFERED": "1"},
            start_new_session=True,
        )


def wait_ready(proc: subprocess.Popen[bytes], port: int = DEFAULT_PORT, timeout_s: float = 60.0) -> None:
    """Block until Streamlit's health endpoint answers ``ok``; raise if the process died first."""
    deadline = time.monotonic() + timeout_s
    health = f"{url(port)}/_stcore/health"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the dashboard exited with code {proc.returncode} (see its log)")
        try:
            if httpx.get(health, timeout=1.0).text.strip() == "ok":
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"the dashboard did not answer on {health} within {timeout_s:g} s")


def stop(proc: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    """SIGTERM the server's process group, then SIGKILL after ``timeout_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout_s)
