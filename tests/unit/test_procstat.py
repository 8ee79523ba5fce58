"""The whole-box CPU snapshot the HTTP benchmark divides by answered requests."""

from __future__ import annotations

import os
import time

from benchmarks import procstat


def test_box_snapshot_names_processes_and_usage_counts_the_cpu_they_spent() -> None:
    before = procstat.box_snapshot()
    me = before[os.getpid()]
    assert me.group.startswith("python") and me.rss > 0  # by program name, not "ray other"
    assert all(p.group and not p.group.endswith(":") for p in before.values())
    t0 = time.process_time()
    while time.process_time() - t0 < 0.3:  # burn 0.3 s of CPU in this process
        pass
    used = procstat.usage(before, procstat.box_snapshot(), 0.5)
    assert used[me.group]["cpu_s"] >= 0.25
