"""The report's figures (matplotlib, imported when drawing): channels kept, a supernet's
chosen blocks, the architecture stage over its steps."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwdnal.atomic import atomic_write
from hwdnal.results import is_number

_DENSE = "#9aa5b1"


_PRUNED = "#1f77b4"


_BUDGET = "#d62728"


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    data = buffer.getvalue()
    return atomic_write(path, lambda handle: handle.write(data))


def plot_bars(
    path: Path, rows: Sequence[tuple[str, float, float]], ylabel: str, title: str
) -> Path:
    """Dense and pruned side by side for every layer, in network order."""
    count = len(rows)
    figure = _figure(min(max(6.0, 0.32 * count + 2), 28.0), 4.8)
    axes = figure.add_subplot()
    positions = list(range(count))
    width = 0.4
    axes.bar([p - width / 2 for p in positions], [r[1] for r in rows], width,
             label="dense", color=_DENSE)
    axes.bar([p + width / 2 for p in positions], [r[2] for r in rows], width,
             label="pruned", color=_PRUNED)
    axes.set_xticks(positions)
    axes.set_xticklabels([r[0] for r in rows], rotation=90, fontsize=7 if count > 24 else 8)
    axes.set_xlim(-0.6, count - 0.4)
    axes.set_ylabel(ylabel)
    axes.set_title(title, fontsize=10, loc="left")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(ncols=2, loc="lower right", bbox_to_anchor=(1.0, 1.0), frameon=False,
                fontsize=8)
    return _save(figure, path)


def plot_blocks(path: Path, blocks: Sequence[dict[str, Any]]) -> Path:
    """The chosen architecture of a supernet: one column per searchable layer, one row per
    candidate; a cell's shade is the share of the candidate's expanded channels kept
    (blank: dropped), a grey column a layer removed."""
    from matplotlib import colormaps

    names = list(dict.fromkeys(c for b in blocks for c in
                               [*(k["candidate"] for k in b["kept"]), *b.get("dropped", [])]))
    figure = _figure(min(max(6.0, 0.42 * len(blocks) + 2.5), 28.0), 1.8 + 0.42 * len(names))
    axes = figure.add_subplot()
    shades = colormaps["Blues"]
    for x, block in enumerate(blocks):
        if block["removed"]:
            axes.add_patch(_rectangle(x - 0.5, -0.5, 1, len(names), "#d9d9d9"))
            axes.text(x, len(names) / 2 - 0.5, "removed", rotation=90, ha="center",
                      va="center", fontsize=7, color="#555555")
            continue
        for kept in block["kept"]:
            y = names.index(kept["candidate"])
            share = kept["channels"] / kept["of"] if kept.get("of") else 1.0
            axes.add_patch(_rectangle(x - 0.45, y - 0.45, 0.9, 0.9,
                                      shades(0.3 + 0.7 * share)))
            axes.text(x, y, str(kept["channels"]), ha="center", va="center", fontsize=6,
                      color="white" if share > 0.5 else "black")
    axes.set_xlim(-0.5, len(blocks) - 0.5)
    axes.set_ylim(len(names) - 0.5, -0.5)
    axes.set_xticks(range(len(blocks)))
    axes.set_xticklabels([b["layer"] + ("" if b["residual"] else " *") for b in blocks],
                         rotation=90, fontsize=7)
    axes.set_yticks(range(len(names)))
    axes.set_yticklabels(names, fontsize=8)
    axes.set_title("Chosen blocks: expanded channels kept per candidate\n"
                   "blank: dropped · grey: layer removed · *: no residual path", fontsize=9,
                   loc="left")
    return _save(figure, path)


def _rectangle(x: float, y: float, width: float, height: float, color: Any) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), width, height, color=color, linewidth=0)


def plot_architecture(
    path: Path, curve: list[dict[str, Any]], unit: str, budget_ms: float | None
) -> Path:
    """δ (log), predicted latency against the budget, kept channels and loss over the stage."""
    panels = [("delta", "δ (log scale)"), ("predicted_latency_ms", "predicted latency (ms)"),
              ("kept", "channels kept"), ("loss", "loss")]
    panels = [p for p in panels if _series(curve, p[0])[0]]
    figure = _figure(7.5, 2.1 * len(panels) + 0.6)
    axes_list = figure.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for axes, (key, label) in zip(axes_list, panels, strict=True):
        xs, ys = _series(curve, key)
        axes.plot(xs, ys, color=_PRUNED, marker="o" if len(xs) < 20 else None, linewidth=1.2)
        axes.set_ylabel(label, fontsize=9)
        axes.grid(alpha=0.3)
        if key == "delta":
            axes.set_yscale("log")
            if min(ys) == max(ys):  # one point (or a constant δ): give the log axis a decade
                axes.set_ylim(ys[0] / 10, ys[0] * 10)
        if key == "predicted_latency_ms":
            if is_number(budget_ms):
                axes.axhline(float(budget_ms), color=_BUDGET, linestyle="--",
                             label=f"budget {float(budget_ms):.3g} ms")
            weights = _series(curve, "latency_weight")
            if weights[0]:
                twin = axes.twinx()
                twin.plot(*weights, color="#7f7f7f", linewidth=0.8, linestyle=":",
                          label="latency weight")
                twin.set_ylabel("latency weight", fontsize=8, color="#7f7f7f")
                twin.legend(loc="upper center", fontsize=8)
            axes.legend(loc="upper right", fontsize=8)
    axes_list[-1].set_xlabel(unit)
    if unit == "epoch":
        from matplotlib.ticker import MaxNLocator

        axes_list[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes_list[0].set_title("Architecture stage", fontsize=10)
    return _save(figure, path)


def _series(curve: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(float(e["step"]), float(e[key])) for e in curve
              if is_number(e.get(key)) and is_number(e.get("step"))]
    return [p[0] for p in points], [p[1] for p in points]


def plot_lines(
    plots: dict[str, Path], missing: dict[str, str], key: str, alt: str, run: Path
) -> list[str]:
    if key in plots:
        return [f"![{alt}]({plots[key].relative_to(run).as_posix()})", ""]
    return [f"_Not plotted: {missing.get(key, 'no data')}._", ""]
