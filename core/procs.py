"""Processes and ports of this machine: is a pid alive, is a port open, which processes
descend from which (to stop exactly what we started, or to account for their CPU)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return False


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


def service_pids(var_dir: Path) -> dict[str, int]:
    """The live services of the local stack, by name, from their pid files (``var/run/NAME.pid``,
    written by ``cluster.stack``)."""
    found: dict[str, int] = {}
    for pid_file in sorted((var_dir / "run").glob("*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if pid_alive(pid):
            found[pid_file.stem] = pid
    return found
