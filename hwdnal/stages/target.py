"""Before the stages: the target's LUT (loaded, checked against the device, or profiled),
the dense network's measured latency and the budget in ms; with a budget, the latency term
the architecture stage adds to its loss."""

from __future__ import annotations

import dataclasses

from hwdnal.budget import Budget
from hwdnal.budget.target import TargetLatency, prepare_target_latency
from hwdnal.budget.term import LatencyConstraint
from hwdnal.data import steps_per_epoch
from hwdnal.stages.context import Progress, StageContext
from hwdnal.targets import Target


def prepare_latency(ctx: StageContext, progress: Progress, target: Target,
                    budget: Budget | None) -> TargetLatency:
    """Rank 0 prepares (or, on resume, restores) the target's latency facts; the other
    ranks get the latency model for the latency term, never the device."""
    config = ctx.config

    def on_main() -> TargetLatency:
        return prepare_target_latency(
            target, ctx.measurer, ctx.new_model(), config.model,
            ctx.example(1).cpu(), budget, config.lut, config.force_lut,
            config.channel_step, known=progress.latency, report=ctx.profiling,
            measure=config.compile, lut_tolerance=config.lut_tolerance,
            note=ctx.observer.message,
        )

    shared = ctx.cluster.run_on_main(
        lambda: dataclasses.replace(on_main(), measurer=None) if ctx.cluster.active
        else on_main())
    latency = dataclasses.replace(shared, measurer=ctx.measurer)
    if progress.latency is None:
        progress.latency = latency.facts()
        ctx.save_progress(progress)
    if latency.budget_ms is not None:
        assert latency.latency_model is not None
        ctx.observer.message(
            f"budget {latency.budget_ms:.3f} ms on '{target.name}' (dense network "
            f"{latency.dense_ms:.3f} ms, smallest reachable {latency.smallest_ms:.3f} ms)"
        )
        steps = max(config.epochs_arch * steps_per_epoch(ctx.data, config.batch_size), 1)
        rate = config.latency_rate if config.latency_rate is not None else 10.0 / steps
        constraint = LatencyConstraint(latency.latency_model, latency.budget_ms, rate=rate,
                                       control=config.latency_control,
                                       switch_on=config.latency_switch_on,
                                       settle=config.arch_ends_on == "best",
                                       secant_gradient=config.latency_gradient == "secant")
        ctx.extra_terms.append(constraint.term())
    return latency
