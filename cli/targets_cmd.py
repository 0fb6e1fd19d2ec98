"""`hwdnal targets`: the known targets and whether each can be measured on this machine."""

from __future__ import annotations

import typer


def targets() -> None:
    """List the built-in targets, and for each whether it is usable here or why not."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from hwdnal.targets import all_targets

    table = Table(title="hwdnal targets", expand=True)
    for column in ("target", "runtime", "device", "precision", "threads"):
        table.add_column(column)
    table.add_column("usable here", ratio=1)
    for target in all_targets():
        ok, why = target.usable()
        table.add_row(
            target.name, target.runtime, target.device, target.precision, str(target.threads),
            f"[green]yes[/] ({escape(why)})" if ok else f"[red]no[/]: {escape(why)}",
        )
    Console().print(table)
    typer.echo("A target can also be a path to your own .toml file (copy a built-in one).")


def register(app: typer.Typer) -> None:
    app.command("targets")(targets)
