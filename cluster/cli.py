"""The `fraudray` command line (typer). Thin: each command calls one function elsewhere."""

from __future__ import annotations

import os

from core import ray_client
from core.ray_client import ray_env

os.environ.update(ray_env())  # token auth and Serve's fast path, before anything imports ray

import time
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cluster import stack as stack_mod
from core.errors import FraudrayError
from core.settings import get_settings
from ingest import cli as ingest_cli

if TYPE_CHECKING:
    from training.data import Split

app = typer.Typer(
    help="fraudray: distributed real-time fraud scoring on Ray.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
stack_app = typer.Typer(help="The local stack: Kafka, Redis, PostgreSQL, Prometheus, Alertmanager.")
models_app = typer.Typer(help="The model registry (PostgreSQL `models` + var/models).")
app.add_typer(stack_app, name="stack")
app.add_typer(models_app, name="models")
# The simulator's and the replay's commands live with them in ingest/.
app.command("produce")(ingest_cli.produce)
app.command("replay")(ingest_cli.replay)
console = Console()


def _event(name: str, result: str, seconds: float) -> None:
    console.print(f"  {name:<15} {result:<16} {seconds:6.1f} s")


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {service_error(exc) or exc}", highlight=False, soft_wrap=True)
    return typer.Exit(1)


@stack_app.command("up")
def stack_up(
    only: Annotated[list[str] | None, typer.Argument(help="services to start (default: all)")] = None,
) -> None:
    """Start the local stack (idempotent) and wait until every service answers."""
    try:
        stack_mod.up(get_settings(), only, on_event=_event)
    except FraudrayError as exc:
        raise _fail(exc) from exc


@app.command("init")
def init_cmd() -> None:
    """Prepare the configured Kafka and PostgreSQL (local or not): create the missing topics,
    apply the migrations not yet applied, register the transaction schema when a Schema Registry
    is configured. Idempotent."""
    from cluster import setup_services

    try:
        for line in setup_services.init(get_settings()):
            console.print(f"  {line}", highlight=False)
    except FraudrayError as exc:
        raise _fail(exc) from exc


@stack_app.command("down")
def stack_down(
    only: Annotated[list[str] | None, typer.Argument(help="services to stop (default: all)")] = None,
) -> None:
    """Stop what `stack up` started (and the Ray head `fraudray serve` started), nothing else."""
    from cluster import ray_runtime

    try:
        if not only:
            t0 = time.monotonic()
            _event("ray head", ray_runtime.stop_head(get_settings()), time.monotonic() - t0)
        stack_mod.down(get_settings(), only, on_event=_event)
    except FraudrayError as exc:
        raise _fail(exc) from exc


@stack_app.command("status")
def stack_status() -> None:
    """Each service's port, pid and health; exits 1 when any is down."""
    rows = stack_mod.status(get_settings())
    table = Table("service", "port", "pid", "health", "log")
    for r in rows:
        table.add_row(
            str(r["service"]), str(r["port"]), str(r["pid"] or "-"),
            "[green]healthy[/green]" if r["healthy"] else "[red]down[/red]", str(r["log"]),
        )  # fmt: skip
    console.print(table)
    if not all(r["healthy"] for r in rows):
        raise typer.Exit(1)


@app.command("serve")
def serve_cmd() -> None:
    """Deploy the Serve app `fraud` (HTTP API) on the Ray cluster and keep it running."""
    from cluster import ray_runtime
    from cluster.demo import api_key
    from cluster.first_start import ensure_models
    from serve_deployments import deploy as serving

    settings = get_settings()
    # Auth is on unless FRAUDRAY_API_AUTH=off: the configured keys, else the key `make run` uses
    # (generated once into var/api_key), so the app never runs without any.
    keys = settings.api.key_list() or ([api_key(settings)] if settings.api.auth == "on" else [])
    try:
        ray_runtime.start_head(settings)
        ray_client.init(settings)
        ensure_models(settings)
        url = serving.deploy(settings, api_keys=keys)
    except FraudrayError as exc:
        raise _fail(exc) from exc
    console.print(f"Serve app [bold]{settings.serve.app_name}[/bold] is running at {url} (docs: {url}/docs)")
    if settings.api.auth == "off":
        console.print("[yellow]auth is off (FRAUDRAY_API_AUTH=off): no route asks for a key[/yellow]")
    elif settings.api.key_list():
        console.print("API key: header X-API-Key, one of FRAUDRAY_API_KEYS")
    else:
        where = settings.var_dir / "api_key"
        console.print(f"API key (header X-API-Key) {keys[0]}, generated once into {where}")


@app.command("consume")
def consume_cmd(
    actors: Annotated[
        int | None, typer.Option(help="consumer actors (default: min(partitions, CPUs))")
    ] = None,
    idle_exit: Annotated[
        float | None, typer.Option(help="exit after this many seconds without new records")
    ] = None,
) -> None:
    """Run the consumer actors (one group) against the deployed Serve app until Ctrl-C."""
    from rich.live import Live

    from cluster.drift import production_reference
    from ingest.consumer import ConsumerPool, stage_us_per_tx, throughput

    settings = get_settings()
    _preflight(settings)
    ray_client.init(settings, log_to_driver=False)
    import ray

    n = actors or max(1, min(settings.kafka.partitions, int(ray.cluster_resources().get("CPU", 1))))
    pool = ConsumerPool(settings, n, stop_after_idle_s=idle_exit, drift_reference=production_reference)
    last: dict[int, int] = {}
    last_t = time.monotonic()
    try:
        with Live(console=console, refresh_per_second=1) as live:
            while True:
                done, _ = ray.wait(pool.runs, num_returns=len(pool.runs), timeout=2.0)
                stats = pool.stats()
                now = time.monotonic()
                table = Table(
                    "actor", "scored", "tx/s", "DLQ", "retries", "lag", title=f"{n} consumer actors"
                )
                for i, s in enumerate(stats):
                    rate = (s["scored"] - last.get(i, 0)) / (now - last_t)
                    last[i] = s["scored"]
                    table.add_row(str(i), f"{s['scored']:,}", f"{rate:,.0f}", str(s["dead_lettered"]),
                                  str(s["retries"]), f"{sum(s['lag'].values()):,}")  # fmt: skip
                last_t = now
                live.update(table)
                if len(done) == len(pool.runs):
                    break
    except KeyboardInterrupt:
        console.print("stopping: finishing and committing the current batches …")
    final = pool.stop()
    console.print(
        f"scored {sum(s['scored'] for s in final):,} transactions at {throughput(final):,.0f} tx/s; "
        f"dead-lettered {sum(s['dead_lettered'] for s in final):,}"
    )
    breakdown = stage_us_per_tx(final)
    console.print("µs/tx by stage: " + ", ".join(f"{k} {v:,.0f}" for k, v in breakdown.items()))


class ModelChoice(StrEnum):
    """``fraudray train --model``: one family, or all three plus their ensemble."""

    IF = "if"
    XGB = "xgb"
    AE = "ae"
    ALL = "all"


def _preflight(settings: Any) -> None:
    """PostgreSQL and Kafka answer, before Ray and the actors start (their errors would surface as
    actor tracebacks much later); an unreachable one raises, and main() prints one line."""
    import psycopg2
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    psycopg2.connect(settings.postgres.dsn.get_secret_value(), connect_timeout=5).close()
    admin = AdminClient(
        {"bootstrap.servers": settings.kafka.bootstrap, "socket.connection.setup.timeout.ms": 5000}
    )
    try:
        admin.list_topics(timeout=10)
    except KafkaException as exc:
        raise KafkaException(
            KafkaError(KafkaError._TRANSPORT, f"no broker answered in 10 s ({exc})")
        ) from exc


@app.command("train")
def train_cmd(
    model: Annotated[
        ModelChoice, typer.Option(help="one family, or all (adds the ensemble)")
    ] = ModelChoice.ALL,
    csv: Annotated[
        Path | None, typer.Option(help="a labelled CSV/Parquet instead of the feature store")
    ] = None,
    label: Annotated[str, typer.Option(help="label column of --csv (0/1)")] = "is_fraud",
    time_col: Annotated[str | None, typer.Option("--time", help="event-time column of --csv")] = None,
    target_fpr: Annotated[float, typer.Option(help="false-positive rate the thresholds aim at")] = 0.01,
    quick: Annotated[
        bool, typer.Option(help="only the synthetic-data Isolation Forest used at first start")
    ] = False,
    tune: Annotated[bool, typer.Option(help="Ray Tune search per family first, then refit the best")] = False,
    num_samples: Annotated[int, typer.Option(help="Tune trials per family")] = 8,
    time_budget: Annotated[float, typer.Option(help="Tune seconds per family")] = 300.0,
    concurrency: Annotated[int, typer.Option(help="Tune trials at once")] = 2,
    start: Annotated[
        datetime | None, typer.Option(help="feature store: first event time (UTC) of the data")
    ] = None,
    end: Annotated[datetime | None, typer.Option(help="feature store: event times before this (UTC)")] = None,
    train_workers: Annotated[
        int, typer.Option(help="Ray Train workers for XGBoost and the autoencoder (0: train in this process)")
    ] = 2,
    promote: Annotated[
        bool, typer.Option(help="put the new versions into production (never for --csv)")
    ] = True,
    report: Annotated[Path | None, typer.Option(help="write the test metrics as JSON here")] = None,
    train_window: Annotated[
        str | None, typer.Option("--train", help="START:END (UTC) to train on; with --val and --test")
    ] = None,
    val_window: Annotated[str | None, typer.Option("--val", help="START:END validation window")] = None,
    test_window: Annotated[str | None, typer.Option("--test", help="START:END test window")] = None,
) -> None:
    """Train on a temporal split, evaluate on the last window, and register the versions.

    Without --csv the data are the feature store's point-in-time frames of the transactions
    and labels in PostgreSQL (train on the earlier days, validate and test on the later ones).
    --train/--val/--test give the three windows explicitly (in time order; gaps allowed).
    """
    from cluster.first_start import train_quick_models
    from features.catalogue import FEATURE_NAMES
    from training.data import backtest_windows, frame_from_csv, frame_from_store, split_frame, windows_span
    from training.pipeline import ensure_ray, report_json, train_all

    settings = get_settings()
    if quick:
        for mv in train_quick_models(settings).values():
            console.print(f"registered {mv.name} {mv.version} ({mv.stage}) aucpr={mv.metrics.get('aucpr')}")
        return
    families = ("if", "xgb", "ae") if model is ModelChoice.ALL else (model.value,)
    t0 = time.monotonic()
    try:
        windows = backtest_windows(train_window, val_window, test_window)
        start, end = windows_span(windows, start, end)
        if csv is not None:
            split = split_frame(frame_from_csv(csv, label, time_col), None, windows)
            source = f"csv:{csv.name}"
        else:
            split = split_frame(frame_from_store(settings, start, end), list(FEATURE_NAMES), windows)
            source = "feature-store"
        split.require_fraud()
        console.print(f"data: {split.window()['rows']} rows, fraud {split.window()['fraud']} ({source})")
        load_s = time.monotonic() - t0
        if tune or ({"ae", "xgb"} & set(families) and train_workers > 0):  # Ray Train fits
            ensure_ray(settings)
        tuned = _tune(split, families, num_samples, time_budget, concurrency) if tune else {}
        t1 = time.monotonic()
        # Models of a CSV's columns cannot score the live stream: register, never promote.
        promoted = promote and csv is None
        console.print(
            f"training {', '.join(families)}" + (" and their ensemble" if len(families) == 3 else "")
        )
        result = train_all(split, settings, params={f: p for f, (p, _s) in tuned.items()}, families=families,
                           target_fpr=target_fpr, source=source, promote=promoted,
                           ae_workers=train_workers, progress=_progress)  # fmt: skip
        train_s = time.monotonic() - t1
    except FraudrayError as exc:
        raise _fail(exc) from exc
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    table = Table("model", "version", "AUCPR", "ROC AUC", "R@0.1%FPR", "R@1%FPR", "precision", "recall",
                  "FPR", "fit s", "stage", title="test window")  # fmt: skip
    for fam, m in result.metrics.items():
        version = result.versions.get(fam)
        table.add_row(
            fam, version.version if version else "-", f"{m.get('aucpr', float('nan')):.3f}",
            f"{m.get('roc_auc', float('nan')):.3f}", f"{m.get('recall_at_0.1pct_fpr', float('nan')):.3f}",
            f"{m.get('recall_at_1pct_fpr', float('nan')):.3f}", f"{m.get('precision', 0):.3f}",
            f"{m.get('recall', 0):.3f}", f"{m.get('fpr', 0):.4f}", f"{result.seconds.get(fam, 0):.1f}",
            version.stage if version else "-",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"load {load_s:.1f} s, train + evaluate {train_s:.1f} s, total {time.monotonic() - t0:.1f} s"
    )
    _print_artefacts(result.versions, promoted=promoted, promotable=csv is None)
    if report is not None:
        report_json(result, report, {
            "source": source, "window": split.window(), "load_seconds": load_s, "train_seconds": train_s,
            "tune_seconds": {f: s for f, (_p, s) in tuned.items()},
        })  # fmt: skip
        console.print(f"metrics written to {report}")
    if promoted and result.versions:
        _hot_swap(settings)


def _print_artefacts(versions: dict[str, Any], *, promoted: bool, promotable: bool) -> None:
    """Where each registered model and its PR/ROC curves are."""
    for fam, version in versions.items():
        console.print(f"  {fam} {version.version}: {version.uri}  curves: {Path(version.uri) / 'curves.png'}")
    if versions and not promoted and promotable:
        console.print(
            "registered, not promoted: `fraudray models promote NAME VERSION` puts one into production"
        )


def _progress(message: str) -> None:
    console.print(f"  {time.strftime('%H:%M:%S')} {message}", highlight=False)


def _trial_printer(family: str, samples: int) -> Any:
    """A Ray Tune callback printing each finished trial (Tune itself runs with verbose=0)."""
    from ray.tune import Callback

    class TrialPrinter(Callback):
        done = 0

        def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.done += 1
            result = trial.last_result or {}
            aucpr = result.get("val_aucpr")
            score = f"val AUCPR {aucpr:.4f}" if isinstance(aucpr, int | float) else "no result"
            _progress(f"tune {family}: trial {self.done}/{samples} {trial.trial_id} {score} "
                      f"after {result.get('training_iteration', 0)} iteration(s)")  # fmt: skip

        def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
            self.done += 1
            _progress(f"tune {family}: trial {self.done}/{samples} {trial.trial_id} failed")

    return TrialPrinter()


def _tune(
    split: Split, families: tuple[str, ...], samples: int, budget: float, concurrency: int
) -> dict[str, tuple[dict[str, Any], float]]:
    """Search each family with Ray Tune (Ray initialised by the caller); print and save the
    trials; returns family -> (best params, wall seconds)."""
    from training.registry import Registry
    from training.tune import search

    settings = get_settings()
    out_dir = settings.var_dir / "tune"
    best: dict[str, tuple[dict[str, Any], float]] = {}
    for fam in families:
        t0 = time.monotonic()
        config = {"kind": "tune", "samples": samples, "time_budget_s": budget, "concurrency": concurrency}
        _progress(f"tune {fam}: {samples} trials, {concurrency} at once, at most {budget:g} s")
        with Registry(settings).run(fam, config) as run_metrics:
            params, frame = search(fam, split, num_samples=samples, time_budget_s=budget,
                                   max_concurrent=concurrency, storage=out_dir,
                                   callbacks=[_trial_printer(fam, samples)])  # fmt: skip
            wall = time.monotonic() - t0
            run_metrics.update(best_val_aucpr=float(frame["val_aucpr"].max()), trials=len(frame),
                               wall_seconds=wall, best_params=params)  # fmt: skip
        csv_path = out_dir / f"{fam}-trials.csv"
        table = Table(
            "trial",
            "val AUCPR",
            "iterations",
            "config",
            title=f"Ray Tune {fam}: {len(frame)} trials ({csv_path})",
        )
        for _, row in frame.sort_values("val_aucpr", ascending=False).iterrows():
            cfg = {k.removeprefix("config/"): row[k] for k in frame.columns if k.startswith("config/")}
            table.add_row(str(row.get("trial_id")), f"{row['val_aucpr']:.4f}",
                          str(row.get("training_iteration")), str(cfg))  # fmt: skip
        frame.to_csv(csv_path, index=False)
        console.print(table)
        console.print(f"Ray Tune {fam}: {wall:.1f} s wall time")
        best[fam] = (params, wall)
    return best


def _head_listens(settings: Any) -> bool:
    """Whether the Ray head answers: a configured cluster is assumed to; the managed local head
    is asked with a TCP connect, so that a command never starts one just to update Serve."""
    if settings.ray.address:
        return True
    import socket

    host, port = ray_client.head_address(settings).rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=2).close()
    except OSError:
        return False
    return True


