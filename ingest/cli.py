"""`fraudray produce` and `fraudray replay` (typer): simulated or replayed transactions to
Kafka (or Parquet), at a measured rate, with late labels on the `labels` topic.

Mounted into the main CLI by `cluster/cli.py`; also runnable as `python -m ingest.cli`.
Heavy modules are imported inside the commands so `fraudray --help` stays fast.
"""

from __future__ import annotations

import math
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from rich.table import Table

from core.errors import FraudrayError
from core.settings import get_settings

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

    from ingest.stream import Pacer, StreamStats

app = typer.Typer(help="Simulated and replayed transactions.", no_args_is_help=True)
console = Console()

ASSUMED_MAX_RATE = 50_000.0  # tx/s, to place event time when --rate 0 runs for --duration
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}
LabelsOption = Literal["all", "fraud", "none"]


def parse_duration(text: str) -> float:
    """Seconds in ``"90"``, ``"90s"``, ``"30m"``, ``"1.5h"``, ``"2d"``."""
    m = _DURATION.match(text)
    if m is None:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 30m, 2h or 2d")
    return float(m.group(1)) * _UNIT_S[m.group(2) or "s"]


def parse_time(text: str) -> datetime:
    """``now`` or an ISO-8601 date/time (naive = UTC)."""
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(f"{text!r} is neither 'now' nor an ISO-8601 date/time") from None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@contextmanager
def _ctrl_c_stops() -> Iterator[Callable[[], bool]]:
    """Ctrl-C ends the run cleanly (pending labels sent, producers flushed) instead of killing it."""
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def handler(_sig: int, _frame: Any) -> None:
        if stop.is_set():  # a second Ctrl-C: give up at once
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield stop.is_set
    finally:
        signal.signal(signal.SIGINT, previous)


def _pacer(rate: float, speedup: float | None) -> Pacer:
    from ingest.stream import EventTimePacer, RatePacer, Unpaced

    if rate > 0:
        return RatePacer(rate)
    if speedup is not None:
        return EventTimePacer(speedup)
    return Unpaced()


def _progress_callback(progress: Progress, task: TaskID, by_count: bool) -> Callable[[StreamStats], None]:
    from ingest.labels import iso_ms

    def update(stats: StreamStats) -> None:
        event = iso_ms(stats.last_event_ms)[:19] if stats.last_event_ms is not None else "-"
        progress.update(
            task,
            completed=stats.sent if by_count else stats.seconds,
            sent=f"{stats.sent:,}",
            rate=f"{stats.current_rate:,.0f} tx/s",
            info=f"labels {stats.labels_sent:,} · fraud {stats.fraud_total:,} · event time {event}",
        )

    return update


def _stream(
    chunks: Any,
    *,
    topic: str | None,
    labels_topic: str | None,
    labels: LabelsOption,
    rate: float,
    speedup: float | None,
    count: int | None,
    duration: float | None,
    expected: int | None = None,
) -> StreamStats:
    """Send ``chunks`` to Kafka with a live progress bar; returns the run's statistics.

    The bar counts transactions towards ``count`` (or ``expected``), else seconds of ``duration``.
    """
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ingest.labels import LabelProducer, LabelQueue
    from ingest.producer import FastTransactionProducer
    from ingest.stream import run_stream

    settings = get_settings()
    tx_sink = FastTransactionProducer(settings, topic)
    label_sink = LabelProducer(settings, labels_topic) if labels != "none" else None
    by_count = count is not None or expected is not None
    total = count if count is not None else expected if expected is not None else duration
    columns = [
        SpinnerColumn(),
        TextColumn("[bold]{task.fields[sent]}[/bold] sent"),
        BarColumn() if total is not None else TextColumn(""),
        TextColumn("{task.fields[rate]}"),
        TextColumn("[dim]{task.fields[info]}"),
        TimeElapsedColumn(),
    ]
    with _ctrl_c_stops() as stop, Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("produce", total=total, sent="0", rate="-", info="")
        return run_stream(
            chunks, tx_sink, pacer=_pacer(rate, speedup),
            label_queue=LabelQueue(labels) if label_sink is not None else None, label_sink=label_sink,
            count=count, duration=duration, stop=stop,
            on_progress=_progress_callback(progress, task, by_count),
        )  # fmt: skip


