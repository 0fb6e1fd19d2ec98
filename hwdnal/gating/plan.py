"""The channel plan: for every gate, which channels of which layer it guards. Pure
bookkeeping, built by :mod:`hwdnal.gating.plan_builder`; it knows nothing of training or
latency."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    import torch_pruning as tp


@dataclass
class GateGroup:
    """One set of coupled channels with its own slice of the gate vector."""

    name: str
    start: int
    size: int
    #: torch-pruning groups (root module and its out-channel pruning function) that this
    #: gate group prunes, with, for each, the gate index of every root channel.
    roots: list[tuple[nn.Module, Callable]] = field(default_factory=list)
    root_gate_index: list[torch.Tensor] = field(default_factory=list)
    dependency_groups: list[int] = field(default_factory=list)

    @property
    def stop(self) -> int:
        return self.start + self.size


@dataclass
class LayerChannels:
    """For each input and output channel of one layer, the index of its gate.

    Index ``num_gates`` means "no gate": the channel is always kept (model inputs, class
    logits, channels that cannot be removed safely).
    """

    name: str
    module: nn.Module
    in_gate_index: torch.Tensor
    out_gate_index: torch.Tensor


@dataclass
class ChannelPlan:
    groups: list[GateGroup]
    layers: dict[str, LayerChannels]
    norms: dict[str, LayerChannels]
    #: modules after whose output a gate acts, with the gate index of each output channel
    gate_sites: dict[str, LayerChannels]
    num_gates: int
    graph: tp.DependencyGraph
    #: BatchNorms whose layer is gated too (it also feeds other layers): name of the
    #: BatchNorm -> name of that layer. The BatchNorm reads the layer's ungated output, so
    #: that its channels are gated once, after it.
    ungated_inputs: dict[str, str] = field(default_factory=dict)