def _hot_swap(settings: Any) -> None:
    """Push the production versions to the running Serve app; never fails the command."""
    from serve_deployments import deploy as serving

    later = "the next `fraudray serve` picks the production versions up"
    try:
        if not _head_listens(settings):
            console.print(f"Ray (and so Serve) is not running: {later}")
            return
        swapped = serving.hot_swap(settings)
        console.print("Serve app swapped to " + ", ".join(f"{f} {v}" for f, v in sorted(swapped.items())))
    except Exception as exc:  # noqa: BLE001 - the registry change stands whatever Serve says
        console.print(f"Serve not updated ({type(exc).__name__}: {exc}): {later}")
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()


def _install_shadow(settings: Any, versions: dict[str, str] | None) -> None:
    """Install the challenger ``versions`` as the running app's live shadow (None: clear it);
    raises when Serve cannot take it, which the learning round records (``shadow_error``)."""
    import ray

    from core.errors import ModelNotReady
    from serve_deployments import deploy as serving

    try:
        if not _head_listens(settings):
            raise ModelNotReady("Ray (and so Serve) is not running: no live shadow")
        installed = serving.install_shadow(settings, versions)
        console.print(f"live shadow: challenger ensemble {installed}" if installed else "live shadow cleared")
    finally:
        if ray.is_initialized():
            ray.shutdown()