def _summary(stats: StreamStats, rate: float, topic: str, labels_topic: str | None) -> None:
    from ingest.labels import iso_ms

    table = Table(show_header=False, box=None)
    accuracy = f" ({stats.rate / rate:.1%} of the target {rate:,.0f})" if rate > 0 else " (unpaced)"
    table.add_row("sent", f"{stats.sent:,} transactions to {topic} in {stats.seconds:.2f} s")
    table.add_row("achieved rate", f"{stats.rate:,.0f} tx/s{accuracy}")
    table.add_row("wind-down", f"{stats.flush_seconds:.2f} s (pending labels sent, all acknowledged)")
    if labels_topic is not None:
        table.add_row("labels", f"{stats.labels_sent:,} to {labels_topic}")
    if stats.first_event_ms is not None and stats.last_event_ms is not None:
        speed = f" (×{stats.speedup:,.0f} wall time)" if stats.speedup else ""
        table.add_row("event time", f"{iso_ms(stats.first_event_ms)} → {iso_ms(stats.last_event_ms)}{speed}")
    console.print(table)
    if stats.fraud:
        _mix_table({"genuine": stats.sent - stats.fraud_total, **dict(stats.fraud)}, stats.sent)


def _mix_table(counts: dict[str, int], total: int) -> None:
    table = Table("scenario", "transactions", "share", title="fraud mix")
    for name, n in sorted(counts.items(), key=lambda kv: (kv[0] != "genuine", kv[0])):
        table.add_row(name, f"{n:,}", f"{n / max(total, 1):.3%}")
    console.print(table)


def _fail(exc: Exception) -> typer.Exit:
    console.print(f"[red]error:[/red] {exc}")
    return typer.Exit(1)


