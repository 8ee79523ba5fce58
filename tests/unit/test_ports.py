"""core.ports.free_port: a bindable port below the kernel's ephemeral range, where outgoing
connections cannot take it between the pick and the server's bind."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from core import ports


def test_free_port_is_below_the_ephemeral_range_and_bindable() -> None:
    low = ports._ephemeral_low()
    for _ in range(20):
        port = ports.free_port()
        assert ports._LOWEST <= port < low
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_range_starting_too_low_falls_back_to_the_kernels_pick(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "ip_local_port_range"
    fake.write_text("1024\t65535\n")
    monkeypatch.setattr(ports, "_RANGE", fake)
    assert ports._ephemeral_low() == 1024
    assert 0 < ports.free_port() < 65536