@models_app.command("list")
def models_list(name: Annotated[str | None, typer.Argument()] = None) -> None:
    """Registered model versions, newest first, with their test metrics and training window."""
    from training.registry import Registry

    table = Table("name", "version", "stage", "AUCPR", "ROC AUC", "R@1%FPR", "train window", "source")
    for mv in Registry(get_settings()).list(name):
        m, w = mv.metrics, mv.training_window.get("train") or ["", ""]

        def num(key: str, m: dict[str, Any] = m) -> str:
            return f"{m[key]:.3f}" if isinstance(m.get(key), int | float) else "-"

        stage = f"[green]{mv.stage}[/green]" if mv.stage == "production" else mv.stage
        table.add_row(mv.name, mv.version, stage, num("aucpr"), num("roc_auc"), num("recall_at_1pct_fpr"),
                      f"{str(w[0])[:16]} → {str(w[1])[:16]}" if w[0] else "-",
                      str(mv.params.get("source", "")))  # fmt: skip
    console.print(table)


@app.command("learn")
def learn_cmd(
    once: Annotated[bool, typer.Option(help="one round now, then exit (else: loop on the schedule)")] = False,
    train_workers: Annotated[int, typer.Option(help="Ray Train workers (0: fit in this process)")] = 0,
) -> None:
    """Champion/challenger loop: every FRAUDRAY_LEARN_EVERY_LABELS new labels (counted on
    arrival, replayed ones too), every FRAUDRAY_LEARN_EVERY_MINUTES, or on a PSI drift alert,
    fit challengers on the rolling window ending at the newest labelled transaction, compare
    them with production on the newest labelled days, promote and hot-swap the winners; a
    challenger kept as candidate shadow-scores the stream (decisions.shadow_score) until the
    next promotion."""
    from cluster.drift import psi_alert
    from training.learning import Decision, learn_once, run_loop

    settings = get_settings()

    def show(d: Decision) -> None:
        console.print(f"learn ({d.trigger}): {d.action}: {d.reason} [{d.seconds:.0f} s]", highlight=False)
        if d.shadow_error:
            console.print(f"  live shadow not changed: {d.shadow_error}", highlight=False)

    def shadow(versions: dict[str, str] | None) -> None:
        _install_shadow(settings, versions)

    try:
        if once:
            show(learn_once(settings, swap=lambda: _hot_swap(settings), shadow=shadow,
                            train_workers=train_workers))  # fmt: skip
        else:
            run_loop(settings, swap=lambda: _hot_swap(settings), shadow=shadow,
                     drifted=lambda: psi_alert(settings), on_decision=show,
                     train_workers=train_workers)  # fmt: skip
    except FraudrayError as exc:
        raise _fail(exc) from exc
    except KeyboardInterrupt:
        console.print("learning loop stopped")


