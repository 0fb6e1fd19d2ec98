"""report.md's text: the summary table, the target, the budget's verdict, the LUT's
warnings, the compiled artifacts, the stages and the groups."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hwdnal.report.plots import plot_lines
from hwdnal.report.tables import kept_text
from hwdnal.results import LATENCY_ERROR_FLAG, is_number, latency_error
from hwdnal.targets import device_name


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
    lines += plot_lines(plots, missing, "blocks", "chosen blocks", run)
    lines += ["| layer | residual | kept: candidate (expanded channels) | dropped |",
              "|---|:---:|---|---|"]
    for block in blocks:
        kept = ", ".join(f"{k['candidate']} ({k['channels']}"
                         + (f"/{k['of']}" if k.get("of") else "") + ")" for k in block["kept"])
        lines.append(f"| {block['layer']} | {'yes' if block['residual'] else 'no'} | "
                     f"{kept or '**layer removed**'} | {', '.join(block.get('dropped', []))} |")
    return [*lines, ""]


def markdown(
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
        f"- **Budget**: {budget_text(budget, pruned, result.get('device_drift'))}",
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
    lines += plot_lines(plots, missing, "channels", "channels kept per layer", run)
    lines += _groups_table(result)
    lines += ["## Latency per layer", ""]
    lines += plot_lines(plots, missing, "latency", "latency per layer", run)
    lines += ["## Architecture stage", ""]
    if curve:
        last = curve[-1]
        plural = "s" if len(curve) != 1 else ""
        lines += [f"{len(curve)} {unit}{plural} recorded; at the last one "
                  f"δ = {_fmt(last.get('delta'))}, "
                  f"{_fmt(last.get('kept'))} channels kept, loss {_fmt(last.get('loss'))}"
                  + (f", predicted latency {_fmt(last.get('predicted_latency_ms'))} ms"
                     if is_number(last.get("predicted_latency_ms")) else "")
                  + ".", ""]
        lines += _stage_end_lines(result.get("arch_mask") or {})
        if not is_number(last.get("predicted_latency_ms")):
            lines += ["No predicted-latency curve: the architecture stage had no latency "
                      "term (no budget).", ""]
    lines += plot_lines(plots, missing, "architecture", "architecture stage curves", run)
    return "\n".join(lines).rstrip() + "\n"


def _stage_end_lines(arch: dict[str, Any]) -> list[str]:
    """Where the stage ended (with a budget, its best late architecture, not necessarily
    the last step's) and what the fit changed after it."""
    if not is_number(arch.get("kept")) or not is_number(arch.get("of_budget")):
        return []
    return [f"The stage ended on {arch['kept']}/{arch.get('total', '?')} channels, "
            f"{_fmt(arch.get('predicted_ms'))} ms by the LUT ({arch['of_budget']:.0%} of the "
            f"budget); the fit then changed {_fmt(arch.get('fit_changed'))} channel(s).", ""]


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


def budget_text(budget: Any, pruned: dict[str, Any], drift: Any = None) -> str:
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
             f"({kept_text(result)})</summary>", "", "| group | kept | of |", "|---|---:|---:|"]
    lines += [f"| {g['name']} | {g['kept']} | {g['total']} |" for g in groups]
    return [*lines, "", "</details>", ""]


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
