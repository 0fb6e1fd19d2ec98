"""`hwdnal targets`: the known targets and whether each can be measured, here or on its agent."""

from __future__ import annotations

import typer

from hwdnal.cli.remote_option import remote_option


def targets(
    files: list[str] | None = typer.Argument(
        None, help="Your own target files (.toml) to list beside the built-in ones."
    ),
    remote: str | None = remote_option(),
) -> None:
    """List the targets and for each whether it is usable (here, or on its hwdnal-agent,
    which is asked for its fingerprint)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from hwdnal.targets import all_targets, load_target

    found = [t.with_remote(remote) for t in all_targets()]
    found += [load_target(path).with_remote(remote) for path in files or []]
    table = Table(title="hwdnal targets", expand=True)
    for column in ("target", "runtime", "device", "precision", "threads", "measured on"):
        table.add_column(column)
    table.add_column("usable", ratio=1)
    for target in found:
        ok, why = _probe(target)
        table.add_row(
            target.name, target.runtime, target.device, target.precision, str(target.threads),
            escape(target.remote or "this machine"),
            f"[green]yes[/] ({escape(why)})" if ok else f"[red]no[/]: {escape(why)}",
        )
    Console().print(table)
    typer.echo("A target can also be a path to your own .toml file (copy a built-in one); "
               "`remote = \"ssh://…\"` in it measures on a device's hwdnal-agent.")


def _probe(target) -> tuple[bool, str]:
    """Local targets: usable here? Remote ones: does the agent answer, and with what device?"""
    from hwdnal.devices import open_measurer, usable_here

    if not target.remote:
        return usable_here(target)
    from hwdnal.errors import UserError
    from hwdnal.targets import device_name

    try:
        measurer = open_measurer(target)
    except UserError as error:
        return False, str(error)
    try:
        fp = measurer.fingerprint()
    finally:
        measurer.close()
    device = device_name(fp)
    power = f", power mode {fp['power_mode']}" if "power_mode" in fp else ""
    return True, (f"agent {fp.get('agent_version')} on {fp.get('host')}: {device} "
                  f"({fp.get('arch')}), {fp.get('runtime')} {fp.get('runtime_version')}{power}")


def register(app: typer.Typer) -> None:
    app.command("targets")(targets)