@models_app.command("promote")
def models_promote(name: str, version: str) -> None:
    """Make VERSION the production version of NAME and swap it into the running Serve app.

    Refused for a version trained on other features than the ones serving computes (a --csv
    model): Serve would not load it."""
    from features.catalogue import FEATURE_NAMES
    from training.registry import Registry

    settings = get_settings()
    try:
        registry = Registry(settings)
        mv = registry.get(name, version)
        if mv.feature_names != list(FEATURE_NAMES):
            missing = [f for f in FEATURE_NAMES if f not in mv.feature_names]
            extra = [f for f in mv.feature_names if f not in FEATURE_NAMES]
            source = mv.params.get("source") or "unknown data"
            raise _fail(ValueError(
                f"{name} {version} was trained on other features than serving computes ({source}: "
                f"{len(missing)} missing, e.g. {missing[:3]}; {len(extra)} unknown, e.g. {extra[:3]}; "
                f"order differs: {not missing and not extra}). Serve could not score with it: train on "
                "the feature store instead (`fraudray train` without --csv)"
            ))  # fmt: skip
        registry.promote(name, version)
    except FraudrayError as exc:
        raise _fail(exc) from exc
    console.print(f"{name} {version} is now in production")
    _hot_swap(settings)


@models_app.command("rollback")
def models_rollback(name: str) -> None:
    """Put NAME's previous production version back into production (the current one is archived)."""
    from training.registry import Registry

    settings = get_settings()
    try:
        archived, restored = Registry(settings).rollback(name)
    except FraudrayError as exc:
        raise _fail(exc) from exc
    console.print(f"{name}: {restored} is back in production, {archived} archived")
    _hot_swap(settings)


