"""`RUN/report.md` with PNG plots: what the search kept, what it gained, how it got there.

Everything comes from the run's result.json, so a report can be written (again) at any time
without torch. A run without a budget or a LUT has no latency figures; the report then
leaves those rows and plots out and says why, rather than drawing empty axes. Plots are
drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so writing
a report from inside another program never opens a window or changes its settings.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hwdnal.atomic import atomic_write
from hwdnal.results import LATENCY_ERROR_FLAG, is_number, latency_error
from hwdnal.run import RunDir
from hwdnal.targets import device_name

REPORT_NAME = "report.md"
PLOT_DIR = "report"
PLOTS = {
    "channels": "channels_per_layer.png",
    "latency": "latency_per_layer.png",
    "architecture": "architecture_stage.png",
    "blocks": "chosen_blocks.png",
}
_DENSE, _PRUNED, _BUDGET = "#9aa5b1", "#1f77b4", "#d62728"


def write_report(run_dir: str | Path) -> Path:
    """Write ``RUN/report.md`` and its plots in ``RUN/report/``; returns the markdown's path."""
    run = Path(run_dir)
    result = _read_result(run)
    folder = run / PLOT_DIR
    plots: dict[str, Path] = {}
    missing: dict[str, str] = {}

    rows = channel_rows(result)
    if rows:
        plots["channels"] = _plot_bars(
            folder / PLOTS["channels"], rows, "output channels",
            f"Channels kept per layer ({_kept_text(result)})",
        )
    else:
        missing["channels"] = "result.json lists neither layers nor groups"

    latency = latency_rows(result)
    if latency:
        dense_total = sum(r[1] for r in latency)
        pruned_total = sum(r[2] for r in latency)
        plots["latency"] = _plot_bars(
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
        plots["architecture"] = _plot_architecture(
            folder / PLOTS["architecture"], curve, unit, result.get("budget_ms")
        )
    else:
        missing["architecture"] = "result.json records no architecture stage (arch_curve)"

    if result.get("blocks"):
        plots["blocks"] = _plot_blocks(folder / PLOTS["blocks"], result["blocks"])

    for key, name in PLOTS.items():  # a plot from an earlier report must not outlive its data
        if key not in plots and (folder / name).exists():
            (folder / name).unlink()
    text = _markdown(run, result, plots, missing, curve, unit)
    return atomic_write(run / REPORT_NAME, lambda handle: handle.write(text.encode()))


# -- what is plotted (plain data, testable without matplotlib) ----------------------------
def channel_rows(result: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(layer, dense, pruned) output channels per conv/linear layer, or per gate group when
    the run records no per-layer widths."""
    layers = result.get("layers") or []
    rows = [
        (str(layer["name"]), float(layer["dense_out"]), float(layer["pruned_out"]))
        for layer in layers
        if layer.get("dense_out") is not None and layer.get("pruned_out") is not None
    ]
    if rows:
        return rows
    return [(str(g["name"]), float(g["total"]), float(g["kept"]))
            for g in result.get("groups") or []]


def latency_rows(result: dict[str, Any]) -> list[tuple[str, float, float]]:
    """(layer, dense ms, pruned ms) from the LUT, for the layers that have both figures."""
    return [
        (str(layer["name"]), float(layer["dense_lut_ms"]), float(layer["pruned_lut_ms"]))
        for layer in result.get("layers") or []
        if is_number(layer.get("dense_lut_ms")) and is_number(layer.get("pruned_lut_ms"))
    ]


def architecture_curve(result: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The architecture stage per step (``arch_curve``), else per epoch (``arch_history``)."""
    if result.get("arch_curve"):
        return list(result["arch_curve"]), "step"
    history = result.get("arch_history") or []
    curve = [{**entry, "step": entry.get("epoch", i) + 1} for i, entry in enumerate(history)]
    return curve, "epoch"


# -- plots ---------------------------------------------------------------------------------
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


def _plot_bars(
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


def _plot_blocks(path: Path, blocks: Sequence[dict[str, Any]]) -> Path:
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


def _blocks_section(result: dict[str, Any], plots: dict[str, Path],
                    missing: dict[str, str], run: Path) -> list[str]:
    blocks = result.get("blocks")
    if not blocks:
        return []
    removed = sum(1 for b in blocks if b["removed"])
    dropped = sum(len(b.get("dropped", [])) for b in blocks)
    lines = ["## Chosen blocks", "",
             f"{len(blocks)} searchable layers: {removed} removed, {dropped} candidate "
             "block(s) dropped; where several candidates survive, their outputs stay "
             "summed.", ""]
    lines += _plot_lines(plots, missing, "blocks", "chosen blocks", run)
    lines += ["| layer | residual | kept: candidate (expanded channels) | dropped |",
              "|---|:---:|---|---|"]
    for block in blocks:
        kept = ", ".join(f"{k['candidate']} ({k['channels']}"
                         + (f"/{k['of']}" if k.get("of") else "") + ")" for k in block["kept"])
        lines.append(f"| {block['layer']} | {'yes' if block['residual'] else 'no'} | "
                     f"{kept or '**layer removed**'} | {', '.join(block.get('dropped', []))} |")
    return [*lines, ""]


def _plot_architecture(
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


# -- markdown ------------------------------------------------------------------------------
def _markdown(
    run: Path, result: dict[str, Any], plots: dict[str, Path], missing: dict[str, str],
    curve: list[dict[str, Any]], unit: str,
) -> str:
    dense, pruned = result.get("dense", {}), result.get("pruned", {})
    budget = result.get("budget_ms")
    lines = [
        f"# hwdnal report — {result.get('model', '?')} on {result.get('data', '?')}",
        "",
        f"Run `{run}`, input shape {result.get('input_shape')}, written by hwdnal "
        f"{result.get('hwdnal', '?')}.",
        "",
        "## Target and budget",
        "",
        f"- **Target**: {_target_text(result.get('target'))}",
        f"- **Budget**: {_budget_text(budget, pruned, result.get('device_drift'))}",
        "",
        "## Dense against pruned",
        "",
        "| | dense | pruned | change |",
        "|---|---:|---:|---:|",
    ]
    lines.append(_row("top-1 accuracy", dense.get("accuracy"), pruned.get("accuracy"),
                      lambda v: f"{100 * v:.2f}%",
                      lambda d, p: f"{100 * (p - d):+.2f} pp"))
    lines.append(_row("parameters", dense.get("params"), pruned.get("params"),
                      lambda v: f"{int(v):,}", _ratio))
    lines.append(_row("MACs", dense.get("macs"), pruned.get("macs"),
                      lambda v: f"{v / 1e6:,.2f} M", _ratio))
    has_latency = is_number(dense.get("latency_ms")) or is_number(pruned.get("latency_ms"))
    if has_latency:
        lines.append(_row("latency, measured median (ms)", dense.get("latency_ms"),
                          pruned.get("latency_ms"), lambda v: f"{v:.3f}", _ratio))
    if is_number(pruned.get("predicted_latency_ms")):
        error = latency_error(pruned)
        change = f"{100 * error:+.1f}% vs measured" if error is not None else ""
        lines.append(f"| latency, predicted (ms) | | {pruned['predicted_latency_ms']:.3f} | "
                     f"{change} |")
    speedup = _speedup(result)
    if speedup is not None:
        lines.append(f"| speedup (measured) | | **{speedup:.2f}x** | |")
    lines.append("")
    lines += _latency_warnings(result)
    if not has_latency:
        where = ("the table under *Compiled* has the pruned network's latency"
                 if result.get("compiled") else
                 "`hwdnal compile RUN --target T` measures the pruned network")
        lines += ["Latency rows are left out: the search measured no latency (it ran without "
                  f"`--budget`); {where}, and a budgeted search records dense and pruned.", ""]
    lines += _compiled_section(result)
    lines += _stages_section(result)
    lines += _blocks_section(result, plots, missing, run)
    lines += ["## Channels kept per layer", ""]
    lines += _plot_lines(plots, missing, "channels", "channels kept per layer", run)
    lines += _groups_table(result)
    lines += ["## Latency per layer", ""]
    lines += _plot_lines(plots, missing, "latency", "latency per layer", run)
    lines += ["## Architecture stage", ""]
    if curve:
        last = curve[-1]
        plural = "s" if len(curve) != 1 else ""
        lines += [f"{len(curve)} {unit}{plural} recorded; at the end "
                  f"δ = {_fmt(last.get('delta'))}, "
                  f"{_fmt(last.get('kept'))} channels kept, loss {_fmt(last.get('loss'))}"
                  + (f", predicted latency {_fmt(last.get('predicted_latency_ms'))} ms"
                     if is_number(last.get("predicted_latency_ms")) else "")
                  + ".", ""]
        if not is_number(last.get("predicted_latency_ms")):
            lines += ["No predicted-latency curve: the architecture stage had no latency "
                      "term (no budget).", ""]
    lines += _plot_lines(plots, missing, "architecture", "architecture stage curves", run)
    return "\n".join(lines).rstrip() + "\n"


def _row(label: str, dense: Any, pruned: Any, fmt: Any, change: Any) -> str:
    d = fmt(dense) if is_number(dense) else "—"
    p = fmt(pruned) if is_number(pruned) else "—"
    c = change(float(dense), float(pruned)) if is_number(dense) and is_number(pruned) else ""
    return f"| {label} | {d} | {p} | {c} |"


def _ratio(dense: float, pruned: float) -> str:
    return f"{pruned / dense:.2f}x" if dense else ""


def _speedup(result: dict[str, Any]) -> float | None:
    if is_number(result.get("speedup")):
        return float(result["speedup"])
    dense = result.get("dense", {}).get("latency_ms")
    pruned = result.get("pruned", {}).get("latency_ms")
    if is_number(dense) and is_number(pruned) and pruned > 0:
        return float(dense) / float(pruned)
    return None


def _target_text(target: Any) -> str:
    if not target:
        return "none (the search was not tied to a target)"
    fp = target.get("fingerprint") or {}
    details = ", ".join(str(x) for x in (
        f"{fp.get('runtime')} {fp.get('runtime_version')}" if fp.get("runtime") else None,
        fp.get("precision"), f"batch {fp['batch']}" if "batch" in fp else None,
        f"{fp['threads']} thread(s)" if "threads" in fp else None,
        device_name(fp),
        f"power mode {fp['power_mode']}" if fp.get("power_mode") else None,
        f"measured on {fp.get('host', '?')} through hwdnal-agent at {fp['remote']}"
        if fp.get("remote") else None,
    ) if x)
    return f"`{target.get('name', '?')}`" + (f" ({details})" if details else "")


def _latency_warnings(result: dict[str, Any]) -> list[str]:
    """What the LUT's check against the device did, and a visible flag when its prediction
    for the pruned network is far off the measurement."""
    lines = []
    check = result.get("lut_check")
    if isinstance(check, dict) and check.get("action") in ("recalibrated", "reprofiled"):
        saved = check.get("saved_to")
        lines += [
            f"> **Note**: the reused LUT predicted the dense network "
            f"{100 * float(check.get('error') or 0):+.0f}% off its measurement on this device; "
            f"it was {check['action']} before the search"
            + (f" (written to `{saved}`)." if saved else "."), ""]
    error = latency_error(result.get("pruned", {}))
    if error is not None and abs(error) > LATENCY_ERROR_FLAG:
        lines += [
            f"> **Warning**: the LUT's predicted latency of the pruned network is "
            f"{100 * error:+.1f}% off its measurement (more than "
            f"{100 * LATENCY_ERROR_FLAG:.0f}%): the latency model does not describe this "
            "device well; profile the model again on it (`hwdnal profile`).", ""]
    return lines


def _budget_text(budget: Any, pruned: dict[str, Any], drift: Any = None) -> str:
    if not is_number(budget):
        return "none (the search pruned by λa alone)"
    text = f"{float(budget):.3f} ms"
    measured = pruned.get("latency_ms")
    if is_number(measured):
        verdict = "met" if measured <= budget else "**missed**"
        text += (f"; measured {float(measured):.3f} ms = {100 * measured / budget:.0f}% of it "
                 f"({verdict})")
        calls = pruned.get("latency_calls_ms")
        if isinstance(calls, list) and len(calls) > 1 and all(is_number(c) for c in calls):
            text += (f", the median of {len(calls)} device calls "
                     f"({', '.join(f'{float(c):.3f}' for c in calls)} ms)")
        if is_number(drift) and abs(float(drift) - 1.0) >= 0.03:
            at_start = float(measured) / float(drift)
            text += (f"; the device ran {100 * (float(drift) - 1):+.0f}% against the search's "
                     f"start (its dense network measured alongside), so at the start's speed "
                     f"{at_start:.3f} ms = {100 * at_start / budget:.0f}% of the budget")
    return text


def _compiled_section(result: dict[str, Any]) -> list[str]:
    compiled = result.get("compiled") or {}
    if not compiled:
        return []
    lines = ["## Compiled", "",
             "| target | file | precision | median (ms) | p90 (ms) | ONNX vs PyTorch (max abs) |",
             "|---|---|---|---:|---:|---:|"]
    artifacts = result.get("artifacts", {})
    for name, entry in compiled.items():
        file = artifacts.get(f"{name}.engine") or artifacts.get(f"{name}.onnx") or entry.get(
            "deployable", "?")
        lines.append(
            f"| {name} | `{file}` | {entry.get('precision', '?')} | {_fmt(entry.get('median_ms'))}"
            f" | {_fmt(entry.get('p90_ms'))} | {_fmt(entry.get('onnx_max_abs_diff'))} |"
        )
    return [*lines, ""]


def _stages_section(result: dict[str, Any]) -> list[str]:
    stages = result.get("stages") or []
    if not stages:
        return []
    lines = ["## Stages", "", "| stage | epochs | time | processes |", "|---|---:|---:|---:|"]
    for stage in stages:
        lines.append(f"| {stage.get('name')} | {stage.get('epochs', '')} | "
                     f"{_duration(stage.get('seconds'))} | {stage.get('world_size', 1)} |")
    total = sum(float(s.get("seconds") or 0) for s in stages)
    lines.append(f"| **total** | | **{_duration(total)}** | |")
    distributed = result.get("distributed") or {}
    if int(distributed.get("world_size") or 1) > 1:
        digests = distributed.get("keep_mask_digests") or []
        agreed = "; the keep masks of all ranks agreed" if digests and len(set(digests)) == 1 \
            else ""
        lines += ["", f"Trained data-parallel under torchrun: {distributed['world_size']} "
                  f"processes ({distributed.get('backend')}){agreed}."]
    return [*lines, ""]


def _groups_table(result: dict[str, Any]) -> list[str]:
    groups = result.get("groups") or []
    if not groups:
        return []
    lines = ["<details><summary>Channels kept per gate group "
             f"({_kept_text(result)})</summary>", "", "| group | kept | of |", "|---|---:|---:|"]
    lines += [f"| {g['name']} | {g['kept']} | {g['total']} |" for g in groups]
    return [*lines, "", "</details>", ""]


def _plot_lines(
    plots: dict[str, Path], missing: dict[str, str], key: str, alt: str, run: Path
) -> list[str]:
    if key in plots:
        return [f"![{alt}]({plots[key].relative_to(run).as_posix()})", ""]
    return [f"_Not plotted: {missing.get(key, 'no data')}._", ""]


def _kept_text(result: dict[str, Any]) -> str:
    groups = result.get("groups") or []
    kept = sum(int(g["kept"]) for g in groups)
    total = sum(int(g["total"]) for g in groups)
    text = f"{kept}/{total} channels in {len(groups)} groups" if total else "no groups"
    return text + removed_blocks_text(result)


def removed_blocks_text(result: dict[str, Any]) -> str:
    """', residual blocks removed: a, b' for a CNN that traded depth for width."""
    removed = result.get("removed_blocks")
    if not removed:
        return ""
    return f"; residual blocks removed: {', '.join(removed)}"


def _duration(seconds: Any) -> str:
    if not is_number(seconds):
        return "—"
    seconds = float(seconds)
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _fmt(value: Any) -> str:
    if not is_number(value):
        return "—"
    value = float(value)
    if value == int(value) and abs(value) < 1e6:
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.3f}"


def _read_result(run: Path) -> dict[str, Any]:
    return RunDir(run).read_result()
