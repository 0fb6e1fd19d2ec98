"""Blocks that may lose every channel and go whole: a supernet's candidates (any module
that declares itself a :class:`~hwdnal.gating.blocks.CandidateLayer`) and a CNN's residual
branches (:func:`~hwdnal.gating.blocks.removable_branches`). The gating core knows no model
family: both come through those small protocols."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from hwdnal.gating.blocks import candidate_layers, removable_branches
from hwdnal.gating.plan import ChannelPlan


@dataclass
class CandidateBlock:
    """A block that may lose all its channels and go whole: one candidate of a supernet
    layer (its expanded channels), or a CNN's residual branch (its one internal group, see
    :mod:`hwdnal.gating.blocks`). Its group may end with no channel at all."""

    layer: str
    name: str
    module: nn.Module  # everything that goes with it (its layers cost nothing once gone)
    residual: bool
    group: int  # index into plan.groups
    #: the module whose output the block gate multiplies (the candidate itself, or the
    #: branch's last module)
    output: nn.Module | None = None
    #: a residual branch: the qualified name of the block replaced by the identity when
    #: its group closes (a supernet's candidate leaves its MixedLayer instead)
    replaced: str | None = None

    @property
    def is_branch(self) -> bool:
        return self.replaced is not None


class CandidateRule:
    """The one rule for blocks that may go whole: a block's group may close to 0 channels,
    except that a layer without a residual path must keep one candidate alive. Each caller
    still picks its own survivor (the most open gate, the first candidate, the largest)."""

    def __init__(self, blocks: list[CandidateBlock]) -> None:
        layers: dict[str, list[CandidateBlock]] = {}
        for block in blocks:
            layers.setdefault(block.layer, []).append(block)
        #: the groups that may end with no channel at all
        self.optional = {block.group for block in blocks}
        #: per block's group: the groups of its layer's candidates when that layer has no
        #: residual path (one of them must stay), else an empty list (they may all go)
        self.siblings = {b.group: ([] if b.residual else [s.group for s in layers[b.layer]])
                         for b in blocks}
        self._needs_survivor = [[b.group for b in members] for members in layers.values()
                                if not members[0].residual]

    def may_close(self, group: int, alive: Callable[[int], bool]) -> bool:
        """Whether ``group`` may keep 0 channels while ``alive`` says which groups keep some."""
        if group not in self.optional:
            return False
        layer = self.siblings[group]
        return not layer or any(alive(g) for g in layer if g != group)

    def orphaned(self, alive: Callable[[int], bool]) -> list[list[int]]:
        """The layers without a residual path none of whose candidates is ``alive`` (each
        needs one back), as their candidates' groups in model order."""
        return [layer for layer in self._needs_survivor if not any(alive(g) for g in layer)]


def candidate_blocks(model: nn.Module, plan: ChannelPlan) -> list[CandidateBlock]:
    """The candidate blocks of a supernet's mixed layers whose expanded channels form a gate
    group of their own (nothing outside the block shares them), then the residual branches
    the model declares (:mod:`hwdnal.gating.blocks`) with exactly one group of their own."""
    return [*_supernet_candidates(model, plan), *_residual_branches(model, plan)]


def _residual_branches(model: nn.Module, plan: ChannelPlan) -> list[CandidateBlock]:
    """A declared branch whose block holds exactly one internal group (every layer that
    touches it inside the block): closing that group leaves the branch nothing to compute.
    Blocks with none (nothing to gate) or several (a bottleneck) are not removable here."""
    branches = removable_branches(model)
    if not branches:
        return []
    modules = dict(model.named_modules())
    coupled_layers = [*plan.layers.values(), *plan.norms.values()]
    touching = [{id(lc.module) for lc in coupled_layers
                 if touches(lc.in_gate_index, g.start, g.stop - 1)
                 or touches(lc.out_gate_index, g.start, g.stop - 1)} for g in plan.groups]
    blocks = []
    for branch in branches:
        block, output = modules.get(branch.block), modules.get(branch.output)
        if block is None or output is None:
            continue
        inside = {id(m) for m in block.modules()}
        internal = [k for k, members in enumerate(touching) if members and members <= inside]
        if len(internal) == 1:
            blocks.append(CandidateBlock(branch.block, "branch", block, True, internal[0],
                                         output=output, replaced=branch.block))
    return blocks


def _supernet_candidates(model: nn.Module, plan: ChannelPlan) -> list[CandidateBlock]:
    layer_of = {id(lc.module): lc for lc in plan.layers.values()}
    starts = {group.start: k for k, group in enumerate(plan.groups)}
    blocks = []
    for layer_name, layer in candidate_layers(model).items():
        for name, candidate in layer.candidate_ops().items():
            expanded = layer_of.get(id(candidate.expanded))
            if expanded is None:
                continue
            gates = expanded.out_gate_index
            k = starts.get(int(gates.min())) if gates.numel() else None
            if k is None or plan.groups[k].size != gates.numel():
                continue
            inside = {id(m) for m in candidate.modules()}
            low, high = int(gates.min()), int(gates.max())
            coupled = [lc for lc in [*plan.layers.values(), *plan.norms.values()]
                       if touches(lc.in_gate_index, low, high)
                       or touches(lc.out_gate_index, low, high)]
            if all(id(lc.module) in inside for lc in coupled):
                blocks.append(CandidateBlock(layer_name, name, candidate, layer.residual, k))
    return blocks


def touches(index: torch.Tensor, low: int, high: int) -> bool:
    return bool(((index >= low) & (index <= high)).any())
