"""`hwdnal report RUN`: report.md with plots of what the search kept and what it gained."""

from __future__ import annotations

from pathlib import Path

import typer


def report(run: Path = typer.Argument(..., help="Run directory written by hwdnal search.")) -> None:
    """Write RUN/report.md and its PNG plots in RUN/report/."""
    from hwdnal.report import write_report

    path = write_report(run)
    typer.echo(f"wrote {path} (plots in {path.parent / 'report'})")


def register(app: typer.Typer) -> None:
    app.command("report")(report)
