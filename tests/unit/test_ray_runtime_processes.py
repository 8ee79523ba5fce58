"""The process-tree helpers `stop_head` (and the fault suite) use to stop only our own Ray
processes: a real tree of processes under a shell, found from its root and nothing else."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from core.procs import process_table, with_descendants


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
