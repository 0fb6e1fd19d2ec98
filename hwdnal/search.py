"""The DNAL search engine: four stages, each visible here, each checkpointed.

    weights       gates off; SGD + momentum, cosine LR, weight decay
    architecture  weights and BatchNorm affine parameters frozen (BatchNorm normalises with
                  batch statistics); only the gate parameters s learn (s = 0 at start),
                  δ grows exponentially 1 → 1e4; loss = CE + λa·sparsity + extras
    prune         every channel whose gate is 0 is removed physically
    finetune      the smaller plain network trains again

A re-run of the same command resumes from the last finished stage or epoch. Extra loss
terms (the latency term of a budgeted search) are registered with :meth:`add_loss_term`;
the engine knows nothing of how they are computed.
"""

from __future__ import annotations

import copy
import dataclasses
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdnal import __version__
from hwdnal.atomic import save_torch
from hwdnal.budget import Budget, parse_budget
from hwdnal.budget.fit import predicted_ms
from hwdnal.budget.measure import final_latency, fit_to_budget
from hwdnal.budget.target import TargetLatency, prepare_target_latency
from hwdnal.budget.term import LatencyConstraint
from hwdnal.complexity import params_and_macs
from hwdnal.config import SearchConfig
from hwdnal.data import DataSpec, load_data, steps_per_epoch
from hwdnal.devices import Measurer, open_measurer
from hwdnal.distillation import Distillation
from hwdnal.distributed import Cluster, revert_sync_batchnorm, to_sync_batchnorm
from hwdnal.errors import UserError, first_line
from hwdnal.gate_optimizer import SharedMomentAdam
from hwdnal.gating.alignment import align_keep_mask
from hwdnal.gating.blocks import removable_branches
from hwdnal.gating.gate import DeltaSchedule, GateMode
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import prune_physically
from hwdnal.interrupt import GracefulStop, Interrupted
from hwdnal.latency.cache import MeasurementCache
from hwdnal.loss_terms import GateLossTerm, SparsityTerm
from hwdnal.models import create_model
from hwdnal.models.proxyless_supernet import describe_blocks
from hwdnal.observer import SearchObserver
from hwdnal.results import LATENCY_ERROR_FLAG
from hwdnal.run import RunDir
from hwdnal.targets import Target, load_target
from hwdnal.train import (
    LossTerm,
    StepValues,
    TrainSettings,
    amp_dtype,
    evaluate,
    make_optimizer,
    recalibrate_batchnorm,
    train_epoch,
)

STAGES = ("weights", "architecture", "prune", "finetune")



@dataclass
class _Progress:
    finished: list[str] = field(default_factory=list)
    stages: list[dict[str, Any]] = field(default_factory=list)
    dense_accuracy: float | None = None
    arch_history: list[dict[str, float]] = field(default_factory=list)
    arch_curve: list[dict[str, float]] = field(default_factory=list)
    latency: dict[str, Any] | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    fit_rounds: list[dict[str, float]] = field(default_factory=list)
    #: the architecture stage's own mask (channels, LUT latency against the budget), how
    #: many channels the fit changed, and the pruned network's accuracy before finetuning
    arch_mask: dict[str, Any] = field(default_factory=dict)
    #: each rank's hash of the keep mask after the architecture stage (they must agree)
    mask_digests: list[str] = field(default_factory=list)


