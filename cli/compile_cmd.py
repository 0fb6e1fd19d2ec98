"""`hwdnal compile RUN --target T`: the run's pruned network as a deployable, measured artifact."""

from __future__ import annotations

from pathlib import Path

import typer

from hwdnal.cli.remote_option import remote_option


def compile_run(
    run: Path = typer.Argument(..., help="Run directory written by hwdnal search."),
    target: str = typer.Option(..., "--target", "-t", help="Target name or .toml file."),
    int8: bool = typer.Option(
        False, "--int8", help="TensorRT targets: INT8 engine calibrated on the run's images."
    ),
    calibration_images: int = typer.Option(
        512, help="Training images fed to the INT8 calibrator."
    ),
    atol: float = typer.Option(
        1e-4, help="Refuse the ONNX file if its outputs differ from PyTorch by more (max abs)."
    ),
    remote: str | None = remote_option(),
) -> None:
    """Export ONNX and, for GPU targets, a TensorRT engine; measure it; write a manifest.

    Static-shape ONNX, checked by onnx and compared with PyTorch (--atol); manifest beside it."""
    from rich.console import Console
    from rich.table import Table

    from hwdnal.compile import compile_run as compile_library

    artifact = compile_library(
        run, target, int8=int8, calibration_images=calibration_images, atol=atol,
        remote=remote,
    )
    m = artifact.measurement
    table = Table(title=f"hwdnal compile — {run} for {artifact.target}", show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row("deploy", str(artifact.deployable))
    table.add_row("manifest", str(artifact.manifest_path))
    table.add_row("input shape / precision",
                  f"{list(artifact.input_shape)} / {artifact.precision}")
    table.add_row("ONNX vs PyTorch", f"{artifact.onnx_max_abs_diff:.2e} max abs")
    check = artifact.manifest["check"]
    table.add_row(f"deployed vs PyTorch (on {check['deployed_checked_on']})",
                  f"{check['deployed_vs_torch_max_abs_diff']:.2e} max abs")
    table.add_row("latency", f"median {m.median_ms:.3f} ms, p90 {m.p90_ms:.3f} ms "
                  f"({m.samples} runs)")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_run)
