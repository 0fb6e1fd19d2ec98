"""The rows a report draws, read from result.json: channels per group, latency per layer,
the architecture stage's curve."""

from __future__ import annotations

from typing import Any

from hwdnal.results import is_number


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


def kept_text(result: dict[str, Any]) -> str:
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
