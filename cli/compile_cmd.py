"""`hwdnal compile RUN --target T`: the run's pruned network as a deployable, measured artifact."""

from __future__ import annotations

from pathlib import Path

import typer

from hwdnal.cli.remote_option import remote_option


def compile_run(
    run: Path = typer.Argument(..., help="Run directory written by hwdnal search."),
    target: str = typer.Option(..., "--target", "-t", help="Target name or .toml file."),
    int8: bool = typer.Option(
        False, "--int8",
        help="INT8: Q/DQ ONNX (ONNX Runtime static quantization) calibrated on the run's "
        "training images; deployed as is on CPU targets, built into an engine on TensorRT.",
    ),
    calibration_images: int = typer.Option(
        512, help="Training images the INT8 quantizer calibrates on."
    ),
    calibration_method: str = typer.Option(
        "MinMax", help="INT8 calibration method: MinMax, Entropy or Percentile."
    ),
    accuracy_images: int = typer.Option(
        1000, help="Held-out images the deployed file and PyTorch classify (0: no check)."
    ),
    max_accuracy_drop: float = typer.Option(
        1.0, help="Refuse the deployed file if its top-1 is more than this many percentage "
        "points below PyTorch's (it is kept aside in compiled/<target>/rejected/)."
    ),
    atol: float = typer.Option(
        1e-4, help="Refuse the ONNX file if its outputs differ from PyTorch by more (max abs)."
    ),
    remote: str | None = remote_option(),
) -> None:
    """Export ONNX (INT8: Q/DQ) and, for GPU targets, a TensorRT engine; check its accuracy
    and measure it on the device; write a manifest.

    Static-shape ONNX, checked by onnx and compared with PyTorch (--atol); manifest beside it."""
    from contextlib import closing

    from rich.console import Console
    from rich.table import Table

    from hwdnal.compile import compile_run as compile_library
    from hwdnal.config import check_number
    from hwdnal.devices import open_measurer
    from hwdnal.run import RunDir
    from hwdnal.targets import load_target

    check_number("--calibration-images", calibration_images, 1)
    check_number("--accuracy-images", accuracy_images, 0)
    check_number("--max-accuracy-drop", max_accuracy_drop, 0)
    check_number("--atol", atol, 0, inclusive=False)
    RunDir(run).read_result()  # a run that is not there is named before the device is opened
    spec = load_target(target).with_remote(remote)
    with closing(open_measurer(spec)) as measurer:
        artifact = compile_library(
            run, measurer, int8=int8, calibration_images=calibration_images,
            calibration_method=calibration_method, accuracy_images=accuracy_images,
            max_accuracy_drop=max_accuracy_drop, atol=atol,
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
    accuracy = artifact.accuracy
    if accuracy is not None:
        table.add_row(
            f"top-1 on {accuracy.images} held-out images",
            f"deployed {accuracy.deployed:.2%}, PyTorch {accuracy.reference:.2%} "
            f"({accuracy.change_pp:+.2f} pp), same class {accuracy.agreement:.2%}",
        )
    else:
        table.add_row("top-1", artifact.manifest.get("accuracy_note", "not checked"))
    table.add_row("latency", f"median {m.median_ms:.3f} ms, p90 {m.p90_ms:.3f} ms "
                  f"({m.samples} runs)")
    fp32 = artifact.fp32_measurement
    if fp32 is not None and artifact.int8_speedup is not None:
        verdict = "faster" if artifact.int8_speedup >= 1 else "SLOWER"
        table.add_row("FP32 ONNX, timed interleaved",
                      f"median {fp32.median_ms:.3f} ms: INT8 is {artifact.int8_speedup:.2f}x "
                      f"the speed ({verdict} than FP32 here)")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("compile")(compile_run)
