"""The Typer application: one small module per command, registered here.

Imports of torch and the library happen inside the commands, so `hwdnal --help` is instant.
Every :class:`hwdnal.errors.UserError` becomes one line on stderr and exit code 2; the
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import sys

import typer
from hwdnal.cli import lut_cmd, profile_cmd, search_cmd, targets_cmd

app = typer.Typer(
    name="hwdnal",
    help="Prune a CNN with DNAL until it meets a latency budget measured on a real device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
state = {"debug": False}


@app.callback()
def _root(
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks on errors."),
) -> None:
    state["debug"] = debug


search_cmd.register(app)
targets_cmd.register(app)
profile_cmd.register(app)
lut_cmd.register(app)


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one clear line."""
    from hwdnal.errors import UserError

    try:
        app(standalone_mode=False)
    except UserError as error:
        if state["debug"] or "--debug" in sys.argv:
            raise
        typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as error:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(error, click.exceptions.UsageError):
            error.show()
            sys.exit(2)
        if isinstance(error, click.exceptions.ClickException):
            error.show()
            sys.exit(error.exit_code)
        raise


if __name__ == "__main__":
    main()
