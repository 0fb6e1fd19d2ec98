"""The epoch loops, plain enough to read in one sitting.

One loop serves every stage: the stage decides which parameters the optimizer holds, what
mode the gates are in, and which extra loss terms join the cross-entropy. A step callback
lets the stage move δ and the caller draw progress, with no UI code here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from hwdnal.data import DataSpec, batches
from hwdnal.errors import UserError


class LossTerm(Protocol):
    """A term added to the cross-entropy; its weight is read at every step (it may adapt)."""

    name: str
    weight: float

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


def train_epoch(
    model: nn.Module,
    data: DataSpec,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    seed: int,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    extra_terms: Sequence[LossTerm] = (),
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    augment: bool = True,
    channels_last: bool = False,
    start_step: int = 0,
    should_stop: Callable[[], bool] | None = None,
) -> EpochStats:
    """One pass over the training split (from ``start_step``); mean loss, accuracy, terms.

    Returns early, after a whole step, when ``should_stop()`` turns true.
    """
    total_loss = correct = seen = 0.0
    term_sums = {term.name: 0.0 for term in extra_terms}
    device = _device_of(model)
    step = start_step - 1
    for step, (images, labels) in enumerate(
        batches(data, "train", batch_size, shuffle=True, seed=seed, augment=augment,
                skip=start_step),
        start=start_step,
    ):
        images, labels = images.to(device, non_blocking=True), labels.to(device)
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        logits = model(images)
        loss = F.cross_entropy(logits, labels)
        values = {}
        for term in extra_terms:
            value = term.value()
            values[term.name] = float(value.detach())
            term_sums[term.name] += values[term.name]
            if term.weight:
                loss = loss + term.weight * value
        if not math.isfinite(float(loss.detach())):
            raise NonFiniteLoss(
                "the loss became NaN or infinite: lower the learning rate (--lr) or the "
                "weight of the regularisers (--lambda-a); the last good checkpoint is kept"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        batch = labels.numel()
        total_loss += float(loss.detach()) * batch
        correct += float((logits.detach().argmax(1) == labels).sum())
        seen += batch
        if on_step is not None:
            on_step(step, {"loss": float(loss.detach()), "acc": correct / seen, **values})
        if should_stop is not None and should_stop():
            return _stats(total_loss, correct, seen, term_sums, step + 1 - start_step,
                          steps_done=step + 1, completed=False)
    return _stats(total_loss, correct, seen, term_sums, step + 1 - start_step, step + 1, True)


def _stats(total_loss: float, correct: float, seen: float, term_sums: dict[str, float],
           steps: int, steps_done: int, completed: bool) -> EpochStats:
    return EpochStats(
        loss=total_loss / max(seen, 1),
        accuracy=correct / max(seen, 1),
        terms={name: value / max(steps, 1) for name, value in term_sums.items()},
        steps_done=steps_done,
        completed=completed,
    )


@torch.no_grad()
def evaluate(model: nn.Module, data: DataSpec, batch_size: int = 512) -> float:
    """Top-1 accuracy on the held-out split, in eval mode."""
    was_training = model.training
    model.eval()
    correct = seen = 0
    device = _device_of(model)
    for images, labels in batches(data, "test", batch_size, shuffle=False):
        images, labels = images.to(device), labels.to(device)
        correct += int((model(images).argmax(1) == labels).sum())
        seen += labels.numel()
    model.train(was_training)
    return correct / max(seen, 1)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
