"""Stage 3, prune: the architecture stage's keep mask, fitted to the budget on the device
(or aligned to the target's channel step), and every channel whose gate is 0 removed
physically."""

from __future__ import annotations

import copy
import time
from typing import Any

import torch
from torch import nn

from hwdnal.budget.fit import predicted_ms
from hwdnal.budget.measure import fit_to_budget
from hwdnal.gating.alignment import align_keep_mask
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import prune_physically
from hwdnal.latency.cache import MeasurementCache
from hwdnal.latency.predictor import LatencyModel
from hwdnal.stages.context import Progress, StageContext, load_module
from hwdnal.train import evaluate


def run_prune(ctx: StageContext, progress: Progress, gated: GatedModel) -> nn.Module:
    """Remove every channel whose gate is 0; with a budget, fit it on the device first."""
    if "prune" in progress.finished:
        checkpoint = ctx.load_checkpoint("pruned_init")
        assert checkpoint is not None
        return checkpoint["model"].to(ctx.device)
    started = time.perf_counter()
    ctx.observer.stage_started("prune", 1, 1, 0)
    latency = ctx.latency
    assert latency is not None
    keep = gated.keep_mask().cpu()
    # the ranks trained the same gates: their masks must agree before anything is cut
    progress.mask_digests = ctx.cluster.check_same("keep mask after the architecture stage",
                                                 keep)
    stage_keep = keep.clone()
    progress.arch_mask = {"kept": int(keep.sum()), "total": int(keep.numel())}
    if latency.latency_model is not None:
        predicted = predicted_ms(gated, latency.latency_model, keep)
        progress.arch_mask["predicted_ms"] = round(predicted, 5)
        if latency.budget_ms:
            progress.arch_mask["of_budget"] = round(predicted / latency.budget_ms, 4)
    if latency.budget_ms is not None:
        keep = ctx.cluster.run_on_main(lambda: fit_on_device(ctx, progress, gated, keep))
    elif latency.channel_step > 1:
        keep = align_keep_mask(gated, keep, latency.channel_step)
    progress.arch_mask["fit_changed"] = int((keep.cpu() != stage_keep.cpu()).sum())
    facts = progress.arch_mask
    if "of_budget" in facts:
        ctx.observer.message(
            f"the architecture stage kept {facts['kept']}/{facts['total']} channels, "
            f"{facts['predicted_ms']:.3f} ms by the LUT ({facts['of_budget']:.0%} of the "
            f"budget); the fit changed {facts['fit_changed']} channel(s)")
    gated.set_keep_mask(keep.to(gated.gate.s.device))
    progress.groups = gated.kept_per_group()
    progress.layers = layer_table(gated, latency.latency_model)
    pruned = prune_physically(gated)
    progress.arch_mask["accuracy_before_finetune"] = evaluate(
        ctx.recalibrated(copy.deepcopy(pruned)), ctx.data, cluster=ctx.cluster)
    for parameter in pruned.parameters():
        parameter.requires_grad_(True)
    ctx.on_main(lambda: ctx.run_dir.save_checkpoint(
        "pruned_init", {"model": pruned, "keep": keep.cpu()}))
    ctx.finish_stage(progress, "prune", 0, started)
    return pruned


def fit_on_device(ctx: StageContext, progress: Progress, gated: GatedModel,
                  keep: torch.Tensor) -> torch.Tensor:
    """Rank 0: fit the architecture to the budget by measuring on the device."""
    latency = ctx.latency
    assert latency is not None
    dense = load_module(ctx.run_dir.path / "dense.pt")
    cache = MeasurementCache(ctx.run_dir.path / "fit-measurements.json",
                             latency.fingerprint())
    if len(cache):
        ctx.observer.message(
            f"resuming the fit: {len(cache) // 2} measured call(s) are reused from "
            f"{cache.path}")
    keep, rounds = fit_to_budget(gated, dense, latency, ctx.example().cpu(), cache=cache)
    progress.fit_rounds = [r.to_dict() for r in rounds]
    for r in rounds:
        ctx.observer.message(r.describe())
    return keep


def layer_table(gated: GatedModel, model: LatencyModel | None) -> list[dict[str, Any]]:
    """Per conv/linear layer: channels before and after, and LUT latency when ``model``
    (the LUT's) is given."""
    names, kept_in, kept_out = gated.layer_channels(hard=True)
    kept_in, kept_out = (c.detach().round().long().cpu().tolist() for c in (kept_in, kept_out))
    rows = []
    for name, pruned_in, pruned_out in zip(names, kept_in, kept_out, strict=True):
        layer = gated.plan.layers[name]
        row: dict[str, Any] = {
            "name": name,
            "dense_in": int(layer.in_gate_index.numel()),
            "dense_out": int(layer.out_gate_index.numel()),
            "pruned_in": pruned_in,
            "pruned_out": pruned_out,
        }
        if model is not None and name in model.lut.layers:
            with torch.no_grad():  # plain numbers: computed on the CPU copy of the LUT
                row["dense_lut_ms"] = float(model.layer_latency(
                    name, row["dense_in"], row["dense_out"]))
                row["pruned_lut_ms"] = float(model.layer_latency(
                    name, row["pruned_in"], row["pruned_out"]))
        rows.append(row)
    return rows
