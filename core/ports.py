"""A free TCP port for a server that binds it a moment later (private Ray heads, test stacks)."""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST = 20000


def _ephemeral_low() -> int:
    try:
        return int(_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on, picked below the kernel's ephemeral range.

    Binding port 0 returns a port from that range, and the kernel hands the same range to
    outgoing connections: one of those can take the port before its server binds it (the fault
    suite's Serve proxy once failed on "Failed to bind to address '127.0.0.1:39803'"). Below the
    range only another explicit bind can race us. Falls back to port 0 when the range starts
    too low to leave room."""
    low = _ephemeral_low()
    if low - _LOWEST >= 1000:
        for _ in range(200):
            port = random.randrange(_LOWEST, low)  # noqa: S311 - a port, not a secret
            with socket.socket() as sock:
                try:
                    sock.bind((host, port))
                except OSError:
                    continue
                return port
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
