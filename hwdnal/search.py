"""The DNAL search: its stages in order, each in its own module of :mod:`hwdnal.stages`,
each checkpointed.

    target        the LUT, the dense latency and the budget (stages/target.py)
    weights       gates off; SGD + momentum, cosine LR, weight decay (stages/weights.py)
    architecture  weights frozen, BatchNorm on the dense network's statistics; only the gate
                  parameters s learn (every gate open at the start), δ grows 1 → 1e4;
                  loss = CE + λa·sparsity + extras (stages/architecture.py)
    prune         the mask fitted to the budget on the device, every channel whose gate is
                  0 removed physically (stages/prune.py)
    finetune      the smaller plain network trains again (stages/finetune.py)
    compile       compiled for the target, checked, measured, judged (stages/compile.py)

A re-run of the same command resumes from the last finished stage or epoch. Extra loss
terms (the latency term of a budgeted search) are registered with :meth:`add_loss_term`;
the engine knows nothing of how they are computed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hwdnal.budget import parse_budget
from hwdnal.complexity import params_and_macs
from hwdnal.config import SearchConfig
from hwdnal.data import load_data
from hwdnal.devices import Measurer, open_measurer
from hwdnal.distributed import Cluster
from hwdnal.errors import UserError
from hwdnal.interrupt import GracefulStop
from hwdnal.loss_terms import GateLossTerm
from hwdnal.observer import SearchObserver
from hwdnal.run import RunDir
from hwdnal.stages.architecture import run_architecture
from hwdnal.stages.context import Progress, StageContext
from hwdnal.stages.finetune import run_finetune
from hwdnal.stages.prune import run_prune
from hwdnal.stages.result import write_result
from hwdnal.stages.target import prepare_latency
from hwdnal.stages.weights import load_weights, run_weights
from hwdnal.targets import load_target
from hwdnal.train import amp_dtype, evaluate

#: the checkpointed stages, in order (state.json's "finished" lists those done)
STAGES = ("weights", "architecture", "prune", "finetune", "compile")


class DnalSearch:
    """One search into one run directory. ``measurer``: the device to measure on (by
    default the target's, opened and closed here; a given one stays open)."""

    def __init__(
        self,
        config: SearchConfig,
        out: str | Path,
        observer: SearchObserver | None = None,
        stop: GracefulStop | None = None,
        cluster: Cluster | None = None,
        measurer: Measurer | None = None,
    ) -> None:
        self.config = config
        cluster = cluster or Cluster()  # a cluster of one without torchrun
        self.ctx = StageContext(
            config=config, run_dir=RunDir(out), cluster=cluster,
            # only rank 0 reports: the others would print the same lines N times
            observer=(observer or SearchObserver()) if cluster.is_main else SearchObserver(),
            device=cluster.device(config.device), stop=stop,
        )
        self._given_measurer = measurer
        self.resumed = False

    def add_loss_term(self, term: GateLossTerm) -> None:
        """Add a term to the architecture stage's loss (before :meth:`run`)."""
        self.ctx.extra_terms.append(term)

    def run(self) -> dict[str, Any]:
        """All stages, resuming where an earlier run of the same configuration stopped."""
        ctx = self.ctx
        try:
            self._check_inputs()
            error = None
        except UserError as raised:
            error = raised
        ctx.cluster.raise_if_any(error)  # a rank with bad input stops them all
        self.resumed = ctx.cluster.run_on_main(
            lambda: ctx.run_dir.open(self.config.to_json(), SearchConfig().to_json()))
        try:
            return self._run()
        finally:
            ctx.run_dir.unlock()
            if ctx.measurer is not None and ctx.measurer is not self._given_measurer:
                ctx.measurer.close()

    def _check_inputs(self) -> None:
        """Bad input fails here, before the run directory is touched."""
        config, ctx = self.config, self.ctx
        ctx.cluster.check_batch_size(config.batch_size)
        ctx.amp = amp_dtype(config.amp, ctx.device)
        if config.sync_batchnorm and not (ctx.cluster.active and ctx.device.startswith("cuda")):
            raise UserError("--sync-batchnorm needs torchrun with --device cuda (SyncBatchNorm "
                            "runs on GPUs only); leave it out")
        ctx.data = load_data(
            config.data, config.data_dir, config.input_size, config.train_subset,
            config.test_subset, config.seed, skip_bad_images=config.skip_bad_images,
        )
        self._target = load_target(config.target).with_remote(config.remote)
        self._budget = parse_budget(config.budget) if config.budget else None
        model = ctx.new_model()
        if config.weights:  # a file that cannot be loaded fails here, like any bad input
            load_weights(model, config.weights, config.trust_weights_pickle)
        if ctx.device.startswith("cuda"):
            ctx.data.to_device(ctx.device)
        if (config.compile or config.budget or config.lut) and ctx.cluster.is_main:
            # rank 0 alone measures on the target
            ctx.measurer = self._given_measurer or open_measurer(self._target)

    def _run(self) -> dict[str, Any]:
        ctx = self.ctx
        progress = Progress.from_state(ctx.cluster.run_on_main(ctx.run_dir.state))
        torch.manual_seed(self.config.seed)
        if self.resumed and progress.finished:
            done = ", ".join(progress.finished)
            ctx.observer.message(f"resuming {ctx.run_dir.path}: finished {done}")

        ctx.latency = prepare_latency(ctx, progress, self._target, self._budget)
        dense = run_weights(ctx, progress)
        dense_size = params_and_macs(dense, ctx.example())
        gated = run_architecture(ctx, progress, dense)
        pruned = run_prune(ctx, progress, gated)
        pruned = run_finetune(ctx, progress, pruned, dense)

        pruned_params, pruned_macs = params_and_macs(pruned, ctx.example())
        pruned_accuracy = evaluate(pruned, ctx.data, cluster=ctx.cluster)
        return ctx.cluster.run_on_main(lambda: write_result(
            ctx, progress, dense, pruned, dense_size,
            (pruned_params, pruned_macs, pruned_accuracy)))


__all__ = ["STAGES", "DnalSearch", "GateLossTerm", "SearchConfig", "SearchObserver"]
