"""The process-tree helpers `stop_head` (and the fault suite) use to stop only our own Ray
processes: a real tree of processes under a shell, found from its root and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

from core.ports import free_port
from core.procs import process_table, with_descendants
from core.settings import Settings


def test_with_descendants_finds_the_whole_tree_and_only_it() -> None:
    root = subprocess.Popen(["sh", "-c", "sleep 60 & sleep 60 & wait"])
    try:
        deadline = time.monotonic() + 10
        while True:
            table = process_table()
            tree = with_descendants({root.pid}, table)
            if len(tree) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert root.pid in tree and len(tree) == 3  # the shell and its two sleeps
        assert all("sleep" in table[pid][1] for pid in tree - {root.pid})
        assert os.getpid() not in with_descendants({os.getpid()}, table)  # never ourselves
    finally:
        for pid in with_descendants({root.pid}, process_table()):
            os.kill(pid, signal.SIGKILL)
        root.wait(10)


def test_zombies_are_left_out() -> None:
    child = subprocess.Popen(["true"])
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # exited but not reaped: a zombie
        with open(f"/proc/{child.pid}/stat") as stat:
            if stat.read().rsplit(")", 1)[1].split()[0] == "Z":
                break
        time.sleep(0.05)
    assert child.pid not in process_table()
    child.wait(10)


def test_the_head_session_is_read_from_its_gcs_server_not_session_latest() -> None:
    """`make run` records its head's session to stop exactly it later; session_latest moves with
    every Ray started on the box (a benchmark's private Ray started 4 s after make run's head
    was stopped in its place on 2026-12-04), so the session comes from the GCS server on the
    head's port."""
    from cluster.ray_runtime import head_session

    def gcs(port: int, session: str) -> str:
        name = session.rsplit("/", 1)[1]
        return (
            f"/venv/ray/core/src/ray/gcs/gcs_server --log_dir={session}/logs --gcs_server_port={port}"
            f" --session-name={name} --session-dir={session} --node-ip-address=x"
        )

    ours = "/tmp/ray/session_2026-12-04_16-07-25_1_29035"
    later = "/tmp/ray/session_2026-12-04_16-07-29_1_29153"
    table = {
        10: (1, gcs(6380, ours)),
        20: (1, gcs(0, later)),  # a private Ray: GCS on a random port (0 on its command line)
        30: (1, gcs(63801, later)),
        40: (10, f"/venv/raylet --gcs-address=127.0.0.1:6380 --session_dir={later}"),
    }
    assert head_session(6380, table) == ours
    assert head_session(6381, table) is None


def test_no_head_on_the_port_is_known_at_once_without_asking_ray_status(monkeypatch: Any) -> None:
    """`make run` asks whether a head already answers; with nothing on the port the answer is
    no, at once (`ray status` would retry for ~40 s before saying so)."""
    from cluster import ray_runtime

    def no_cli(*_a: Any, **_k: Any) -> Any:
        raise AssertionError("`ray status` run although nothing listens on the head port")

    monkeypatch.setattr(ray_runtime.subprocess, "run", no_cli)
    settings = Settings()
    free = settings.model_copy(update={"ray": settings.ray.model_copy(update={"head_port": free_port()})})
    assert ray_runtime.head_running(free) is False
