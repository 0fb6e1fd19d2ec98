"""`hwdnal lut FILE`: check a LUT file (optionally against a target) and summarise it."""

from __future__ import annotations

from contextlib import closing
from pathlib import Path

import typer


def lut(
    path: Path = typer.Argument(..., help="LUT file written by hwdnal profile."),
    target: str | None = typer.Option(
        None, "--target", "-t", help="Refuse the LUT unless it was measured for this target."
    ),
    force: bool = typer.Option(False, "--force", help="Accept a LUT of another target."),
) -> None:
    """Validate a LUT file and print its target, layers, calibration and validation error."""
    from rich.console import Console
    from rich.table import Table

    from hwdnal.latency.lut import load_lut
    from hwdnal.targets import load_target

    spec = load_target(target) if target else None
    if spec is not None and spec.remote:  # the device's fingerprint, asked of its agent
        from hwdnal.devices import open_measurer

        with closing(open_measurer(spec)) as measurer:
            table_data = load_lut(path, target=measurer, force=force)
    else:
        table_data = load_lut(path, target=spec, force=force)
    fp = table_data.fingerprint
    cal = table_data.calibration
    table = Table(title=str(path), show_header=False)
    table.add_column("")
    table.add_column("")
    table.add_row("target", f"{fp.get('target')}: {fp.get('runtime')} {fp.get('runtime_version')}, "
                  f"{fp.get('precision')}, batch {fp.get('batch')}, {fp.get('threads')} thread(s)")
    table.add_row("device", f"{fp.get('device')} {fp.get('cpu_model')} / {fp.get('gpu_model')}")
    table.add_row("model", f"{table_data.model.get('name')} {table_data.model.get('input_shape')}")
    table.add_row("layers / signatures", f"{len(table_data.layers)} / {len(table_data.entries)}")
    table.add_row("calibration", f"{cal.samples} networks: scale {cal.scale:.3f}, memory "
                  f"{cal.memory_ms_per_melem:.3f} ms/M, offset {cal.offset_ms:+.3f} ms")
    v = table_data.validation
    table.add_row("validation", "not measured (hwdnal profile --validate N)" if not v else
                  f"{v['samples']} held-out networks: median {100 * v['median_rel_error']:.1f}%, "
                  f"p95 {100 * v['p95_rel_error']:.1f}%")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("lut")(lut)