@app.command("produce")
def produce(  # noqa: PLR0917 - typer: one parameter per CLI option
    rate: Annotated[float, typer.Option(help="transactions per second, token bucket (0 = unpaced)")] = 1000.0,
    count: Annotated[int | None, typer.Option(help="stop after this many transactions")] = None,
    duration: Annotated[float | None, typer.Option(help="stop after this many seconds")] = None,
    speedup: Annotated[
        float | None,
        typer.Option(help="event-time seconds per wall second (default: whatever keeps users realistic)"),
    ] = None,
    seed: Annotated[int, typer.Option(help="same seed (and --start) ⇒ byte-identical stream")] = 1,
    users: Annotated[int, typer.Option(help="cardholders in the population")] = 100_000,
    merchants: Annotated[int, typer.Option(help="merchants in the population")] = 10_000,
    tx_per_user_day: Annotated[float, typer.Option(help="genuine transactions per user per day")] = 3.0,
    fraud_rate: Annotated[float, typer.Option(help="share of transactions that are fraud")] = 0.0075,
    fraud_mix: Annotated[
        str, typer.Option(help="scenario weights, e.g. card_testing=2,bust_out=1 (default: built-in mix)")
    ] = "",
    labels: Annotated[LabelsOption, typer.Option(help="labels to send: all, fraud only, none")] = "all",
    label_delay: Annotated[str, typer.Option(help="mean label delay in event time (90s, 30m, 2d)")] = "2d",
    start: Annotated[
        str | None, typer.Option(help="event time of the first transaction (ISO-8601 or now)")
    ] = None,
    to_file: Annotated[
        Path | None, typer.Option(help="write --count records + is_fraud/scenario to this Parquet file")
    ] = None,
    topic: Annotated[str | None, typer.Option(help="transactions topic (default from settings)")] = None,
    labels_topic: Annotated[str | None, typer.Option(help="labels topic (default from settings)")] = None,
) -> None:
    """Simulated card traffic with labelled fraud to Kafka (or Parquet with --to-file)."""
    from ingest.simulator import SimConfig, Simulator, parse_mix, write_parquet
    from ingest.simulator.scenarios import DEFAULT_MIX

    if to_file is None and count is None and duration is None:
        raise _fail(ValueError("give --count or --duration (Ctrl-C also stops)"))
    if to_file is not None and count is None:
        raise _fail(ValueError("--to-file needs --count"))
    if rate < 0 or (speedup is not None and speedup <= 0):
        raise _fail(ValueError("--rate must be ≥ 0 and --speedup > 0"))
    if rate > 0 and speedup is not None:  # both fixed: the population's activity follows
        tx_per_user_day = SimConfig.tx_per_user_day_for(rate / speedup, users, fraud_rate)
    try:
        mix = parse_mix(fraud_mix) if fraud_mix else DEFAULT_MIX
        probe = SimConfig(users=users, tx_per_user_day=tx_per_user_day, fraud_rate=fraud_rate, fraud_mix=mix)
    except ValueError as exc:
        raise _fail(exc) from exc
    if start is not None:
        first = parse_time(start)
    else:
        first = _default_start(events_per_s=probe.events_per_s, rate=rate, speedup=speedup, count=count,
                               duration=duration, to_file=to_file)  # fmt: skip
    config = SimConfig(
        seed=seed, users=users, merchants=merchants, tx_per_user_day=tx_per_user_day, fraud_rate=fraud_rate,
        fraud_mix=probe.fraud_mix, label_delay_s=parse_duration(label_delay), start=first,
    )  # fmt: skip
    t0 = time.perf_counter()
    try:
        sim = Simulator(config)
    except ValueError as exc:
        raise _fail(exc) from exc
    built = time.perf_counter() - t0
    console.print(
        f"population: {users:,} users, {merchants:,} merchants (seed {seed}) in {built:.2f} s; "
        f"{config.tx_per_user_day:.3g} tx/user/day = {config.events_per_s:,.1f} tx/s of event time; "
        f"fraud {fraud_rate:.2%}"
    )
    console.print(f"event time starts at {_iso(first)} (add --start {_iso(first)} to reproduce this stream)")
    if rate > 0 and speedup is None:
        console.print(f"event time will run ≈ ×{rate / config.events_per_s:,.0f} wall time")

    if to_file is not None:
        assert count is not None
        t0 = time.perf_counter()
        written = write_parquet(sim, to_file, count)
        seconds = time.perf_counter() - t0
        console.print(
            f"wrote {count:,} transactions to {to_file} in {seconds:.2f} s ({count / seconds:,.0f} tx/s)"
        )
        _mix_table(dict(written), count)
        return

    settings = get_settings()
    tx_topic = topic or settings.kafka.transactions_topic
    lab_topic = (labels_topic or settings.kafka.labels_topic) if labels != "none" else None
    try:
        stats = _stream(sim.chunks(), topic=tx_topic, labels_topic=lab_topic, labels=labels, rate=rate,
                        speedup=speedup, count=count, duration=duration)  # fmt: skip
    except (FraudrayError, OSError) as exc:
        raise _fail(exc) from exc
    _summary(stats, rate, tx_topic, lab_topic)


def _default_start(
    *,
    events_per_s: float,
    rate: float,
    speedup: float | None,
    count: int | None,
    duration: float | None,
    to_file: Path | None,
) -> datetime:
    """Event time that ends about now: back-fills never run into the future."""
    if to_file is None and rate <= 0 and speedup == 1.0:
        span = 0.0  # live: event time is wall time
    elif count is not None:
        span = count / events_per_s
    else:
        assert duration is not None
        per_wall_s = speedup if rate <= 0 and speedup else (rate or ASSUMED_MAX_RATE) / events_per_s
        span = duration * per_wall_s
    now = datetime.now(UTC).replace(microsecond=0)
    return now - timedelta(seconds=math.ceil(span))


