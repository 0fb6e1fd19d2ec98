"""`hwdnal profile`: measure a model's per-layer latency tables on a target into a LUT file."""

from __future__ import annotations

from contextlib import closing, nullcontext
from pathlib import Path

import typer

from hwdnal.cli.remote_option import remote_option


def profile(
    target: str = typer.Option(
        ..., "--target", "-t", help="Target name (see hwdnal targets) or a .toml path."
    ),
    model: str = typer.Option(..., "--model", "-m", help="Model name (e.g. resnet18, resnet20)."),
    input_size: int = typer.Option(..., "--input-size", help="Input height and width, pixels."),
    out: Path | None = typer.Option(
        None, "--out", help="LUT file (default: MODEL-TARGET-NxN.json in $HWDNAL_PROFILES_DIR, "
        "else ~/.cache/hwdnal/profiles)."
    ),
    num_classes: int = typer.Option(1000, "--num-classes", help="Classes of the model's head."),
    in_channels: int = typer.Option(3, "--in-channels", help="Input image channels."),
    step: int | None = typer.Option(None, "--step", help="Grid step in channels."),
    grid_points: int | None = typer.Option(
        None, "--grid-points", help="At most this many grid points per channel axis."
    ),
    calibrate: int | None = typer.Option(
        None, "--calibrate", help="Random sub-networks measured for the calibration."
    ),
    validate: int | None = typer.Option(
        None, "--validate", help="Held-out random sub-networks to report the error on."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random sub-networks."),
    candidates: str | None = typer.Option(
        None, help="Supernets only: kernel x expansion candidates, as given to search."
    ),
    force: bool = typer.Option(
        False, "--force", help="Overwrite an existing LUT measured for another target."
    ),
    remote: str | None = remote_option(),
) -> None:
    """Measure per-layer latency over a channel grid, calibrate on whole networks, write a LUT."""
    from rich.console import Console
    from rich.table import Table

    from hwdnal.cli.plain_log import CountLines, PlainLog
    from hwdnal.cli.progress import progress_bars
    from hwdnal.config import check_number
    from hwdnal.devices import open_measurer
    from hwdnal.errors import UserError
    from hwdnal.interrupt import GracefulStop, Interrupted
    from hwdnal.latency.lut import check_target, load_lut
    from hwdnal.latency.pipeline import default_lut_path, input_shape_for, profile_model
    from hwdnal.models import create_model
    from hwdnal.targets import load_target

    check_number("--input-size", input_size, 1)
    check_number("--num-classes", num_classes, 1)
    check_number("--in-channels", in_channels, 1)
    for flag, value, minimum in (("--step", step, 1), ("--grid-points", grid_points, 1),
                                 ("--calibrate", calibrate, 0), ("--validate", validate, 0)):
        if value is not None:
            check_number(flag, value, minimum)
    console = Console(stderr=True)
    spec = load_target(target).with_remote(remote)
    shape = input_shape_for(spec.batch, in_channels, input_size)
    path = out or default_lut_path(model, spec.name, shape)
    network = create_model(model, num_classes=num_classes, in_channels=in_channels,
                           candidates=candidates)
    measurer = open_measurer(spec)
    if spec.remote:
        console.print(f"measuring on the agent at {spec.remote} "
                      f"({measurer.fingerprint().get('host')})")
    if path.exists() and not force:  # never overwrite another target's LUT silently
        try:
            existing = load_lut(path)
        except UserError:
            existing = None  # unreadable: profiling again replaces it
        if existing is not None:
            check_target(existing, measurer, str(path))

    live = console.is_terminal  # in a pipe: a plain line at each tenth, nothing redrawn
    bars = progress_bars("[bold]{task.description:<15}", "{task.fields[what]}", console
                         ) if live else nullcontext()
    with closing(measurer), GracefulStop() as stop, bars as bar:
        tasks: dict[str, int] = {}
        counters: dict[str, CountLines] = {}

        def report(done: int, total: int, what: str) -> None:
            stage = "whole networks" if what == "whole networks" else "layer grid"
            if bar is None:
                counters.setdefault(stage, CountLines(PlainLog(), stage)).update(
                    done, total, what)
            else:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=max(total, 1), what="")
                bar.update(tasks[stage], completed=done, total=max(total, 1),
                           what="" if what == stage else what[:40])
            if stop.requested:  # after a whole batch: its measurements are in the cache
                assert stop.signal_number is not None
                raise Interrupted(f"profiling ({stage}, {done}/{total})", stop.signal_number)

        result = profile_model(
            measurer, network, model, input_size, in_channels, out=path, step=step,
            grid_points=grid_points, calibrate=calibrate, validate=validate, seed=seed,
            progress=report,
        )

    if result.note:
        console.print(result.note)
    lut = result.lut
    cal = lut.calibration
    table = Table(title=f"{model} on {spec.name}")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("layers / signatures", f"{len(lut.layers)} / {len(lut.entries)}")
    table.add_row("layer measurements", f"{result.grid_points} ({result.grid_measured_now} now, "
                  f"{result.grid_points - result.grid_measured_now} from cache)")
    table.add_row("whole-network measurements now", str(result.networks_measured_now))
    dense = cal.points[0]
    table.add_row("dense measured / predicted",
                  f"{dense['measured_ms']:.3f} ms / {dense['predicted_ms']:.3f} ms")
    table.add_row("calibration", f"{cal.samples} networks, scale {cal.scale:.3f}, memory "
                  f"{cal.memory_ms_per_melem:.3f} ms/M, offset {cal.offset_ms:+.3f} ms")
    if lut.validation:
        v = lut.validation
        table.add_row("validation (held out)", f"{v['samples']} networks: median "
                      f"{100 * v['median_rel_error']:.1f}%, p95 {100 * v['p95_rel_error']:.1f}%")
    Console(width=None if live else 200).print(table)
    typer.echo(
        f"{result.grid_points} layer measurements ({result.grid_measured_now} taken now) and "
        f"{result.networks_measured_now} whole networks in {result.seconds:.0f} s -> {result.path}"
    )


def register(app: typer.Typer) -> None:
    app.command("profile")(profile)
