"""The baselines hwdnal is compared with, built from the same pieces the search uses.

Every method trains with the engine's recipe (SGD, Nesterov momentum 0.9, cosine LR, weight
decay, the same per-epoch data order), so what differs between methods is only how the
architecture is chosen and where its weights come from.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from hwdnal.budget.reach import measure_together
from hwdnal.data import DataSpec, steps_per_epoch
from hwdnal.devices import Measurer
from hwdnal.distillation import Distillation
from hwdnal.gating.alignment import aligned_count
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import subnetwork
from hwdnal.train import TrainSettings, train_epoch


def train_plain(model: nn.Module, data: DataSpec, epochs: int, lr: float, batch_size: int,
                weight_decay: float, seed: int, teacher: Distillation | None = None,
                device: str = "cpu") -> float:
    """The engine's weight/finetune loop (the search's weights and finetune stages), with the
    search's distillation when a ``teacher`` is given, on ``device`` with the search's
    default precision there (bf16 autocast on a GPU); returns seconds."""
    from hwdnal.train import amp_dtype, make_optimizer

    started = time.perf_counter()
    if epochs <= 0:
        return 0.0
    model.to(device=device, memory_format=torch.channels_last)
    if teacher is not None:
        teacher.teacher.to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    steps = steps_per_epoch(data, batch_size)
    optimizer, scheduler = make_optimizer(model.parameters(), lr, weight_decay, epochs * steps)
    model.train()
    for epoch in range(epochs):
        train_epoch(model, data, optimizer, batch_size, seed=seed * 1000 + epoch,
                    scheduler=scheduler,
                    settings=TrainSettings(channels_last=True, distillation=teacher,
                                           amp=amp_dtype("auto", device)))
    model.eval()
    return time.perf_counter() - started


def sliced_like(model: nn.Module, example: torch.Tensor, keep: torch.Tensor) -> nn.Module:
    """``model`` (a fresh initialisation) cut to the architecture of the keep mask ``keep``:
    hwdnal's found architecture, ready to train from scratch as uniform width is."""
    return subnetwork(model, keep.cpu(), example)


def uniform_width(model: nn.Module, example: torch.Tensor, fraction: float,
                  multiple: int) -> nn.Module:
    """``model`` with the same fraction of every coupled-channel group kept (aligned to the
    target's channel step): width scaling of the very architecture hwdnal prunes."""
    return sliced_like(model, example, uniform_mask(model, example, fraction, multiple))


def uniform_mask(model: nn.Module, example: torch.Tensor, fraction: float,
                 multiple: int) -> torch.Tensor:
    """The keep mask of :func:`uniform_width`: the first channels of every group."""
    plan = GatedModel(copy.deepcopy(model).cpu(), example.cpu()).plan
    keep = torch.zeros(plan.num_gates, dtype=torch.bool)
    for group in plan.groups:
        kept = aligned_count(round(fraction * group.size), group.size, multiple)
        keep[group.start : group.start + kept] = True
    return keep


def l1_pruned(model: nn.Module, example: torch.Tensor, ratio: float, multiple: int) -> nn.Module:
    """torch-pruning's own L1-magnitude pruner, one shot, the same ratio in every group
    (rounded to the target's channel step); the class logits (last Linear) stay whole."""
    import torch_pruning as tp

    pruned = copy.deepcopy(model).cpu().eval()
    classifier = [m for m in pruned.modules() if isinstance(m, nn.Linear)][-1:]
    pruner = tp.pruner.BasePruner(
        pruned, example.cpu(), importance=tp.importance.MagnitudeImportance(p=1),
        pruning_ratio=ratio, ignored_layers=classifier, round_to=multiple if multiple > 1 else None,
    )
    pruner.step()
    return pruned


@dataclass
class Candidate:
    """One architecture of a family (a width fraction, a pruning ratio) and its latency."""

    knob: float
    ratio: float  # measured latency / dense latency, measured side by side
    macs: int | None = None


def measure_family(device: Measurer, dense: nn.Module, input_shape: tuple[int, ...],
                   build: Callable[[float], nn.Module], knobs: Sequence[float]) -> list[Candidate]:
    """Latency of a family of networks, all measured interleaved with the dense one."""
    networks = [build(knob) for knob in knobs]
    measured = measure_together(device, [dense, *networks], input_shape)
    base = measured[0].median_ms
    return [Candidate(knob, m.median_ms / base) for knob, m in zip(knobs, measured[1:],
                                                                   strict=True)]


def pick_for_budget(candidates: Sequence[Candidate], fraction: float) -> Candidate:
    """The candidate measured closest under the budget (the fastest one if none fits)."""
    fitting = [c for c in candidates if c.ratio <= fraction]
    if fitting:
        return max(fitting, key=lambda c: c.ratio)
    return min(candidates, key=lambda c: c.ratio)


__all__ = ["Candidate", "l1_pruned", "measure_family", "pick_for_budget", "sliced_like",
           "train_plain", "uniform_mask", "uniform_width"]
