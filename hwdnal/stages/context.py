"""What every stage of a search shares: the configuration, the run directory, the torchrun
cluster, the observer, the data and the target, with the helpers that checkpoint, report
and finish a stage. The stages are functions over one :class:`StageContext`."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdnal.atomic import save_torch
from hwdnal.budget.target import TargetLatency
from hwdnal.config import SearchConfig
from hwdnal.data import DataSpec
from hwdnal.devices import Measurer
from hwdnal.distributed import Cluster
from hwdnal.errors import UserError
from hwdnal.interrupt import GracefulStop, Interrupted
from hwdnal.loss_terms import GateLossTerm
from hwdnal.models import create_model
from hwdnal.observer import SearchObserver
from hwdnal.run import RunDir
from hwdnal.train import StepValues, TrainSettings, recalibrate_batchnorm


@dataclass


class Progress:
    """What the finished stages found: state.json's keys (a run made before a change of
    these fields must still resume, so names and order stay)."""

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

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Progress:
        return cls(**{k: state[k] for k in cls.__dataclass_fields__ if k in state})


@dataclass


class StageContext:
    """One search's shared state; ``data``, ``latency`` and ``measurer`` are set once its
    inputs are checked."""

    config: SearchConfig
    run_dir: RunDir
    cluster: Cluster
    observer: SearchObserver
    #: where this process trains (its own GPU under torchrun)
    device: str
    stop: GracefulStop | None = None
    data: DataSpec | None = None
    amp: torch.dtype | None = None
    #: the device that measures: rank 0's only, None for a search that measures nothing
    measurer: Measurer | None = None
    latency: TargetLatency | None = None
    extra_terms: list[GateLossTerm] = field(default_factory=list)

    # -- stopping --------------------------------------------------------------------------
    def stopping(self) -> bool:
        return self.stop is not None and self.stop.requested

    def stopping_together(self) -> bool:
        """A stop in the training loops: every rank stops after the same step."""
        return self.cluster.stop_agreed(self.stopping)

    def stop_if_requested(self, completed: bool, stage: str, epoch: int, step: int) -> None:
        """After a checkpoint: leave with :class:`Interrupted` if a stop was asked for."""
        if not completed or (not self.cluster.active and self.stopping()):
            number = self.stop.signal_number if self.stop is not None else None
            # a rank that got no signal follows the others: SIGTERM
            raise Interrupted(f"{stage} (epoch {epoch + 1}, step {step})",
                              number if number is not None else signal.SIGTERM)

    def profiling(self, done: int, total: int, what: str) -> None:
        """Profiling progress; a requested stop leaves after the batch (it is cached)."""
        self.observer.profiling(done, total, what)
        if self.stopping():
            assert self.stop is not None and self.stop.signal_number is not None
            raise Interrupted(f"profiling ({what}, {done}/{total})", self.stop.signal_number)

    # -- the run directory, on rank 0 ---------------------------------------------------------
    def on_main(self, work: Callable[[], Any]) -> None:
        """Writing the run directory and reporting: rank 0's job."""
        if self.cluster.is_main:
            work()

    def load_checkpoint(self, name: str) -> dict[str, Any] | None:
        """Rank 0 reads the run directory; every rank gets the same checkpoint."""
        return self.cluster.run_on_main(lambda: self.run_dir.load_checkpoint(name))

    def load_network(self, path: Path) -> nn.Module:
        """A network this run saved (rank 0 reads it, every rank gets it), on ``device``."""
        return self.cluster.run_on_main(lambda: load_module(path)).to(self.device)

    def save_progress(self, progress: Progress) -> None:
        self.on_main(lambda: self.run_dir.save_state(asdict(progress)))

    def finish_stage(self, progress: Progress, name: str, epochs: int, started: float) -> None:
        """Record stage ``name`` (begun at ``started``, a perf_counter) as finished."""
        seconds = time.perf_counter() - started
        if name not in progress.finished:
            progress.finished.append(name)
        progress.stages = [s for s in progress.stages if s["name"] != name]
        progress.stages.append({"name": name, "epochs": epochs, "seconds": round(seconds, 2),
                                "world_size": self.cluster.world_size})
        self.save_progress(progress)
        self.observer.stage_finished(name, seconds)

    # -- networks and data ----------------------------------------------------------------
    def example(self, batch: int = 1) -> torch.Tensor:
        assert self.data is not None
        return self.data.example_input(batch).to(self.device)

    def new_model(self) -> nn.Module:
        """The configured model, freshly initialised from the seed, on ``device``."""
        assert self.data is not None
        torch.manual_seed(self.config.seed)
        model = create_model(self.config.model, self.data.num_classes, self.data.in_channels,
                             self.config.candidates)
        if self.config.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model.to(self.device)

    def settings(self) -> TrainSettings:
        return TrainSettings(channels_last=self.config.channels_last, amp=self.amp,
                             shard=self.cluster.shard())

    def wrap(self, model: nn.Module, compile_graph: bool = False) -> nn.Module:
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

    def recalibrated(self, pruned: nn.Module) -> nn.Module:
        """BatchNorm statistics recomputed for a pruned network (the same on every rank)."""
        assert self.data is not None
        recalibrate_batchnorm(pruned, self.data, self.config.batch_size,
                              seed=self.config.seed * 1000 + 700)
        self.cluster.sync_module(pruned)
        return pruned

    def shown(self, stage: str, steps: int,
              extra: Callable[[int, dict[str, float]], dict[str, float]] | None = None,
              ) -> Callable[[int, StepValues], None]:
        """The progress callback of a loop: reads the step's values (a wait for the
        device) only when the bar is redrawn, a few times a second, and at the epoch's end."""
        clock = RefreshClock()

        def on_step(step: int, values: StepValues) -> None:
            if clock.due() or step == steps - 1:
                shown = values.read()
                if extra is not None:
                    shown = extra(step, shown)
                self.observer.step(stage, step + 1, shown)

        return on_step


class RefreshClock:
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


def resume_position(checkpoint: dict[str, Any] | None, steps: int) -> tuple[int, int]:
    """(epoch, step) to continue from: a checkpoint records the steps done in its epoch."""
    if checkpoint is None:
        return 0, 0
    epoch, done = checkpoint["epoch"], checkpoint.get("step", steps)
    return (epoch + 1, 0) if done >= steps else (epoch, done)


def save_on_cpu(path: Path, model: nn.Module) -> None:
    """Networks are delivered on the CPU, loadable anywhere with torch.load."""
    device = next(model.parameters()).device
    save_torch(path, model.cpu())
    model.to(device)


def load_module(path: Path, device: str = "cpu") -> nn.Module:
    """A whole network this run saved (its own file: pickled, so never one from elsewhere)."""
    try:
        model = torch.load(path, weights_only=False, map_location=device)
    except Exception as error:
        raise UserError(f"{path} is corrupt ({type(error).__name__}): use a new --out") from None
    if not isinstance(model, nn.Module):
        raise UserError(f"{path} holds no network: use a new --out")
    return model
