"""The `fraudray` command line (typer)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from cluster import stack as stack_mod
from cluster.errors import FraudrayError
from cluster.settings import get_settings

app = typer.Typer(help="fraudray: distributed real-time fraud scoring on Ray.", no_args_is_help=True)
stack_app = typer.Typer(help="The local stack: Kafka, Redis, PostgreSQL, Prometheus, Alertmanager.")
app.add_typer(stack_app, name="stack")
console = Console()


def _event(name: str, result: str, seconds: float) -> None:
    console.print(f"  {name:<13} {result:<16} {seconds:6.1f} s")


@stack_app.command("up")
def stack_up(
    only: Annotated[list[str] | None, typer.Argument(help="services to start (default: all)")] = None,
) -> None:
    """Start the local stack (idempotent) and wait until every service answers."""
    try:
        stack_mod.up(get_settings(), only, on_event=_event)
    except FraudrayError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


@stack_app.command("down")
def stack_down(
    only: Annotated[list[str] | None, typer.Argument(help="services to stop (default: all)")] = None,
) -> None:
    """Stop what `stack up` started, and nothing else."""
    try:
        stack_mod.down(get_settings(), only, on_event=_event)
    except FraudrayError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(1) from exc


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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