class DnalSearch:
    def __init__(
        self,
        config: SearchConfig,
        out: str | Path,
        observer: SearchObserver | None = None,
        stop: GracefulStop | None = None,
        cluster: Cluster | None = None,
    ) -> None:
        self.config = config
        self.run_dir = RunDir(out)
        self.stop = stop
        #: the torchrun job this process belongs to (a cluster of one without torchrun)
        self.cluster = cluster or Cluster()
        #: only rank 0 reports: the others would print the same lines N times
        self.observer = (observer or SearchObserver()) if self.cluster.is_main \
            else SearchObserver()
        #: where this process trains (its own GPU under torchrun)
        self.device = self.cluster.device(config.device)
        self.extra_terms: list[GateLossTerm] = []
        self.data: DataSpec | None = None
        self.resumed = False
        self.latency: TargetLatency | None = None
        self._target: Target | None = None
        self._measurer: Measurer | None = None
        self._budget: Budget | None = None

    def _stopping(self) -> bool:
        return self.stop is not None and self.stop.requested

    def _stopping_together(self) -> bool:
        """A stop in the training loops: every rank stops after the same step."""
        return self.cluster.stop_agreed(self._stopping)

    def _signal_number(self) -> int:
        """The signal that stopped us (a rank that got none follows the others: SIGTERM)."""
        number = self.stop.signal_number if self.stop is not None else None
        return number if number is not None else signal.SIGTERM

    def _stop_if_requested(self, completed: bool, stage: str, epoch: int, step: int) -> None:
        """After a checkpoint: leave with :class:`Interrupted` if a stop was asked for."""
        if not completed or (not self.cluster.active and self._stopping()):
            raise Interrupted(f"{stage} (epoch {epoch + 1}, step {step})", self._signal_number())

    def _profiling(self, done: int, total: int, what: str) -> None:
        """Profiling progress; a requested stop leaves after the batch (it is cached)."""
        self.observer.profiling(done, total, what)
        if self._stopping():
            assert self.stop is not None and self.stop.signal_number is not None
            raise Interrupted(f"profiling ({what}, {done}/{total})", self.stop.signal_number)

    def add_loss_term(self, term: GateLossTerm) -> None:
        """Add a term to the architecture stage's loss (before :meth:`run`)."""
        self.extra_terms.append(term)

    # -- the whole search ----------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """All stages, resuming where an earlier run of the same configuration stopped."""
        try:
            self._check_inputs()
            error = None
        except UserError as raised:
            error = raised
        self.cluster.raise_if_any(error)  # a rank with bad input stops them all
        self.resumed = self.cluster.run_on_main(
            lambda: self.run_dir.open(self.config.to_json(), SearchConfig().to_json()))
        try:
            return self._run()
        finally:
            self.run_dir.unlock()
            if self._measurer is not None:
                self._measurer.close()

    def _check_inputs(self) -> None:
        """Bad input fails here, before the run directory is touched."""
        config = self.config
        self.cluster.check_batch_size(config.batch_size)
        self._amp = amp_dtype(config.amp, self.device)
        if config.sync_batchnorm and not (self.cluster.active and self.device.startswith("cuda")):
            raise UserError("--sync-batchnorm needs torchrun with --device cuda (SyncBatchNorm "
                            "runs on GPUs only); leave it out")
        self.data = load_data(
            config.data, config.data_dir, config.input_size, config.train_subset,
            config.test_subset, config.seed, skip_bad_images=config.skip_bad_images,
        )
        self._target = load_target(config.target).with_remote(config.remote)
        self._budget = parse_budget(config.budget) if config.budget else None
        model = self._new_model()
        if config.weights:  # a file that cannot be loaded fails here, like any bad input
            _load_weights(model, config.weights, config.trust_weights_pickle)
        if self.device.startswith("cuda"):
            self.data.to_device(self.device)
        if (config.compile or config.budget or config.lut) and self.cluster.is_main:
            self._measurer = open_measurer(self._target)  # rank 0 alone measures on the target

    def _settings(self) -> TrainSettings:
        return TrainSettings(channels_last=self.config.channels_last, amp=self._amp,
                             shard=self.cluster.shard())

    def _load_checkpoint(self, name: str) -> dict[str, Any] | None:
        """Rank 0 reads the run directory; every rank gets the same checkpoint."""
        return self.cluster.run_on_main(lambda: self.run_dir.load_checkpoint(name))

    def _load_module(self, path: Path) -> nn.Module:
        module = self.cluster.run_on_main(lambda: _load_module(path))
        return module.to(self.device)

    def _on_main(self, work: Callable[[], Any]) -> None:
        """Writing the run directory and reporting: rank 0's job."""
        if self.cluster.is_main:
            work()

    def _wrap(self, model: nn.Module, compile_graph: bool = False) -> nn.Module:
        """The module a training loop calls: averaged across ranks, compiled on request (the
        plain networks only: the gated one's δ changes every step, a new graph each time)."""
        if self.cluster.active and self.config.channels_last:
            # DDP's gradient buckets take each parameter's strides: a 1x1 kernel must be in
            # the layout its gradient arrives in
            model.to(memory_format=torch.channels_last)
        wrapped = self.cluster.data_parallel(model)
        if compile_graph and self.config.torch_compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def _run(self) -> dict[str, Any]:
        config = self.config
        state = self.cluster.run_on_main(self.run_dir.state)
        progress = _Progress(**{k: state[k] for k in _Progress.__dataclass_fields__ if k in state})
        torch.manual_seed(config.seed)
        if self.resumed and progress.finished:
            done = ", ".join(progress.finished)
            self.observer.message(f"resuming {self.run_dir.path}: finished {done}")

        self.latency = self._prepare_latency(progress)
        dense = self._stage_weights(progress)
        dense_params, dense_macs = params_and_macs(dense, self._example())
        gated = self._stage_architecture(progress, dense)
        pruned = self._stage_prune(progress, gated)
        pruned = self._stage_finetune(progress, pruned, dense)

        pruned_params, pruned_macs = params_and_macs(pruned, self._example())
        pruned_accuracy = evaluate(pruned, self.data, cluster=self.cluster)
        return self.cluster.run_on_main(lambda: self._result(
            progress, dense, pruned, (dense_params, dense_macs),
            (pruned_params, pruned_macs, pruned_accuracy)))

    def _result(self, progress: _Progress, dense: nn.Module, pruned: nn.Module,
                dense_size: tuple[int, int], pruned_facts: tuple[int, int, float],
                ) -> dict[str, Any]:
        """Rank 0: compile and measure on the target, write result.json."""
        config = self.config
        assert self.latency is not None
        dense_params, dense_macs = dense_size
        pruned_params, pruned_macs, pruned_accuracy = pruned_facts
        result: dict[str, Any] = {
            "hwdnal": __version__,
            "model": config.model,
            "data": config.data,
            "input_shape": list(self._example().shape),
            "dense": {"accuracy": progress.dense_accuracy, "params": dense_params,
                      "macs": dense_macs},
            "pruned": {"accuracy": pruned_accuracy, "params": pruned_params, "macs": pruned_macs},
            "budget": config.budget,
            "budget_ms": self.latency.budget_ms,
            "target": {"name": self.latency.target.name,
                       "fingerprint": self.latency.fingerprint()},
            "groups": progress.groups,
            "layers": progress.layers,
            "stages": progress.stages,
            "arch_history": progress.arch_history,
            "arch_curve": progress.arch_curve,
            "fit_rounds": progress.fit_rounds,
            "arch_mask": progress.arch_mask,
            "distributed": {**self.cluster.describe(),
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
        if self.latency.lut_path:
            result["lut"] = self.latency.lut_path
        lut_check = (progress.latency or {}).get("lut_check")
        if lut_check:
            result["lut_check"] = lut_check
        if config.compile:
            try:
                self._stage_compile(progress, dense, pruned, result)
            except UserError:  # e.g. a deployed file refused: the search's results are kept,
                self.run_dir.write_result(result)  # and `hwdnal compile RUN` can try again
                raise
        self.run_dir.write_result(result)
        return result

    # -- the target: LUT, dense latency, budget ------------------------------------------
    def _prepare_latency(self, progress: _Progress) -> TargetLatency:
        config = self.config
        target = self._target
        assert target is not None

        def on_main() -> TargetLatency:
            return prepare_target_latency(
                target, self._measurer, self._new_model(), config.model,
                self._example(1).cpu(), self._budget, config.lut, config.force_lut,
                config.channel_step, known=progress.latency, report=self._profiling,
                measure=config.compile, lut_tolerance=config.lut_tolerance,
                note=self.observer.message,
            )

        # the others need the latency model for the latency term, never the device
        shared = self.cluster.run_on_main(
            lambda: dataclasses.replace(on_main(), measurer=None) if self.cluster.active
            else on_main())
        latency = dataclasses.replace(shared, measurer=self._measurer)
        if progress.latency is None:
            progress.latency = latency.facts()
            self._save_progress(progress)
        if latency.budget_ms is not None:
            assert latency.latency_model is not None
            self.observer.message(
                f"budget {latency.budget_ms:.3f} ms on '{target.name}' (dense network "
                f"{latency.dense_ms:.3f} ms, smallest reachable {latency.smallest_ms:.3f} ms)"
            )
            steps = max(config.epochs_arch * steps_per_epoch(self.data, config.batch_size), 1)
            rate = config.latency_rate if config.latency_rate is not None else 10.0 / steps
            constraint = LatencyConstraint(latency.latency_model, latency.budget_ms, rate=rate,
                                           control=config.latency_control,
                                           switch_on=config.latency_switch_on,
                                           secant_gradient=config.latency_gradient == "secant")
            self.add_loss_term(constraint.term())
        return latency

    def _example(self, batch: int = 1) -> torch.Tensor:
        assert self.data is not None
        return self.data.example_input(batch).to(self.device)

    def _save_progress(self, progress: _Progress) -> None:
        self._on_main(lambda: self.run_dir.save_state(asdict(progress)))

    def _finish_stage(self, progress: _Progress, name: str, epochs: int, seconds: float) -> None:
        if name not in progress.finished:
            progress.finished.append(name)
        progress.stages = [s for s in progress.stages if s["name"] != name]
        progress.stages.append({"name": name, "epochs": epochs, "seconds": round(seconds, 2),
                                "world_size": self.cluster.world_size})
        self._save_progress(progress)
        self.observer.stage_finished(name, seconds)

    def _new_model(self) -> nn.Module:
        assert self.data is not None
        torch.manual_seed(self.config.seed)
        model = create_model(self.config.model, self.data.num_classes, self.data.in_channels,
                             self.config.candidates)
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model.to(self.device)

    # -- stage 1: weights ----------------------------------------------------------------
    def _stage_weights(self, progress: _Progress) -> nn.Module:
        config = self.config
        dense_path = self.run_dir.path / "dense.pt"
        if "weights" in progress.finished:
            return self._load_module(dense_path)
        started = time.perf_counter()
        model = self._new_model()
        if config.weights:
            _load_weights(model, config.weights, config.trust_weights_pickle)
            epochs = 0
        else:
            epochs = config.epochs_weights
        if epochs > 0:
            model = self._train_plain(model, "weights", epochs, config.lr, progress)
        progress.dense_accuracy = evaluate(model, self.data, cluster=self.cluster)
        self._on_main(lambda: _save_on_cpu(dense_path, model))
        self.observer.message(f"dense accuracy {progress.dense_accuracy:.4f}")
        self._finish_stage(progress, "weights", epochs, time.perf_counter() - started)
        return model

    def _train_plain(
        self, model: nn.Module, stage: str, epochs: int, lr: float, progress: _Progress,
        teacher: Distillation | None = None,
    ) -> nn.Module:
        """SGD with momentum, cosine LR and weight decay; resumable per epoch. Returns the
        trained module (the same one, unless SyncBatchNorm was swapped in and out)."""
        config = self.config
        steps = steps_per_epoch(self.data, config.batch_size)
        if config.sync_batchnorm:
            model = to_sync_batchnorm(model)
        optimizer, scheduler = make_optimizer(model.parameters(), lr, config.weight_decay,
                                              epochs * steps)
        checkpoint = self._load_checkpoint(stage)
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
        first_epoch, first_step = _resume_position(checkpoint, steps)
        self.observer.stage_started(stage, epochs, steps, first_epoch, first_step)
        model.train()
        trained = self._wrap(model, compile_graph=True)
        for epoch in range(first_epoch, epochs):
            stats = train_epoch(
                trained, self.data, optimizer, config.batch_size,
                seed=config.seed * 1000 + epoch, scheduler=scheduler,
                on_step=self._shown(stage, steps),
                settings=dataclasses.replace(self._settings(), distillation=teacher),
                start_step=first_step if epoch == first_epoch else 0,
                should_stop=self._stopping_together,
            )
            self.cluster.sync_module(model)  # rank 0's BatchNorm statistics everywhere
            self._on_main(lambda epoch=epoch, stats=stats: self.run_dir.save_checkpoint(stage, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "epoch": epoch, "step": stats.steps_done,
            }))
            self._stop_if_requested(stats.completed, stage, epoch, stats.steps_done)
            self.observer.epoch_finished(stage, epoch, {"loss": stats.loss, "acc": stats.accuracy})
        return revert_sync_batchnorm(model) if config.sync_batchnorm else model

    def _shown(self, stage: str, steps: int,
               extra: Callable[[int, dict[str, float]], dict[str, float]] | None = None,
               ) -> Callable[[int, StepValues], None]:
        """The progress callback of a loop: reads the step's values (a wait for the
        device) only when the bar is redrawn, a few times a second, and at the epoch's end."""
        clock = _RefreshClock()

        def on_step(step: int, values: StepValues) -> None:
            if clock.due() or step == steps - 1:
                shown = values.read()
                if extra is not None:
                    shown = extra(step, shown)
                self.observer.step(stage, step + 1, shown)

        return on_step

    # -- stage 2: architecture -----------------------------------------------------------
    def _gated(self, dense: nn.Module) -> GatedModel:
        """Gates on a copy: pruning works in place, and the dense network must survive it
        (the final measurement compares against it)."""
        gated = GatedModel(copy.deepcopy(dense), self._example(2)).to(self.device)
        for term in self.extra_terms:
            term.gated = gated
        return gated

    def _stage_architecture(self, progress: _Progress, dense: nn.Module) -> GatedModel:
        config = self.config
        gated = self._gated(dense)
        if "architecture" in progress.finished:
            checkpoint = self._load_checkpoint("architecture")
            assert checkpoint is not None
            gated.gate.load_state_dict(checkpoint["gate"])
            gated.model.load_state_dict(checkpoint["model"])  # the stage's BatchNorm statistics
            gated.set_delta(checkpoint["delta"])
            return gated
        started = time.perf_counter()
        for parameter in gated.model.parameters():
            parameter.requires_grad_(False)
        if config.arch_batchnorm == "batch":
            _batchnorm_follows_batches(gated.model)
        else:
            gated.model.eval()  # the dense network's statistics: scaling a group is seen
        with torch.no_grad():
            gated.gate.s.fill_(config.gate_init)
        gated.gate.floor = config.gate_floor
        gated.set_mode(GateMode.SOFT)
        steps = steps_per_epoch(self.data, config.batch_size)
        epochs = config.epochs_arch
        schedule = DeltaSchedule(max(epochs * steps, 1))
        optimizer = _arch_optimizer(gated, config, max(epochs * steps, 1))
        terms: list[LossTerm] = [SparsityTerm(gated, config.lambda_a), *self.extra_terms]
        checkpoint = self._load_checkpoint("architecture")
        if checkpoint is not None:
            gated.gate.load_state_dict(checkpoint["gate"])
            gated.model.load_state_dict(checkpoint["model"])  # BatchNorm statistics
            optimizer.load_state_dict(checkpoint["optimizer"])
            for term, weight in zip(self.extra_terms, checkpoint.get("term_weights", []),
                                    strict=False):
                term.weight = weight.to(self.device) if isinstance(weight, torch.Tensor) \
                    else weight
        first_epoch, first_step = _resume_position(checkpoint, steps)
        self.observer.stage_started("architecture", epochs, steps, first_epoch, first_step)
        gated.set_delta(schedule(first_epoch * steps + first_step))
        curve_every = max(1, (epochs * steps) // 200)
        budget_ms = self.latency.budget_ms if self.latency else None
        trained = self._wrap(gated)

        def checkpoint_now(epoch: int, step: int) -> None:
            self._on_main(lambda: self.run_dir.save_checkpoint("architecture", {
                "gate": gated.gate.state_dict(), "model": gated.model.state_dict(),
                "optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                "delta": gated.gate.delta,
                "term_weights": [_cpu(term.weight) for term in self.extra_terms],
            }))
            self._save_progress(progress)

        for epoch in range(first_epoch, epochs):

            def shown(step: int, values: dict[str, float]) -> dict[str, float]:
                kept = int(gated.gate.binary().sum())
                shown = {**values, "delta": gated.gate.delta, "kept": kept}
                if budget_ms is not None and "latency" in values:
                    shown["latency_ms"] = values["latency"] * budget_ms
                return shown

            progress_bar = self._shown("architecture", steps, shown)

            def on_step(step: int, values: StepValues, epoch: int = epoch,
                        progress_bar: Callable[[int, StepValues], None] = progress_bar) -> None:
                for term in self.extra_terms:
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
                        point["latency_weight"] = float(self.extra_terms[0].weight)
                    progress.arch_curve.append(point)
                progress_bar(step, values)

            stats = train_epoch(
                trained, self.data, optimizer, config.batch_size,
                seed=config.seed * 1000 + 500 + epoch,
                extra_terms=terms, on_step=on_step, augment=False, settings=self._settings(),
                start_step=first_step if epoch == first_epoch else 0,
                should_stop=self._stopping_together,
            )
            self.cluster.sync_module(gated)  # rank 0's BatchNorm statistics everywhere
            if not stats.completed:
                checkpoint_now(epoch, stats.steps_done)
                self._stop_if_requested(False, "architecture", epoch, stats.steps_done)
            kept = int(gated.keep_mask().sum())
            summary = {"epoch": epoch, "delta": gated.gate.delta, "loss": stats.loss,
                       "acc": stats.accuracy, "kept": kept, **stats.terms}
            progress.arch_history.append(summary)
            checkpoint_now(epoch, steps)
            self.observer.epoch_finished("architecture", epoch, summary)
        gated.set_delta(schedule.end)
        self._finish_stage(progress, "architecture", epochs, time.perf_counter() - started)
        return gated

    # -- stage 3: prune ------------------------------------------------------------------
    def _stage_prune(self, progress: _Progress, gated: GatedModel) -> nn.Module:
        """Remove every channel whose gate is 0; with a budget, fit it on the device first."""
        if "prune" in progress.finished:
            checkpoint = self._load_checkpoint("pruned_init")
            assert checkpoint is not None
            return checkpoint["model"].to(self.device)
        started = time.perf_counter()
        self.observer.stage_started("prune", 1, 1, 0)
        latency = self.latency
        assert latency is not None
        keep = gated.keep_mask().cpu()
        # the ranks trained the same gates: their masks must agree before anything is cut
        progress.mask_digests = self.cluster.check_same("keep mask after the architecture stage",
                                                     keep)
        stage_keep = keep.clone()
        progress.arch_mask = {"kept": int(keep.sum()), "total": int(keep.numel())}
        if latency.latency_model is not None:
            predicted = predicted_ms(gated, latency.latency_model, keep)
            progress.arch_mask["predicted_ms"] = round(predicted, 5)
            if latency.budget_ms:
                progress.arch_mask["of_budget"] = round(predicted / latency.budget_ms, 4)
        if latency.budget_ms is not None:
            keep = self.cluster.run_on_main(lambda: self._fit(progress, gated, keep))
        elif latency.channel_step > 1:
            keep = align_keep_mask(gated, keep, latency.channel_step)
        progress.arch_mask["fit_changed"] = int((keep.cpu() != stage_keep.cpu()).sum())
        facts = progress.arch_mask
        if "of_budget" in facts:
            self.observer.message(
                f"the architecture stage kept {facts['kept']}/{facts['total']} channels, "
                f"{facts['predicted_ms']:.3f} ms by the LUT ({facts['of_budget']:.0%} of the "
                f"budget); the fit changed {facts['fit_changed']} channel(s)")
        gated.set_keep_mask(keep.to(gated.gate.s.device))
        progress.groups = gated.kept_per_group()
        progress.layers = self._layer_table(gated)
        pruned = prune_physically(gated)
        progress.arch_mask["accuracy_before_finetune"] = evaluate(
            self._recalibrated(copy.deepcopy(pruned)), self.data, cluster=self.cluster)
        for parameter in pruned.parameters():
            parameter.requires_grad_(True)
        self._on_main(lambda: self.run_dir.save_checkpoint(
            "pruned_init", {"model": pruned, "keep": keep.cpu()}))
        self._finish_stage(progress, "prune", 0, time.perf_counter() - started)
        return pruned

    def _fit(self, progress: _Progress, gated: GatedModel, keep: torch.Tensor) -> torch.Tensor:
        """Rank 0: fit the architecture to the budget by measuring on the device."""
        latency = self.latency
        assert latency is not None
        dense = _load_module(self.run_dir.path / "dense.pt")
        cache = MeasurementCache(self.run_dir.path / "fit-measurements.json",
                                 latency.fingerprint())
        if len(cache):
            self.observer.message(
                f"resuming the fit: {len(cache) // 2} measured call(s) are reused from "
                f"{cache.path}")
        keep, rounds = fit_to_budget(gated, dense, latency, self._example().cpu(), cache=cache)
        progress.fit_rounds = [r.to_dict() for r in rounds]
        for r in rounds:
            self.observer.message(r.describe())
        return keep

    def _layer_table(self, gated: GatedModel) -> list[dict[str, Any]]:
        """Per conv/linear layer: channels before and after, and LUT latency when known."""
        model = self.latency.latency_model if self.latency else None
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

    # -- stage 5: compile and measure ------------------------------------------------------
    def _stage_compile(self, progress: _Progress, dense: nn.Module, pruned: nn.Module,
                       result: dict[str, Any]) -> None:
        """Compile the pruned network for the target (ONNX; an engine on TensorRT targets),
        check it against PyTorch, and measure it interleaved with the dense network (the
        median of several device calls)."""
        from hwdnal.compile import (
            check_inputs_from,
            compile_network,
            compiled_dir,
            held_out_images,
        )

        started = time.perf_counter()
        latency = self.latency
        assert latency is not None and self.data is not None
        self.observer.stage_started("compile", 1, 1, 0)
        dense_measured, pruned_measured, calls = final_latency(dense, pruned, latency)
        artifact = compile_network(
            pruned, latency.input_shape, latency.device(),
            compiled_dir(self.run_dir.path, latency.target.name),
            check_inputs=check_inputs_from(self.data, latency.input_shape),
            check_source=f"{self.config.data} test images", measurement=pruned_measured,
            held_out=held_out_images(self.data, source=f"{self.config.data} test images"),
        )
        result["artifacts"].update(artifact.artifact_paths(self.run_dir.path))
        result["compiled"] = {latency.target.name: artifact.summary()}
        result["dense"]["latency_ms"] = dense_measured.median_ms
        result["dense"]["latency_p90_ms"] = dense_measured.p90_ms
        result["pruned"]["latency_ms"] = pruned_measured.median_ms
        result["pruned"]["latency_p90_ms"] = pruned_measured.p90_ms
        result["dense"]["latency_calls_ms"] = [round(d, 4) for d, _ in calls]
        result["pruned"]["latency_calls_ms"] = [round(p, 4) for _, p in calls]
        if latency.latency_model is not None:
            predicted = latency.latency_model.predict_module(pruned.cpu())
            pruned.to(self.device)
            error = (predicted - pruned_measured.median_ms) / pruned_measured.median_ms
            result["pruned"]["predicted_latency_ms"] = predicted
            result["pruned"]["latency_error"] = error  # (predicted - measured) / measured
            result["latency_flag"] = abs(error) > LATENCY_ERROR_FLAG
            if result["latency_flag"]:
                self.observer.message(
                    f"warning: the LUT predicts {predicted:.3f} ms for the pruned network, "
                    f"measured {pruned_measured.median_ms:.3f} ms ({100 * error:+.0f}%)")
        result["speedup"] = dense_measured.median_ms / pruned_measured.median_ms
        if latency.budget_ms is not None:
            self._judge_budget(progress, latency, dense_measured.median_ms,
                               pruned_measured.median_ms, result)
        self._finish_stage(progress, "compile", 0, time.perf_counter() - started)
        result["stages"] = progress.stages

    def _judge_budget(self, progress: _Progress, latency: TargetLatency, dense_ms: float,
                      pruned_ms: float, result: dict[str, Any]) -> None:
        """The verdict: the final measurement against the budget. An absolute budget is
        judged as measured, and also at the device's speed when the search began (the dense
        network, measured alongside, tells how much it has drifted since)."""
        relative = latency.budget is not None and latency.budget.relative
        budget_ms = latency.budget_against(dense_ms)
        drift = 1.0 if relative else latency.drift(dense_ms)  # a share follows the drift
        result["budget_ms"] = budget_ms
        result["budget_met"] = pruned_ms <= budget_ms
        result["device_drift"] = drift
        result["budget_met_at_start_speed"] = pruned_ms / drift <= budget_ms
        if result["budget_met"]:
            return
        kept = [r for r in progress.fit_rounds if r["measured_ms"] <= r["budget_ms"]]
        fit = max(kept, key=lambda r: r["measured_ms"] / r["budget_ms"]) if kept else None
        fitted = f" (the fit measured {fit['measured_ms']:.3f} ms)" if fit else ""
        if result["budget_met_at_start_speed"] and drift > 1.0:
            self.observer.message(
                f"warning: the final measurement, {pruned_ms:.3f} ms, is over the budget of "
                f"{budget_ms:.3f} ms{fitted}, but the device runs {100 * (drift - 1):.0f}% "
                f"slower than when the search began (dense network {dense_ms:.3f} ms against "
                f"{latency.dense_ms:.3f} ms): at that speed it takes {pruned_ms / drift:.3f} "
                "ms, within the budget; re-measure when the device is quiet (hwdnal bench)")
        else:
            self.observer.message(
                f"warning: the final measurement, {pruned_ms:.3f} ms, is over the budget of "
                f"{budget_ms:.3f} ms{fitted}: the device is noisy; re-measure with hwdnal "
                "bench")

    # -- stage 4: finetune ---------------------------------------------------------------
    def _recalibrated(self, pruned: nn.Module) -> nn.Module:
        """BatchNorm statistics recomputed for the pruned network (the same on every rank)."""
        assert self.data is not None
        recalibrate_batchnorm(pruned, self.data, self.config.batch_size,
                              seed=self.config.seed * 1000 + 700)
        self.cluster.sync_module(pruned)
        return pruned

    def _stage_finetune(self, progress: _Progress, pruned: nn.Module,
                        dense: nn.Module) -> nn.Module:
        config = self.config
        if "finetune" in progress.finished:
            return self._load_module(self.run_dir.path / "pruned.pt")
        started = time.perf_counter()
        pruned = self._recalibrated(pruned)
        if config.epochs_finetune > 0:
            teacher = None
            if config.distill > 0:  # a copy: the dense network itself is measured later
                teacher = Distillation(copy.deepcopy(dense).to(self.device), config.distill,
                                       config.distill_temperature)
            pruned = self._train_plain(pruned, "finetune", config.epochs_finetune,
                                       config.finetune_lr, progress, teacher)
        pruned.eval()
        self._on_main(lambda: _save_on_cpu(self.run_dir.path / "pruned.pt", pruned))
        self._finish_stage(progress, "finetune", config.epochs_finetune,
                           time.perf_counter() - started)
        return pruned


class _RefreshClock:
    """True a few times a second: how often a loop may wait for the device to show progress."""

    def __init__(self, seconds: float = 0.25) -> None:
        self.seconds = seconds
        self._next = 0.0

    def due(self) -> bool:
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.seconds
        return True


def _cpu(value: float | torch.Tensor) -> float | torch.Tensor:
    return value.detach().cpu() if isinstance(value, torch.Tensor) else value


def _resume_position(checkpoint: dict[str, Any] | None, steps: int) -> tuple[int, int]:
    """(epoch, step) to continue from: a checkpoint records the steps done in its epoch."""
    if checkpoint is None:
        return 0, 0
    epoch, done = checkpoint["epoch"], checkpoint.get("step", steps)
    return (epoch + 1, 0) if done >= steps else (epoch, done)


def _save_on_cpu(path: Path, model: nn.Module) -> None:
    """Networks are delivered on the CPU, loadable anywhere with torch.load."""
    device = next(model.parameters()).device
    save_torch(path, model.cpu())
    model.to(device)


def arch_lr(config: SearchConfig, total_steps: int) -> float:
    """The gate parameters' learning rate (see ``SearchConfig.arch_lr``)."""
    if config.arch_lr is not None:
        return config.arch_lr
    if config.arch_optimizer in ("adam", "shared-adam"):
        return 3.0 * max(config.gate_init, 1.0) / max(total_steps, 1)
    return 0.2


def _arch_optimizer(gated: GatedModel, config: SearchConfig,
                    total_steps: int) -> torch.optim.Optimizer:
    if config.arch_optimizer == "adam":
        return torch.optim.Adam(gated.gate.parameters(), lr=arch_lr(config, total_steps),
                                betas=(config.arch_momentum, 0.999))
    if config.arch_optimizer == "shared-adam":
        return SharedMomentAdam(gated.gate.parameters(), lr=arch_lr(config, total_steps),
                                beta1=config.arch_momentum)
    return torch.optim.SGD(gated.gate.parameters(), lr=arch_lr(config, total_steps),
                           momentum=0.9)


def _batchnorm_follows_batches(model: nn.Module) -> None:
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


def _load_module(path: Path, device: str = "cpu") -> nn.Module:
    try:
        model = torch.load(path, weights_only=False, map_location=device)
    except Exception as error:
        raise UserError(f"{path} is corrupt ({type(error).__name__}): use a new --out") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{path} holds no network: use a new --out")
    return model


def _load_weights(model: nn.Module, path: str, trust_pickle: bool = False) -> None:
    """Load ``--weights``: a state dict, or a dict with a 'model' or 'state_dict' entry.

    The file is read with ``weights_only=True``, so it cannot run code; a whole pickled
    module (which can) is read only with ``trust_pickle`` (``--trust-weights-pickle``).
    """
    import pickle
    import re
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on a plain pickle's protocol
            loaded = torch.load(path, weights_only=not trust_pickle, map_location="cpu")
    except FileNotFoundError:
        raise UserError(f"--weights {path} does not exist") from None
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        what = f"pickled objects ({found.group(1)})" if found else "pickled objects"
        raise UserError(
            f"--weights {path} holds {what}, not only tensors: loading it could run code from "
            "the file; save model.state_dict() instead, or pass --trust-weights-pickle if you "
            "trust the file"
        ) from None
    except Exception as error:
        raise UserError(f"--weights {path} is not a torch checkpoint ({first_line(error)})"
                        ) from None
    if isinstance(loaded, dict) and isinstance(loaded.get("model"), (dict, nn.Module)):
        loaded = loaded["model"]
    elif isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if isinstance(loaded, nn.Module):
        loaded = loaded.state_dict()
    try:
        model.load_state_dict(loaded)
    except (RuntimeError, TypeError, AttributeError) as error:
        raise UserError(
            f"--weights {path} does not fit this model ({first_line(error)}); pass weights "
            "trained for the same --model, dataset and input size"
        ) from None


__all__ = ["STAGES", "DnalSearch", "GateLossTerm", "SearchConfig", "SearchObserver"]