@app.command("demo")
def demo_cmd(
    rate: Annotated[float, typer.Option(help="transactions per second to produce")] = 500.0,
    actors: Annotated[int, typer.Option(help="consumer actors")] = 2,
    seed: Annotated[
        int | None, typer.Option(help="simulator seed (default: a new one per run, so ids never repeat)")
    ] = None,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
) -> None:
    """The main job (`make run`): stack, Ray, Serve, consumers and producer, with live progress."""
    from cluster import demo

    try:
        demo.run(get_settings(), rate=rate, actors=actors, seed=seed, duration=duration)
    except FraudrayError as exc:
        raise _fail(exc) from exc


@app.command("bench")
def bench_cmd(
    quick: Annotated[bool, typer.Option(help="small counts, one offered rate: a smoke run")] = False,
    count: Annotated[int | None, typer.Option(help="transactions per backlog-drain run")] = None,
    actors: Annotated[str | None, typer.Option(help="consumer actor counts, e.g. 1,2,4")] = None,
    replicas: Annotated[
        str | None, typer.Option(help="Serve replicas per model deployment for the replica drains, e.g. 1,2")
    ] = None,
    rates: Annotated[
        str | None, typer.Option(help="offered tx/s of the fixed-load latency runs, e.g. 2000,5000")
    ] = None,
    steps: Annotated[
        str | None,
        typer.Option(
            help="only these steps, e.g. paced or drain,stages (of drain, paced, baseline, stages, http,"
            " replicas); the docs page is then left alone"
        ),
    ] = None,
    report: Annotated[Path, typer.Option(help="the JSON report")] = Path("var/bench/e2e.json"),
    docs: Annotated[
        Path | None, typer.Option(help="markdown whose generated section is rewritten (chart under img/)")
    ] = Path("docs/benchmarks.md"),
    from_report: Annotated[
        bool, typer.Option(help="only regenerate the docs and chart from an existing --report")
    ] = False,
    attach: Annotated[
        bool,
        typer.Option(
            help="use the app already running on the configured Ray cluster (`make run`, `fraudray serve`)"
            " and its API key (FRAUDRAY_API_KEYS or var/api_key) instead of a private Ray and app"
        ),
    ] = False,
) -> None:
    """End-to-end benchmark: backlog drain with 1/2/4 actors and with 1/2 replicas per model,
    latency at fixed offered load, the per-message baseline, each stage alone and HTTP
    /predict and /score; JSON report, docs table and chart."""
    import json

    from benchmarks import e2e
    from benchmarks.report import write_docs

    if from_report:
        result = json.loads(report.read_text())
    else:
        overrides: dict[str, Any] = {}
        if count:
            overrides["count"] = count
        if actors:
            overrides["actors"] = tuple(int(a) for a in actors.split(","))
        if replicas:
            overrides["replicas"] = tuple(int(r) for r in replicas.split(","))
        if rates:
            overrides["rates"] = tuple(int(r) for r in rates.split(","))
        if steps:
            chosen = tuple(x.strip() for x in steps.split(","))
            unknown = sorted(set(chosen) - set(e2e.BenchConfig.steps))
            if unknown:
                raise _fail(
                    ValueError(f"unknown bench steps {unknown}: choose from {list(e2e.BenchConfig.steps)}")
                )
            overrides["steps"] = chosen
            docs = None  # a partial report would blank the page's other tables
        options = [
            ("--quick" if quick else ""),
            (f"--rates {rates}" if rates else ""),
            (f"--steps {steps}" if steps else ""),
        ]
        overrides["command"] = " ".join(["fraudray bench", *filter(None, options)])
        config = e2e.BenchConfig.quick_config(**overrides) if quick else e2e.BenchConfig(**overrides)
        settings = get_settings()
        app_ = None
        if attach:
            from cluster.demo import api_key

            url = f"http://{settings.serve.http_host}:{settings.serve.http_port}"
            app_ = e2e.RunningApp(url, api_key(settings))
        _preflight(settings)  # a stopped stack is one line, not librdkafka retrying for minutes
        try:
            result = e2e.run(settings, config, log=console.print, app=app_)
        except FraudrayError as exc:
            raise _fail(exc) from exc
        e2e.save(result, report)
        console.print(f"report written to {report} ({result['seconds']} s)")
    if docs is not None:
        write_docs(result, docs, docs.parent / "img" / "benchmarks-scaling.png")
        console.print(f"{docs} and its chart regenerated")