@app.command("replay")
def replay(  # noqa: PLR0917 - typer: one parameter per CLI option
    path: Annotated[Path, typer.Argument(help="CSV or Parquet file of transactions")],
    map_: Annotated[
        str,
        typer.Option(
            "--map",
            help="field=COLUMN pairs, e.g. user_id=CUSTOMER_ID,amount=TX_AMOUNT (fields not given are "
            "read from a column of the same name, if any)",
        ),
    ] = "",
    set_: Annotated[
        str | None, typer.Option("--set", help="constant fields, e.g. currency=EUR,country=FR")
    ] = None,
    label_column: Annotated[str | None, typer.Option(help="0/1 fraud label column → `labels` topic")] = None,
    scenario_column: Annotated[str | None, typer.Option(help="column naming the fraud scenario")] = None,
    time_unit: Annotated[str, typer.Option(help="event_time format: auto, iso, s, ms, us, h")] = "auto",
    time_origin: Annotated[
        str | None, typer.Option(help="numeric event times are offsets from this ISO-8601 instant")
    ] = None,
    start: Annotated[
        str | None, typer.Option(help="shift event times so the first is this (ISO-8601 or now)")
    ] = None,
    rate: Annotated[float, typer.Option(help="transactions per second (0 = unpaced)")] = 0.0,
    speedup: Annotated[
        float | None, typer.Option(help="replay at this multiple of the original pace (with --rate 0)")
    ] = None,
    labels: Annotated[LabelsOption, typer.Option(help="labels to send: all, fraud only, none")] = "all",
    label_delay: Annotated[str, typer.Option(help="mean label delay in event time (0s, 30m, 2d)")] = "2d",
    strict: Annotated[bool, typer.Option(help="send nothing if any row cannot be mapped")] = False,
    errors_out: Annotated[
        Path | None, typer.Option(help="write every rejected row (line, reason) here")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="check the file and report; send nothing")] = False,
    topic: Annotated[str | None, typer.Option(help="transactions topic (default from settings)")] = None,
    labels_topic: Annotated[str | None, typer.Option(help="labels topic (default from settings)")] = None,
) -> None:
    """Stream a CSV/Parquet file of transactions to Kafka in event-time order."""
    from ingest.replay import FieldMap, load, write_errors

    if time_unit not in ("auto", "iso", "s", "ms", "us", "h"):
        raise _fail(ValueError(f"--time-unit {time_unit!r}: use auto, iso, s, ms, us or h"))
    t0 = time.perf_counter()
    try:
        data = load(
            path, FieldMap.parse(map_, set_), label_column=label_column, scenario_column=scenario_column,
            time_unit=time_unit,  # type: ignore[arg-type]  # checked above
            time_origin=parse_time(time_origin) if time_origin else None,
            start=parse_time(start) if start else None,
        )  # fmt: skip
    except (FraudrayError, OSError, UnicodeDecodeError) as exc:
        raise _fail(exc) from exc
    console.print(
        f"{path}: {data.rows_read:,} rows read in {time.perf_counter() - t0:.2f} s, "
        f"[green]{len(data):,} good[/green], "
        f"[{'red' if data.errors else 'green'}]{len(data.errors):,} rejected[/]"
        + (f", {data.blank_lines:,} blank lines skipped" if data.blank_lines else "")
    )
    if data.errors:
        table = Table("line", "reason", title="rows that cannot be mapped (first 20)")
        for e in data.errors[:20]:
            table.add_row(str(e.line), e.reason)
        console.print(table)
        if errors_out is not None:
            write_errors(data.errors, errors_out)
            console.print(f"all {len(data.errors):,} rejected rows written to {errors_out}")
    if dry_run or not len(data):
        return
    if strict and data.errors:
        raise _fail(ValueError(f"--strict: {len(data.errors):,} rows cannot be mapped; nothing sent"))

    settings = get_settings()
    tx_topic = topic or settings.kafka.transactions_topic
    with_labels = label_column is not None and labels != "none"
    lab_topic = (labels_topic or settings.kafka.labels_topic) if with_labels else None
    try:
        stats = _stream(
            data.chunks(parse_duration(label_delay)), topic=tx_topic, labels_topic=lab_topic,
            labels=labels if with_labels else "none", rate=rate, speedup=speedup, count=None, duration=None,
            expected=len(data),
        )  # fmt: skip
    except (FraudrayError, OSError) as exc:
        raise _fail(exc) from exc
    _summary(stats, rate, tx_topic, lab_topic)


if __name__ == "__main__":
    app()
