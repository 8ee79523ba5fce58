"""CPU seconds and resident memory per process group, read from /proc (Linux; no psutil).

A snapshot covers this driver and everything it started (a private local Ray: GCS, raylet,
workers, so the consumer actors and Serve replicas) plus the local stack's services and their
children (PostgreSQL backends). Ray workers are told apart by the title Ray gives them
(``ray::ConsumerActor.run``, ``ray::ServeReplica:fraud:Ensemble`` …).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Proc:
    group: str
    cpu_s: float
    rss: int


def _stat(pid: int) -> tuple[int, float, int] | None:
    """(ppid, user+system CPU seconds, RSS bytes) of ``pid``, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = raw[raw.rfind(")") + 2 :].split()
    return int(rest[1]), (int(rest[11]) + int(rest[12])) / _TICK, int(rest[21]) * _PAGE


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _group(cmd: str) -> str:
    """A stable name for what a Ray process is."""
    if cmd.startswith("ray::ConsumerActor"):
        return "consumer actors"
    if cmd.startswith("ray::ServeReplica:"):
        return "serve " + cmd.split(maxsplit=1)[0].rsplit(":", maxsplit=1)[-1].split(".", maxsplit=1)[0]
    for title, name in (
        ("ray::ServeController", "serve controller"),
        ("ray::ProxyActor", "serve proxy"),
        ("raylet", "ray raylet"),
        ("gcs_server", "ray gcs"),
        ("dashboard", "ray dashboard"),
    ):
        if title in cmd:
            return name
    return "ray other"


def snapshot(services: dict[str, int]) -> dict[int, Proc]:
    """Every process of this driver's tree and of each service's tree (``name -> pid``)."""
    stats: dict[int, tuple[int, float, int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            stats[int(entry.name)] = st
    children: dict[int, list[int]] = {}
    for pid, (ppid, _cpu, _rss) in stats.items():
        children.setdefault(ppid, []).append(pid)

    def tree(root: int) -> list[int]:
        out, todo = [], [root]
        while todo:
            pid = todo.pop()
            if pid in stats:
                out.append(pid)
                todo += children.get(pid, [])
        return out

    me = os.getpid()
    procs: dict[int, Proc] = {}
    for name, root in services.items():
        for pid in tree(root):
            procs[pid] = Proc(name, stats[pid][1], stats[pid][2])
    for pid in tree(me):
        group = "driver" if pid == me else _group(cmdline(pid))
        procs[pid] = Proc(group, stats[pid][1], stats[pid][2])
    return procs


def box_snapshot() -> dict[int, Proc]:
    """Every process on the machine, Ray's by their titles and the others by program name
    (``redis-server``, ``java``, ``postgres``, ``haproxy`` …): for a server someone else
    started (``fraudray serve``), where this driver's tree holds none of it."""
    procs: dict[int, Proc] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            cmd = cmdline(int(entry.name))
            if not cmd:  # kernel threads
                continue
            if cmd.startswith("ray::") or "/ray/" in cmd:
                group = _group(cmd)
            else:  # "postgres: fraudray …" is a PostgreSQL backend
                group = Path(cmd.split(maxsplit=1)[0]).name.rstrip(":")
            procs[int(entry.name)] = Proc(group, st[1], st[2])
    return procs


def usage(before: dict[int, Proc], after: dict[int, Proc], seconds: float) -> dict[str, dict[str, float]]:
    """Per group: cores used over ``seconds`` (CPU-seconds / wall), RSS in MiB at the end, and
    how many processes. A process born during the interval counts from zero."""
    out: dict[str, dict[str, float]] = {}
    for pid, p in after.items():
        row = out.setdefault(p.group, {"cores": 0.0, "cpu_s": 0.0, "rss_mib": 0.0, "processes": 0})
        start = before[pid].cpu_s if pid in before and before[pid].group == p.group else 0.0
        row["cpu_s"] += max(0.0, p.cpu_s - start)
        row["rss_mib"] += p.rss / 2**20
        row["processes"] += 1
    for row in out.values():
        row["cores"] = round(row["cpu_s"] / max(seconds, 1e-9), 3)
        row["cpu_s"] = round(row["cpu_s"], 2)
        row["rss_mib"] = round(row["rss_mib"], 1)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["cpu_s"]))