@app.command("backup")
def backup_cmd(
    keep: Annotated[int, typer.Option(help="dumps to keep (older ones are deleted)")] = 7,
    dest: Annotated[Path | None, typer.Option(help="backup folder (default: var/backups)")] = None,
) -> None:
    """pg_dump of transactions, decisions and labels with a row-count/checksum manifest."""
    from cluster import backup

    try:
        result = backup.backup(get_settings(), dest, keep=keep)
    except FraudrayError as exc:
        raise _fail(exc) from exc
    rows = ", ".join(f"{t} {m['rows']:,}" for t, m in result.manifest.items())
    console.print(f"wrote {result.path} ({rows}); removed {len(result.removed)} old dump(s)")


@app.command("restore")
def restore_cmd(
    dump: Annotated[Path | None, typer.Argument(help="a .dump file (default: the newest backup)")] = None,
    database: Annotated[
        str, typer.Option(help="database to restore into, created on the configured server if missing")
    ] = "fraudray_restore",
    target_dsn: Annotated[
        str | None, typer.Option(help="restore into this existing database instead (a DSN)")
    ] = None,
) -> None:
    """Restore a dump into a scratch database and verify row counts and checksums."""
    from cluster import backup

    settings = get_settings()
    try:
        if dump is None:
            dumps = backup.list_backups(backup.backup_dir(settings))
            if not dumps:
                raise backup.BackupError(f"no dumps in {backup.backup_dir(settings)}: run `fraudray backup`")
            dump = dumps[-1]
        dsn = target_dsn or backup.create_database(settings, database)
        verified = backup.restore(settings, dump, dsn)
    except FraudrayError as exc:
        raise _fail(exc) from exc
    rows = ", ".join(f"{t} {m['rows']:,}" for t, m in verified.items())
    where = "the target DSN" if target_dsn else database
    console.print(f"restored {dump.name} into {where}; verified {rows}")


