"""`make run` / `fraudray demo`: the whole pipeline on the local stack with live progress.

Brings up the stack and a Ray head, deploys Serve (quick model if the registry is empty),
starts the consumer actors and a producer, shows progress until Ctrl-C, then stops
everything it started. Every start-up step says what it does and how long it took, on the
terminal and in ``var/log/demo.log``.
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import psycopg2
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cluster import ray_runtime, stack
from cluster.drift import production_reference
from cluster.first_start import ensure_models
from cluster.learner import LearnerThread
from core import ray_client
from core.settings import Settings
from dashboards import launch
from serve_deployments import deploy as serving

if TYPE_CHECKING:
    from ingest.consumer import ConsumerPool

console = Console()


def api_key(settings: Settings) -> str:
    """The API key of `make run`: from FRAUDRAY_API_KEYS, else generated once into var/."""
    keys = settings.api.key_list()
    if keys:
        return keys[0]
    path = settings.var_dir / "api_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(24))
        path.chmod(0o600)
    return path.read_text().strip()


class Steps:
    """Start-up steps: each one printed when it starts and with its duration when it ends, on
    the terminal and appended to ``log_path`` (with wall-clock times), so a slow step is never
    a silent one."""

    def __init__(self, log_path: Path) -> None:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: TextIO = log_path.open("a", encoding="utf-8")
        self.log_path = log_path
        self.t0 = time.monotonic()
        self.durations: dict[str, float] = {}
        self.note(f"fraudray demo starting (log: {log_path})")

    def note(self, text: str) -> None:
        console.print(text, highlight=False)
        self._log.write(f"{datetime.now(UTC):%Y-%m-%d %H:%M:%S.%f}"[:-3] + f" {text}\n")
        self._log.flush()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self.note(f"[{len(self.durations) + 1}] {what} …")
        t0 = time.monotonic()
        with console.status(what):
            yield
        seconds = time.monotonic() - t0
        self.durations[what] = seconds
        self.note(f"    done in {seconds:.1f} s: {what}")

    def close(self) -> None:
        self._log.close()


class PacedProducer(threading.Thread):
    """Sends demo traffic at ``rate`` tx/s until stopped."""

    def __init__(self, settings: Settings, rate: float, seed: int) -> None:
        super().__init__(daemon=True, name="demo-producer")
        self.settings, self.rate, self.seed = settings, rate, seed
        self.stop_event = threading.Event()
        self.sent = 0

    def run(self) -> None:
        from ingest.producer import TransactionProducer, send_paced
        from ingest.simulator import demo_transactions

        producer = TransactionProducer(self.settings)
        stream = demo_transactions(10**12, seed=self.seed, users=5000, start=datetime.now(UTC))
        send_paced(
            producer, stream, rate=self.rate, stop=self.stop_event.is_set, restamp=True,
            on_progress=lambda sent, _t: setattr(self, "sent", sent),
        )  # fmt: skip


def _decision_counts(settings: Settings) -> tuple[int, int]:
    """Decisions and alerts in PostgreSQL, all time (every run so far, this one included)."""
    with psycopg2.connect(settings.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(*) FILTER (WHERE is_fraud) FROM decisions")
        total, fraud = cur.fetchone()
    conn.close()
    return int(total), int(fraud)


def counters_table(
    produced: int, stats: list[dict[str, Any]], tps: float, all_time: tuple[int, int]
) -> Table:
    """The live table: this run's counters side by side, all-time totals in a row of their own
    (never one scope next to the other unlabelled: consumed could then exceed produced)."""
    consumed = sum(s["polled"] for s in stats)
    table = Table("scope", "produced", "consumed", "scored", "DLQ", "alerts", "tx/s", title="counters")
    table.add_row(
        "this run", f"{produced:,}", f"{consumed:,}", f"{sum(s['scored'] for s in stats):,}",
        f"{sum(s['dead_lettered'] for s in stats):,}", f"{sum(s['alerts'] for s in stats):,}", f"{tps:,.0f}",
    )  # fmt: skip
    total, fraud = all_time
    table.add_row("all time (PostgreSQL)", "", "", f"{total:,}", "", f"{fraud:,}", "")
    if consumed > produced:
        table.caption = (
            f"this run consumed {consumed - produced:,} records more than it produced: "
            "a backlog left in Kafka by earlier runs"
        )
    return table


def _urls(settings: Settings, key: str) -> Table:
    t = Table.grid(padding=(0, 2))
    api = f"http://{settings.serve.http_host}:{settings.serve.http_port}"
    t.add_row("API", f"{api}/docs   (header X-API-Key: {key})")
    t.add_row("", f"curl -H 'X-API-Key: {key}' '{api}/predict?user_id=u0000001'")
    t.add_row(
        "Ray dashboard",
        f"http://{settings.ray.dashboard_host}:{settings.ray.dashboard_port}   "
        "(token auth: paste the output of `.venv/bin/ray get-auth-token`)",
    )
    t.add_row("Analyst dashboard", f"{launch.url()}   (Streamlit: fraud by country, risk, trends, models)")
    t.add_row("Prometheus", f"http://127.0.0.1:{settings.prometheus.port}")
    t.add_row("Alertmanager", f"http://127.0.0.1:{settings.alertmanager.port}")
    t.add_row("Logs", f"{settings.var_dir / 'log'}/ and {settings.ray.temp_dir}/session_latest/logs/")
    return t


def _live(
    settings: Settings,
    key: str,
    pool: ConsumerPool,
    producer: PacedProducer,
    duration: float | None,
    *,
    learner: LearnerThread | None = None,
) -> None:
    """Refresh the URLs and the pipeline's counters every second until ``duration`` or Ctrl-C."""
    t0 = time.monotonic()
    last_scored, last_t = 0, t0
    tps = 0.0
    with Live(console=console, refresh_per_second=2) as live:
        while duration is None or time.monotonic() - t0 < duration:
            time.sleep(1.0)
            stats = pool.stats()
            scored = sum(s["scored"] for s in stats)
            now = time.monotonic()
            tps = (scored - last_scored) / (now - last_t)
            last_scored, last_t = scored, now
            table = counters_table(producer.sent, stats, tps, _decision_counts(settings))
            live.update(
                Group(
                    Panel(_urls(settings, key), title="fraudray is running — Ctrl-C stops everything"),
                    table,
                    *([Text(f"learning loop: {learner.status}")] if learner is not None else []),
                )
            )


