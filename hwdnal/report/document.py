"""`hwdnal report RUN`: report.md and its plots, written into the run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hwdnal.atomic import atomic_write
from hwdnal.report.markdown import markdown
from hwdnal.report.plots import plot_architecture, plot_bars, plot_blocks
from hwdnal.report.tables import architecture_curve, channel_rows, kept_text, latency_rows
from hwdnal.run import RunDir

REPORT_NAME = "report.md"


PLOT_DIR = "report"


PLOTS = {
    "channels": "channels_per_layer.png",
    "latency": "latency_per_layer.png",
    "architecture": "architecture_stage.png",
    "blocks": "chosen_blocks.png",
}


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.md`` and its plots in ``RUN/report/``; returns the markdown's path."""
    run = Path(run_dir)
    result = _read_result(run)
    folder = run / PLOT_DIR
    plots: dict[str, Path] = {}
    missing: dict[str, str] = {}

    rows = channel_rows(result)
    if rows:
        plots["channels"] = plot_bars(
            folder / PLOTS["channels"], rows, "output channels",
            f"Channels kept per layer ({kept_text(result)})",
        )
    else:
        missing["channels"] = "result.json lists neither layers nor groups"

    latency = latency_rows(result)
    if latency:
        dense_total = sum(r[1] for r in latency)
        pruned_total = sum(r[2] for r in latency)
        plots["latency"] = plot_bars(
            folder / PLOTS["latency"], latency, "LUT latency (ms)",
            f"Latency per layer from the LUT: {dense_total:.3f} → {pruned_total:.3f} ms summed",
        )
    else:
        missing["latency"] = (
            "the run has no per-layer latency (`layers[*].dense_lut_ms`): it was searched "
            "without a latency LUT; search with `--budget` (or `--lut FILE`) to get one"
        )

    curve, unit = architecture_curve(result)
    if curve:
        plots["architecture"] = plot_architecture(
            folder / PLOTS["architecture"], curve, unit, result.get("budget_ms")
        )
    else:
        missing["architecture"] = "result.json records no architecture stage (arch_curve)"

    if result.get("blocks"):
        plots["blocks"] = plot_blocks(folder / PLOTS["blocks"], result["blocks"])

    for key, name in PLOTS.items():  # a plot from an earlier report must not outlive its data
        if key not in plots and (folder / name).exists():
            (folder / name).unlink()
    text = markdown(run, result, plots, missing, curve, unit)
    return atomic_write(run / REPORT_NAME, lambda handle: handle.write(text.encode()))


def _read_result(run: Path) -> dict[str, Any]:
    return RunDir(run).read_result()