@app.command("cleanup")
def cleanup_cmd(
    days: Annotated[float, typer.Option(help="archive and delete transactions older than this")] = 90.0,
    archive: Annotated[Path | None, typer.Option(help="Parquet folder (default: var/archive)")] = None,
    dry_run: Annotated[bool, typer.Option(help="only count what would be archived")] = False,
) -> None:
    """Retention: old transactions (+ decisions, labels) to Parquet, then deleted; Kafka retention."""
    from cluster import backup

    settings = get_settings()
    try:
        result = backup.cleanup(settings, days, archive, dry_run=dry_run)
        topics = {} if dry_run else backup.apply_topic_retention(settings)
    except FraudrayError as exc:
        raise _fail(exc) from exc
    counts = ", ".join(f"{t} {n:,}" for t, n in result.archived.items())
    verb = "would archive" if dry_run else f"archived to {len(result.files)} Parquet file(s)"
    console.print(f"before {result.cutoff:%Y-%m-%d %H:%M} UTC: {verb}: {counts}")
    for topic, ms in topics.items():
        console.print(f"  topic {topic}: retention.ms={ms} ({ms / 3_600_000:g} h)")


@app.command("config")
def config_cmd() -> None:
    """The effective settings as FRAUDRAY_* variables (environment, .env, defaults), secrets masked."""
    from core.settings import effective

    for name, value in effective(get_settings()):
        typer.echo(f"{name}={value}")


