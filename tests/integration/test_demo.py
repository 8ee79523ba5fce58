"""`make run` (`fraudray demo`) end to end: it scores a live stream into PostgreSQL, answers
/predict with its API key, and a SIGTERM stops it cleanly (producer, consumers, dashboard, Serve,
the Ray head it started), also when it was started with SIGINT ignored, as `make run &` from a
script or nohup start it."""

from __future__ import annotations

import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psycopg2
import pytest

from cluster.demo import api_key
from core.settings import REPO_ROOT, Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FRAUDRAY = str(Path(sys.executable).parent / "fraudray")
STEPS = ("local stack", "Ray head", "connecting to Ray", "models:", "Serve app", "consumer actors",
         "analyst dashboard", "producer:")  # fmt: skip


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _id_prefix(seed: int) -> str:
    """What the demo's transaction ids start with for ``seed`` (the simulator derives them from it)."""
    from ingest.simulator import demo_transactions

    first = next(demo_transactions(1, seed=seed, users=5000))["transaction_id"]
    return first.rsplit("-", 1)[0] + "-"


def _decided(settings: Settings, prefix: str) -> tuple[int, str | None]:
    """This demo's transactions decided so far. Not "everything ingested since the start":
    other test runs and benchmarks share the database and decide thousands a minute (the demo
    was asked for /predict 19 s after starting, before its Serve app was up)."""
    with psycopg2.connect(settings.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT count(*), max(t.user_id) FROM transactions t JOIN decisions d USING (transaction_id)"
            " WHERE t.transaction_id LIKE %s",
            (prefix + "%",),
        )
        n, user = cur.fetchone()
    conn.close()
    return int(n), user


@pytest.mark.timeout(600)
def test_make_run_scores_a_stream_and_stops_cleanly_on_sigterm(local_stack: Settings) -> None:
    s = local_stack
    for port in (s.ray.head_port, s.serve.http_port):
        assert not _listening(port), f"port {port} is taken: is `make run` already running?"
    seed = secrets.randbelow(2**31)  # ids of this run only, never an earlier one's
    prefix = _id_prefix(seed)
    proc = subprocess.Popen(
        [FRAUDRAY, "demo", "--rate", "200", "--actors", "1", "--seed", str(seed)],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),  # noqa: PLW1509 - the point
    )
    try:
        deadline = time.monotonic() + 400
        decided, user = 0, None
        while decided < 500:
            assert proc.poll() is None, f"demo exited early:\n{proc.stdout.read() if proc.stdout else ''}"
            assert time.monotonic() < deadline, f"only {decided} transactions decided"
            time.sleep(3)
            decided, user = _decided(s, prefix)
        r = httpx.get(
            f"http://127.0.0.1:{s.serve.http_port}/predict",
            params={"user_id": user},
            headers={"X-API-Key": api_key(s)},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["user_id"] == user
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out[-3000:]
    assert "stopped producer, consumers, dashboard, Serve, Ray and the stack" in out, out[-3000:]
    # Every start-up step says what it does, then how long it took, in order, on the terminal
    # and in var/log/demo.log (issue #26: a silent 4-minute Serve redeploy).
    log = (s.var_dir / "log" / "demo.log").read_text()
    for text in (out, log[log.rindex("fraudray demo starting") :]):
        at = [text.find(f"] {step}") for step in STEPS]
        assert -1 not in at and at == sorted(at), (at, text[-3000:])
        assert text.count("done in ") >= len(STEPS), text[-3000:]
        assert text.find("ready in ") > at[-1]
    assert not _listening(s.ray.head_port) and not _listening(s.serve.http_port)
