"""Stage 2, architecture: the weights frozen, only the gates' parameters s learn while δ
grows from 1 to 1e4, with loss = cross-entropy + λa·sparsity + the extra terms (the
latency term of a budgeted search). BatchNorm keeps the dense network's running statistics
(``--arch-batchnorm running``), so the loss sees how wide a group is."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from hwdnal.config import SearchConfig
from hwdnal.data import steps_per_epoch
from hwdnal.gate_optimizer import SharedMomentAdam
from hwdnal.gating.gate import DeltaSchedule, GateMode
from hwdnal.gating.model import GatedModel
from hwdnal.loss_terms import SparsityTerm
from hwdnal.stages.context import Progress, StageContext, resume_position
from hwdnal.train import LossTerm, StepValues, train_epoch


def gated_copy(ctx: StageContext, dense: nn.Module) -> GatedModel:
    """Gates on a copy: pruning works in place, and the dense network must survive it
    (the final measurement compares against it)."""
    gated = GatedModel(copy.deepcopy(dense), ctx.example(2)).to(ctx.device)
    for term in ctx.extra_terms:
        term.gated = gated
    return gated


def run_architecture(ctx: StageContext, progress: Progress, dense: nn.Module) -> GatedModel:
    config = ctx.config
    gated = gated_copy(ctx, dense)
    if "architecture" in progress.finished:
        checkpoint = ctx.load_checkpoint("architecture")
        assert checkpoint is not None
        gated.gate.load_state_dict(checkpoint["gate"])
        gated.model.load_state_dict(checkpoint["model"])  # the stage's BatchNorm statistics
        gated.set_delta(checkpoint["delta"])
        return gated
    started = time.perf_counter()
    for parameter in gated.model.parameters():
        parameter.requires_grad_(False)
    if config.arch_batchnorm == "batch":
        batchnorm_follows_batches(gated.model)
    else:
        gated.model.eval()  # the dense network's statistics: scaling a group is seen
    with torch.no_grad():
        gated.gate.s.fill_(config.gate_init)
    gated.gate.floor = config.gate_floor
    gated.set_mode(GateMode.SOFT)
    steps = steps_per_epoch(ctx.data, config.batch_size)
    epochs = config.epochs_arch
    schedule = DeltaSchedule(max(epochs * steps, 1))
    optimizer = arch_optimizer(gated, config, max(epochs * steps, 1))
    terms: list[LossTerm] = [SparsityTerm(gated, config.lambda_a), *ctx.extra_terms]
    checkpoint = ctx.load_checkpoint("architecture")
    if checkpoint is not None:
        gated.gate.load_state_dict(checkpoint["gate"])
        gated.model.load_state_dict(checkpoint["model"])  # BatchNorm statistics
        optimizer.load_state_dict(checkpoint["optimizer"])
        for term, weight in zip(ctx.extra_terms, checkpoint.get("term_weights", []),
                                strict=False):
            term.weight = weight.to(ctx.device) if isinstance(weight, torch.Tensor) \
                else weight
        for term, state in zip(ctx.extra_terms, checkpoint.get("term_states", []),
                               strict=False):
            if term.load_state is not None and state:
                term.load_state(state)
    first_epoch, first_step = resume_position(checkpoint, steps)
    ctx.observer.stage_started("architecture", epochs, steps, first_epoch, first_step)
    gated.set_delta(schedule(first_epoch * steps + first_step))
    curve_every = max(1, (epochs * steps) // 200)
    budget_ms = ctx.latency.budget_ms if ctx.latency else None
    trained = ctx.wrap(gated)

    def checkpoint_now(epoch: int, step: int) -> None:
        ctx.on_main(lambda: ctx.run_dir.save_checkpoint("architecture", {
            "gate": gated.gate.state_dict(), "model": gated.model.state_dict(),
            "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
            "delta": gated.gate.delta,
            "term_weights": [_on_cpu(term.weight) for term in ctx.extra_terms],
            "term_states": [term.state() if term.state is not None else {}
                            for term in ctx.extra_terms],
        }))
        ctx.save_progress(progress)

    for epoch in range(first_epoch, epochs):

        def shown(step: int, values: dict[str, float]) -> dict[str, float]:
            kept = int(gated.gate.binary().sum())
            shown = {**values, "delta": gated.gate.delta, "kept": kept}
            if budget_ms is not None and "latency" in values:
                shown["latency_ms"] = values["latency"] * budget_ms
            return shown

        progress_bar = ctx.shown("architecture", steps, shown)

        def on_step(step: int, values: StepValues, epoch: int = epoch,
                    progress_bar: Callable[[int, StepValues], None] = progress_bar) -> None:
            for term in ctx.extra_terms:
                if term.after_step is not None:
                    term.after_step(term, values.terms[term.name])
            gated.set_delta(schedule(epoch * steps + step + 1))
            global_step = epoch * steps + step
            if global_step % curve_every == 0 or global_step == epochs * steps - 1:
                read = values.read()  # a few hundred reads in the whole stage
                point = {"step": global_step, "delta": gated.gate.delta,
                         "loss": read["loss"], "kept": int(gated.gate.binary().sum())}
                if budget_ms is not None and "latency" in read:
                    point["predicted_latency_ms"] = read["latency"] * budget_ms
                    point["latency_weight"] = float(ctx.extra_terms[0].weight)
                progress.arch_curve.append(point)
            progress_bar(step, values)

        stats = train_epoch(
            trained, ctx.data, optimizer, config.batch_size,
            seed=config.seed * 1000 + 500 + epoch,
            extra_terms=terms, on_step=on_step, augment=False, settings=ctx.settings(),
            start_step=first_step if epoch == first_epoch else 0,
            should_stop=ctx.stopping_together,
        )
        ctx.cluster.sync_module(gated)  # rank 0's BatchNorm statistics everywhere
        if not stats.completed:
            checkpoint_now(epoch, stats.steps_done)
            ctx.stop_if_requested(False, "architecture", epoch, stats.steps_done)
        kept = int(gated.keep_mask().sum())
        summary = {"epoch": epoch, "delta": gated.gate.delta, "loss": stats.loss,
                   "acc": stats.accuracy, "kept": kept, **stats.terms}
        progress.arch_history.append(summary)
        checkpoint_now(epoch, steps)
        ctx.observer.epoch_finished("architecture", epoch, summary)
    gated.set_delta(schedule.end)
    settled = [term.at_end(gated) for term in ctx.extra_terms if term.at_end is not None]
    for line in filter(None, settled):
        ctx.observer.message(line)
    if any(settled) and epochs > 0:
        checkpoint_now(epochs - 1, steps)  # a resumed search must find the settled gates
    ctx.finish_stage(progress, "architecture", epochs, started)
    return gated


def arch_lr(config: SearchConfig, total_steps: int) -> float:
    """The gate parameters' learning rate (see ``SearchConfig.arch_lr``)."""
    if config.arch_lr is not None:
        return config.arch_lr
    if config.arch_optimizer in ("adam", "shared-adam"):
        return 3.0 * max(config.gate_init, 1.0) / max(total_steps, 1)
    return 0.2


def arch_optimizer(gated: GatedModel, config: SearchConfig,
                    total_steps: int) -> torch.optim.Optimizer:
    if config.arch_optimizer == "adam":
        return torch.optim.Adam(gated.gate.parameters(), lr=arch_lr(config, total_steps),
                                betas=(config.arch_momentum, 0.999))
    if config.arch_optimizer == "shared-adam":
        return SharedMomentAdam(gated.gate.parameters(), lr=arch_lr(config, total_steps),
                                beta1=config.arch_momentum)
    return torch.optim.SGD(gated.gate.parameters(), lr=arch_lr(config, total_steps),
                           momentum=0.9)


def batchnorm_follows_batches(model: nn.Module) -> None:
    """Frozen BatchNorm affine parameters, but batch statistics (running ones updated).

    With s = 0 every gate starts at sigmoid(0) = 0.5; BatchNorm on running statistics would
    see every layer's input halved and the network collapse to chance, leaving the gates no
    signal. Batch statistics normalise a layer-wide scale away, so the gates learn which
    channels matter, and the running statistics end as those of the binarised network.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.train()


def _on_cpu(value: float | torch.Tensor) -> float | torch.Tensor:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value
