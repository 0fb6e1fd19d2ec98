"""Stage 4, finetune: the pruned network, its BatchNorm statistics recomputed, trains again
(optionally learning from the dense network's softened logits too)."""

from __future__ import annotations

import copy
import time

from torch import nn

from hwdnal.distillation import Distillation
from hwdnal.stages.context import Progress, StageContext, save_on_cpu
from hwdnal.stages.plain import train_plain


def run_finetune(ctx: StageContext, progress: Progress, pruned: nn.Module,
                 dense: nn.Module) -> nn.Module:
    config = ctx.config
    if "finetune" in progress.finished:
        return ctx.load_network(ctx.run_dir.path / "pruned.pt")
    started = time.perf_counter()
    pruned = ctx.recalibrated(pruned)
    if config.epochs_finetune > 0:
        teacher = None
        if config.distill > 0:  # a copy: the dense network itself is measured later
            teacher = Distillation(copy.deepcopy(dense).to(ctx.device), config.distill,
                                   config.distill_temperature)
        pruned = train_plain(ctx, pruned, "finetune", config.epochs_finetune,
                             config.finetune_lr, teacher)
    pruned.eval()
    ctx.on_main(lambda: save_on_cpu(ctx.run_dir.path / "pruned.pt", pruned))
    ctx.finish_stage(progress, "finetune", config.epochs_finetune, started)
    return pruned
