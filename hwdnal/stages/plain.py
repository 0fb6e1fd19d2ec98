"""Training a plain network (the weight stage's dense one, the finetune's pruned one):
SGD with momentum, cosine lr and weight decay, resumable at any step."""

from __future__ import annotations

import dataclasses

from torch import nn

from hwdnal.data import steps_per_epoch
from hwdnal.distillation import Distillation
from hwdnal.distributed import revert_sync_batchnorm, to_sync_batchnorm
from hwdnal.stages.context import StageContext, resume_position
from hwdnal.train import make_optimizer, train_epoch


def train_plain(ctx: StageContext, model: nn.Module, stage: str, epochs: int, lr: float,
                teacher: Distillation | None = None) -> nn.Module:
    """Train ``model`` for stage ``stage``, checkpointed every epoch (and at a stop).
    Returns the trained module (the same one, unless SyncBatchNorm was swapped in and out)."""
    config = ctx.config
    steps = steps_per_epoch(ctx.data, config.batch_size)
    if config.sync_batchnorm:
        model = to_sync_batchnorm(model)
    optimizer, scheduler = make_optimizer(model.parameters(), lr, config.weight_decay,
                                          epochs * steps)
    checkpoint = ctx.load_checkpoint(stage)
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
    first_epoch, first_step = resume_position(checkpoint, steps)
    ctx.observer.stage_started(stage, epochs, steps, first_epoch, first_step)
    model.train()
    trained = ctx.wrap(model, compile_graph=True)
    for epoch in range(first_epoch, epochs):
        stats = train_epoch(
            trained, ctx.data, optimizer, config.batch_size,
            seed=config.seed * 1000 + epoch, scheduler=scheduler,
            on_step=ctx.shown(stage, steps),
            settings=dataclasses.replace(ctx.settings(), distillation=teacher),
            start_step=first_step if epoch == first_epoch else 0,
            should_stop=ctx.stopping_together,
        )
        ctx.cluster.sync_module(model)  # rank 0's BatchNorm statistics everywhere
        ctx.on_main(lambda epoch=epoch, stats=stats: ctx.run_dir.save_checkpoint(stage, {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "epoch": epoch, "step": stats.steps_done,
        }))
        ctx.stop_if_requested(stats.completed, stage, epoch, stats.steps_done)
        ctx.observer.epoch_finished(stage, epoch, {"loss": stats.loss, "acc": stats.accuracy})
    return revert_sync_batchnorm(model) if config.sync_batchnorm else model
