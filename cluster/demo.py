"""`make run` / `fraudray demo`: the whole pipeline on the local stack with live progress.

Brings up the stack and a Ray head, deploys Serve (quick model if the registry is empty),
starts the consumer actors and a producer, shows progress until Ctrl-C, then stops
everything it started.
"""

from __future__ import annotations

import secrets
import signal
import threading
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import psycopg2
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from cluster import ray_runtime, stack
from cluster.drift import production_reference
from cluster.first_start import ensure_models
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
    with psycopg2.connect(settings.postgres.dsn.get_secret_value()) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(*) FILTER (WHERE is_fraud) FROM decisions")
        total, fraud = cur.fetchone()
    conn.close()
    return int(total), int(fraud)


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
    settings: Settings, key: str, pool: ConsumerPool, producer: PacedProducer, duration: float | None
) -> None:
    """Refresh the URLs and the pipeline's counters every second until ``duration`` or Ctrl-C."""
    t0 = time.monotonic()
    last_total, last_t = 0, t0
    tps = 0.0
    with Live(console=console, refresh_per_second=2) as live:
        while duration is None or time.monotonic() - t0 < duration:
            time.sleep(1.0)
            stats = pool.stats()
            total, fraud = _decision_counts(settings)
            now = time.monotonic()
            tps = (total - last_total) / (now - last_t)
            last_total, last_t = total, now
            table = Table("produced", "consumed", "scored", "DLQ", "alerts", "decisions in PG", "tx/s")
            table.add_row(
                str(producer.sent),
                str(sum(s["polled"] for s in stats)),
                str(sum(s["scored"] for s in stats)),
                str(sum(s["dead_lettered"] for s in stats)),
                str(fraud),
                str(total),
                f"{tps:,.0f}",
            )
            live.update(
                Group(
                    Panel(_urls(settings, key), title="fraudray is running — Ctrl-C stops everything"),
                    table,
                )
            )


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def run(settings: Settings, *, rate: float, actors: int, seed: int | None, duration: float | None) -> None:
    import ray

    from ingest.consumer import ConsumerPool

    key = api_key(settings)
    with console.status("starting the local stack"):
        already_up = [name for name, svc in stack.services(settings).items() if svc.pid() is not None]
        stack.up(settings)
    with console.status("starting Ray"):
        head_started = ray_runtime.start_head(settings) == "started"
        # Actor and replica logs would tear the live display; they stay in Ray's log folder.
        ray_client.init(settings, log_to_driver=False)
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
        with console.status("checking the registry (training quick models if it has none)"):
            ensure_models(settings)
        with console.status("deploying Serve app"):
            serving.deploy(settings, api_keys=[key])
        pool = ConsumerPool(settings, actors, drift_reference=production_reference)
        with console.status(f"starting the analyst dashboard on {launch.url()}"):
            dashboard = launch.start(settings, env={"FRAUDRAY_API_KEYS": key})
            launch.wait_ready(dashboard)
        # Transaction ids derive from the seed: a fixed seed on a second run would replay
        # ids the database already has, and the idempotent sinks would (rightly) ignore them.
        producer = PacedProducer(settings, rate, seed if seed is not None else secrets.randbelow(2**31))
        producer.start()
        _live(settings, key, pool, producer, duration)
    except KeyboardInterrupt:
        console.print("stopping …")
    finally:
        if producer is not None:
            producer.stop_event.set()
            producer.join(timeout=30)
        if pool is not None:
            pool.stop()
        if dashboard is not None:
            launch.stop(dashboard)
        from ray import serve

        serve.shutdown()
        ray.shutdown()
        if head_started:
            ray_runtime.stop_head(settings)
        # Stop what this run started; services that were up before it stay up.
        started = [name for name in stack.SERVICE_NAMES if name not in already_up]
        if started:
            stack.down(settings, only=started)
        kept = f" (left running as found: {', '.join(already_up)})" if already_up else ""
        console.print(
            f"stopped producer, consumers, dashboard, Serve, Ray and the stack{kept}; data kept in var/"
        )
