"""The epoch loops, plain enough to read in one sitting.

One loop serves every stage: the stage decides which parameters the optimizer holds, what
mode the gates are in, and which extra loss terms join the cross-entropy. A step callback
lets the stage move δ and the caller draw progress, with no UI code here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from hwdnal.data import DataSpec, batches
from hwdnal.distillation import Distillation
from hwdnal.distributed import Cluster
from hwdnal.errors import UserError


class LossTerm(Protocol):
    """A term added to the cross-entropy; its weight is read at every step (it may adapt)."""

    name: str
    weight: float | torch.Tensor

    def value(self) -> torch.Tensor: ...


@dataclass
class EpochStats:
    loss: float = 0.0
    accuracy: float = 0.0
    terms: dict[str, float] = field(default_factory=dict)
    #: steps of the epoch done when it returned (all of them unless a stop was requested)
    steps_done: int = 0
    completed: bool = True


class NonFiniteLoss(UserError):
    """The loss became NaN or infinite."""


def _non_finite() -> NonFiniteLoss:
    return NonFiniteLoss(
        "the loss became NaN or infinite: lower the learning rate (--lr) or the weight of the "
        "regularisers (--lambda-a); the last good checkpoint is kept"
    )


class StepValues:
    """One step's loss, the epoch's running accuracy and the terms, still on the device.

    Reading them (:meth:`read`) waits for the device; the loop never does, so a GPU runs
    ahead of Python. Callers read when they show progress, a few times a second.
    """

    def __init__(self, loss: torch.Tensor, correct: torch.Tensor, seen: int,
                 terms: dict[str, torch.Tensor], bad: torch.Tensor) -> None:
        self.loss, self.correct, self.seen, self.terms, self._bad = loss, correct, seen, terms, bad

    def read(self) -> dict[str, float]:
        if bool(self._bad):
            raise _non_finite()
        return {"loss": float(self.loss), "acc": float(self.correct) / max(self.seen, 1),
                **{name: float(value) for name, value in self.terms.items()}}


@dataclass
class TrainSettings:
    """How the loop runs on its device; none of it changes what is computed on the CPU."""

    channels_last: bool = False
    #: autocast dtype of the forward pass (torch.bfloat16), None for full precision
    amp: torch.dtype | None = None
    #: (rank, world): this process's share of every global batch under torchrun
    shard: tuple[int, int] | None = None
    #: a teacher whose softened logits join the labels (finetuning), None for labels alone
    distillation: Distillation | None = None


def train_epoch(
    model: nn.Module,
    data: DataSpec,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    seed: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    extra_terms: Sequence[LossTerm] = (),
    on_step: Callable[[int, StepValues], None] | None = None,
    augment: bool = True,
    channels_last: bool = False,
    start_step: int = 0,
    should_stop: Callable[[], bool] | None = None,
    settings: TrainSettings | None = None,
) -> EpochStats:
    """One pass over the training split (from ``start_step``); mean loss, accuracy, terms.

    Loss, accuracy and the terms accumulate on the device and are read once, at the end
    (or when ``on_step`` reads a :class:`StepValues`). Returns early, after a whole step,
    when ``should_stop()`` turns true. ``batch_size`` is the global batch under torchrun.
    """
    settings = settings or TrainSettings(channels_last=channels_last)
    device = _device_of(model)
    zero = torch.zeros((), device=device)
    total_loss, correct, bad = zero.clone(), zero.clone(), torch.zeros((), dtype=torch.bool,
                                                                        device=device)
    term_sums = {term.name: zero.clone() for term in extra_terms}
    seen = 0
    step = start_step - 1
    for step, (images, labels) in enumerate(
        batches(data, "train", batch_size, shuffle=True, seed=seed, augment=augment,
                skip=start_step, shard=settings.shard),
        start=start_step,
    ):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=settings.amp or torch.bfloat16,
                            enabled=settings.amp is not None):
            logits = model(images)
            if settings.distillation is not None:
                loss = settings.distillation.loss(logits.float(), images, labels)
        if settings.distillation is None:
            loss = F.cross_entropy(logits.float(), labels)
        values = {}
        for term in extra_terms:
            value = term.value()
            values[term.name] = value.detach()
            term_sums[term.name] += values[term.name]
            if isinstance(term.weight, torch.Tensor):  # adapted on the device (dual ascent)
                loss = loss + term.weight.to(value.dtype) * value
            elif term.weight:
                loss = loss + term.weight * value
        bad |= ~torch.isfinite(loss.detach())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        batch = labels.numel()
        total_loss += loss.detach() * batch
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += batch
        if on_step is not None:
            on_step(step, StepValues(loss.detach(), correct, seen, values, bad))
        if should_stop is not None and should_stop():
            return _stats(total_loss, correct, seen, term_sums, bad, step + 1 - start_step,
                          steps_done=step + 1, completed=False)
    return _stats(total_loss, correct, seen, term_sums, bad, step + 1 - start_step, step + 1,
                  True)


def _stats(total_loss: torch.Tensor, correct: torch.Tensor, seen: int,
           term_sums: dict[str, torch.Tensor], bad: torch.Tensor, steps: int, steps_done: int,
           completed: bool) -> EpochStats:
    if bool(bad):
        raise _non_finite()
    return EpochStats(
        loss=float(total_loss) / max(seen, 1),
        accuracy=float(correct) / max(seen, 1),
        terms={name: float(value) / max(steps, 1) for name, value in term_sums.items()},
        steps_done=steps_done,
        completed=completed,
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSpec, batch_size: int = 512,
             cluster: Cluster | None = None) -> float:
    """Top-1 accuracy on the held-out split, in eval mode; each rank of a ``cluster``
    evaluates its share and the counts are summed (every rank gets the same number)."""
    was_training = model.training
    model.eval()
    device = _device_of(model)
    correct = torch.zeros((), dtype=torch.long, device=device)
    seen = torch.zeros((), dtype=torch.long, device=device)
    shard = cluster.shard() if cluster is not None else None
    for images, labels in batches(data, "test", batch_size, shuffle=False, shard=shard):
        images = images.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        correct += (model(images).argmax(1) == labels).sum()
        seen += labels.numel()
    model.train(was_training)
    if cluster is not None:
        counts = cluster.sum(torch.stack([correct, seen]))
        correct, seen = counts[0], counts[1]
    return int(correct) / max(int(seen), 1)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, data: DataSpec, batch_size: int = 128,
                          batches_used: int = 20, seed: int = 0) -> None:
    """Every BatchNorm's running statistics recomputed on training batches (a cumulative
    average), weights untouched. Removing channels moves the statistics of the layers that
    read them: a pruned network on its dense network's statistics can sit near chance until
    recalibrated (NetAdapt, AutoSlim do the same before judging a candidate)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    was_training = model.training
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.eval()
    for m in norms:
        m.train()
    device = _device_of(model)
    for k, (images, _) in enumerate(batches(data, "train", batch_size, shuffle=True, seed=seed)):
        if k >= batches_used:
            break
        model(images.to(device, non_blocking=True))
    for m, momentum in saved:
        m.momentum = momentum
    model.train(was_training)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def amp_dtype(amp: str, device: str) -> torch.dtype | None:
    """The autocast dtype for ``--amp`` on ``device`` (None: full precision)."""
    if amp not in ("auto", "bf16", "off"):
        raise UserError(f"--amp {amp} is not known: use auto, bf16 or off")
    if amp == "off" or (amp == "auto" and not device.startswith("cuda")):
        return None
    if device.startswith("cuda") and not torch.cuda.is_bf16_supported():
        if amp == "bf16":
            raise UserError(f"--amp bf16: {device} has no bfloat16 support; use --amp off")
        return None
    return torch.bfloat16


def make_optimizer(
    parameters: Iterable[nn.Parameter], lr: float, weight_decay: float, total_steps: int
) -> tuple[torch.optim.SGD, torch.optim.lr_scheduler.CosineAnnealingLR]:
    """The recipe for every plain training (weights, finetune, baselines): SGD with Nesterov
    momentum 0.9 and weight decay, the lr annealed by a cosine to 0 over ``total_steps``."""
    optimizer = torch.optim.SGD(parameters, lr=lr, momentum=0.9, nesterov=True,
                                weight_decay=weight_decay)
    return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total_steps)