def _live_and_learn(
    settings: Settings, key: str, pool: ConsumerPool, producer: PacedProducer, duration: float | None,
    *, steps: Steps,
) -> None:  # fmt: skip
    """The live view with the learning loop (``cluster.learner``, FRAUDRAY_LEARN_*) running
    beside it; the loop is stopped first when the view ends (Serve still up: a round that is
    running may be swapping)."""
    learner = LearnerThread(settings)
    learner.start()
    steps.note(f"learning loop started: {learner.status}")
    try:
        _live(settings, key, pool, producer, duration, learner=learner)
    finally:
        if learner.is_alive():
            steps.note("stopping the learning loop (a round that is running finishes first) …")
        learner.stop()
        steps.note(f"learning loop stopped; last: {learner.status}")


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _bring_up(settings: Settings, steps: Steps) -> tuple[list[str], bool]:
    """The stack and Ray: returns the services that were up before and whether the head is ours."""
    with steps.step("local stack (PostgreSQL, Redis, Kafka, Schema Registry, Prometheus, Alertmanager)"):
        already_up = [name for name, svc in stack.services(settings).items() if svc.pid() is not None]
        stack.up(settings)
    with steps.step("Ray head"):
        head_started = ray_runtime.start_head(settings) == "started"
    steps.note(f"    Ray head {'started' if head_started else 'already running: reused'}")
    with steps.step("connecting to Ray"):
        # Actor and replica logs would tear the live display; they stay in Ray's log folder.
        ray_client.init(settings, log_to_driver=False)
    return already_up, head_started


def run(settings: Settings, *, rate: float, actors: int, seed: int | None, duration: float | None) -> None:

    from ingest.consumer import ConsumerPool

    key = api_key(settings)
    steps = Steps(settings.var_dir / "log" / "demo.log")
    already_up, head_started = _bring_up(settings, steps)
    settings = stack.with_schema_registry(settings)  # producer and consumers use the stack's registry
    steps.note(f"    Schema Registry: {settings.kafka.schema_registry_url}")
    # Ctrl-C and `kill` (SIGTERM, as process managers stop things) both end in the clean stop
    # below, also when this process was started with SIGINT ignored (`make run &` from a script,
    # nohup: Python then installs no Ctrl-C handler). After ray.init: Ray's driver installs a
    # SIGTERM handler that aborts the process.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    producer: PacedProducer | None = None
    pool: ConsumerPool | None = None
    dashboard = None
    try:
        with steps.step("models: checking the registry (training quick models if it has none)"):
            ensure_models(settings)
        with steps.step(f"Serve app {settings.serve.app_name!r}: deploying"):
            serving.deploy(settings, api_keys=[key], report=steps.note)
        with steps.step(f"consumer actors: starting {actors}"):
            pool = ConsumerPool(settings, actors, drift_reference=production_reference)
            pool.assignments()  # returns once every actor is constructed (consumer built)
        with steps.step(f"analyst dashboard on {launch.url()}"):
            dashboard = launch.start(settings, env={"FRAUDRAY_API_KEYS": key})
            launch.wait_ready(dashboard)
        with steps.step(f"producer: {rate:,.0f} tx/s of simulated traffic"):
            # Transaction ids derive from the seed: a fixed seed on a second run would replay
            # ids the database already has, and the idempotent sinks would (rightly) ignore them.
            producer = PacedProducer(settings, rate, seed if seed is not None else secrets.randbelow(2**31))
            producer.start()
        steps.note(f"ready in {time.monotonic() - steps.t0:.1f} s")
        _live_and_learn(settings, key, pool, producer, duration, steps=steps)
    except KeyboardInterrupt:
        steps.note("stopping …")
    finally:
        if producer is not None:
            producer.stop_event.set()
            producer.join(timeout=30)
        if pool is not None:
            pool.stop()
        if dashboard is not None:
            launch.stop(dashboard)
        # A head this run started goes down below with the app on it; a head found running
        # stays, without the app this run deployed.
        ray_client.shutdown(delete_serve_apps=not head_started)
        if head_started:
            ray_runtime.stop_head(settings)
        # Stop what this run started; services that were up before it stay up.
        started = [name for name in stack.SERVICE_NAMES if name not in already_up]
        if started:
            stack.down(settings, only=started)
        kept = f" (left running as found: {', '.join(already_up)})" if already_up else ""
        steps.note(
            f"stopped producer, consumers, dashboard, Serve, Ray and the stack{kept}; data kept in var/"
        )
        steps.close()
