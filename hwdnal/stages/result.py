"""The search's result: result.json assembled from what the stages found (its keys are a
contract, docs/design.md), after the compile stage's measurement and verdict."""

from __future__ import annotations

from torch import nn

from hwdnal import __version__
from hwdnal.errors import UserError
from hwdnal.gating.blocks import removable_branches
from hwdnal.models.proxyless_supernet import describe_blocks
from hwdnal.results import Result
from hwdnal.stages.compile import run_compile
from hwdnal.stages.context import Progress, StageContext


def write_result(ctx: StageContext, progress: Progress, dense: nn.Module, pruned: nn.Module,
                 dense_size: tuple[int, int], pruned_facts: tuple[int, int, float],
                 ) -> Result:
    """Rank 0: result.json from what the stages found; with ``compile``, the compile stage
    first (its measurement and verdict go in). A compile that fails keeps the rest."""
    config = ctx.config
    assert ctx.latency is not None
    dense_params, dense_macs = dense_size
    pruned_params, pruned_macs, pruned_accuracy = pruned_facts
    result: Result = {
        "hwdnal": __version__,
        "model": config.model,
        "data": config.data,
        "input_shape": list(ctx.example().shape),
        "dense": {"accuracy": progress.dense_accuracy, "params": dense_params,
                  "macs": dense_macs},
        "pruned": {"accuracy": pruned_accuracy, "params": pruned_params, "macs": pruned_macs},
        "budget": config.budget,
        "budget_ms": ctx.latency.budget_ms,
        "target": {"name": ctx.latency.target.name,
                   "fingerprint": ctx.latency.fingerprint()},
        "groups": progress.groups,
        "layers": progress.layers,
        "stages": progress.stages,
        "arch_history": progress.arch_history,
        "arch_curve": progress.arch_curve,
        "fit_rounds": progress.fit_rounds,
        "arch_mask": progress.arch_mask,
        "distributed": {**ctx.cluster.describe(),
                        "keep_mask_digests": progress.mask_digests},
        "artifacts": {"pruned_model": "pruned.pt", "dense_model": "dense.pt",
                      "config": "config.json"},
    }
    blocks = describe_blocks(pruned, dense)
    if blocks:  # a supernet: which operations were chosen, which layers removed
        result["blocks"] = blocks
    branches = removable_branches(dense)
    if branches:  # a CNN: the residual blocks traded for width
        modules = dict(pruned.named_modules())
        result["removed_blocks"] = [b.block for b in branches
                                    if isinstance(modules.get(b.block), nn.Identity)]
    if ctx.latency.lut_path:
        result["lut"] = ctx.latency.lut_path
    lut_check = (progress.latency or {}).get("lut_check")
    if lut_check:
        result["lut_check"] = lut_check
    if config.compile:
        try:
            run_compile(ctx, progress, dense, pruned, result)
        except UserError:  # e.g. a deployed file refused: the search's results are kept,
            ctx.run_dir.write_result(result)  # and `hwdnal compile RUN` can try again
            raise
    ctx.run_dir.write_result(result)
    return result
