"""The Typer application: one small module per command, registered here.

Imports of torch and the library happen inside the commands, so `hwdnal --help` is instant.
Every :class:`hwdnal.errors.UserError` becomes one line on stderr and exit code 2; the
traceback is shown only with ``--debug``.
"""

from __future__ import annotations

import os
import shlex
import sys

import typer

from hwdnal.cli import (
    bench_cmd,
    compile_cmd,
    lut_cmd,
    profile_cmd,
    report_cmd,
    search_cmd,
    targets_cmd,
)

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
compile_cmd.register(app)
bench_cmd.register(app)
report_cmd.register(app)


def main() -> None:
    """Console-script entry point: run the app, turning user errors into one clear line.

    Typer (standalone mode) reports usage errors itself, with exit code 2; library errors
    and graceful stops arrive here.
    """
    from hwdnal.errors import UserError
    from hwdnal.interrupt import Interrupted

    # under torchrun, rank 0 speaks for the job: the others stay quiet about errors it
    # already reported (PeerError) and about the resume line
    quiet = os.environ.get("RANK", "0") != "0"
    try:
        app()
    except UserError as error:
        if state["debug"] or "--debug" in sys.argv:
            raise
        from hwdnal.distributed import PeerError

        if not (quiet and isinstance(error, PeerError)):
            typer.echo(f"error: {error}", err=True)
        sys.exit(2)
    except Interrupted as stop:
        if not quiet:
            command = shlex.join(["hwdnal", *sys.argv[1:]])
            if "WORLD_SIZE" in os.environ:
                command = f"torchrun ... --no-python {command}"
            typer.echo(f"stopped during {stop.where}; progress is saved. Resume with: "
                       f"{command}", err=True)
        sys.exit(stop.exit_code)


if __name__ == "__main__":
    main()
