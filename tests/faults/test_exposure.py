"""What the Ray cluster exposes: the dashboard and Serve's HTTP proxy default to 127.0.0.1
(settings); Serve's proxy is checked on the sockets of our own running cluster (which runs
without a dashboard to spare CPU), and every other listener of its processes is listed so that
docs/security.md can say which ports a firewall must cover."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from core.settings import Settings
from tests.faults.conftest import FaultEnv, cluster_pids, unless_left_out

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def _listeners() -> dict[int, tuple[str, int]]:
    """Socket inode -> (local address, port) of every listening TCP socket on the machine."""
    out: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], int(cols[9])
            if state != "0A":  # LISTEN
                continue
            addr_hex, port_hex = local.split(":")
            if len(addr_hex) == 8:
                addr = ".".join(str(int(addr_hex[i : i + 2], 16)) for i in (6, 4, 2, 0))
            else:
                addr = (
                    "::" if int(addr_hex, 16) == 0 else ("::1" if addr_hex.endswith("01000000") else addr_hex)
                )
            out[inode] = (addr, int(port_hex, 16))
    return out


def _ports_of(pids: set[int]) -> dict[int, set[str]]:
    """Listening port -> addresses, for the sockets these processes hold."""
    listeners = _listeners()
    found: dict[int, set[str]] = {}
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inode = int(target[8:-1])
                if inode in listeners:
                    addr, port = listeners[inode]
                    found.setdefault(port, set()).add(addr)
    return found


def test_defaults_bind_dashboard_and_serve_to_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("FRAUDRAY_RAY_DASHBOARD_HOST", "FRAUDRAY_SERVE_HTTP_HOST", "FRAUDRAY_RAY", "FRAUDRAY_SERVE"):
        monkeypatch.delenv(var, raising=False)
    s = Settings(_env_file=None)
    assert s.ray.dashboard_host == "127.0.0.1"
    assert s.serve.http_host == "127.0.0.1"


@unless_left_out
def test_running_cluster_listens_on_loopback_for_serve(
    fault_env: FaultEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    info, s = fault_env.ray, fault_env.stack.settings
    ports = _ports_of(cluster_pids(info.temp_dir, info.gcs_port))
    assert ports.get(s.serve.http_port) == {"127.0.0.1"}, ports
    wildcard = sorted(p for p, addrs in ports.items() if addrs & {"0.0.0.0", "::"})
    with capsys.disabled():
        print(f"\nRay listeners of our cluster: {dict(sorted(ports.items()))}; on all interfaces: {wildcard}")
