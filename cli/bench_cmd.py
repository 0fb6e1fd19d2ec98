"""`hwdnal bench ARTIFACT --target T`: time an ONNX file or a TensorRT engine on a target."""

from __future__ import annotations

from pathlib import Path

import typer

from hwdnal.cli.remote_option import remote_option


def bench(
    artifact: Path = typer.Argument(..., help="An .onnx file or a TensorRT engine (.engine)."),
    target: str = typer.Option(..., "--target", "-t", help="Target name or .toml file."),
    remote: str | None = remote_option(),
) -> None:
    """Measure the artifact with the target's warm-up and iterations: median and p90."""
    from contextlib import closing

    from rich.console import Console
    from rich.table import Table

    from hwdnal.compile import artifact_input_shape, artifact_kind, bench_artifact
    from hwdnal.devices import open_measurer
    from hwdnal.targets import load_target

    spec = load_target(target).with_remote(remote)
    kind = artifact_kind(artifact)
    with closing(open_measurer(spec)) as measurer:
        measurement = bench_artifact(artifact, measurer)
    shape = artifact_input_shape(artifact)
    table = Table(title=f"hwdnal bench — {artifact.name} on {spec.name}")
    for column in ("artifact", "input shape", "median (ms)", "p90 (ms)", "runs"):
        table.add_column(column, justify="left" if column in ("artifact", "input shape")
                         else "right")
    table.add_row(
        f"{artifact} ({kind})", str(list(shape)) if shape else "?",
        f"{measurement.median_ms:.3f}", f"{measurement.p90_ms:.3f}", str(measurement.samples),
    )
    Console().print(table)
    where = f" on the agent at {spec.remote}" if spec.remote else ""
    typer.echo(f"{spec.runtime}, {spec.precision}, batch {spec.batch}, "
               f"{spec.threads} thread(s){where}")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench)