def service_error(exc: BaseException) -> str | None:
    """One line for an error of a service we connect to (PostgreSQL, Kafka, Redis), or ``None``
    for any other error (a bug: its traceback stays)."""
    import psycopg2
    import redis
    from confluent_kafka import KafkaException

    settings = get_settings()
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, FraudrayError):  # ours, already worded for a user: add where it is set
        hints = {
            "PostgreSQL": "FRAUDRAY_POSTGRES_DSN",
            "Kafka": "FRAUDRAY_KAFKA_BOOTSTRAP",
            "Redis": "FRAUDRAY_REDIS_URL",
        }
        where = [v for k, v in hints.items() if k in first]
        return f"{first} ({', '.join(where)})" if where else first
    if isinstance(exc, psycopg2.OperationalError):
        pg = settings.postgres
        return f"PostgreSQL ({pg.user}@…:{pg.port}/{pg.database}, FRAUDRAY_POSTGRES_DSN) unavailable: {first}"
    if isinstance(exc, KafkaException):
        return f"Kafka ({settings.kafka.bootstrap}, FRAUDRAY_KAFKA_BOOTSTRAP) unavailable: {first}"
    if isinstance(exc, redis.ConnectionError | redis.TimeoutError):
        return f"Redis (port {settings.redis.port}, FRAUDRAY_REDIS_URL) unavailable: {first}"
    return None


def main() -> None:
    """The `fraudray` entry point: settings errors and unreachable services are one-line errors
    (exit 2 and 1), not tracebacks."""
    from pydantic import ValidationError

    try:
        app()
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(map(str, err["loc"]))
            line = f"[red]error:[/red] settings: {where}: {err['msg']}"
            console.print(line, highlight=False, soft_wrap=True)
        raise SystemExit(2) from None
    except Exception as exc:
        message = service_error(exc)
        if message is None:
            raise
        console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
