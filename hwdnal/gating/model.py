"""A model with DNAL gates attached: the object the architecture stage trains.

Gates are attached with forward hooks on the gated modules, so any model works unchanged
and detaching leaves the original modules behind, ready for physical pruning. One gate
vector covers every gate group; each forward pass computes it once (a pre-hook on the
model) and each gated module gathers its channels' values from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hwdnal.gating.candidates import CandidateBlock, CandidateRule, candidate_blocks
from hwdnal.gating.gate import GateMode, ScaledSigmoidGate
from hwdnal.gating.plan import ChannelPlan
from hwdnal.gating.plan_builder import build_channel_plan


@dataclass
class ChannelCounts:
    """Expected input and output channels of one layer; tensors with gradients to the gates."""

    name: str
    module: nn.Module
    in_channels: torch.Tensor
    out_channels: torch.Tensor


class GatedModel(nn.Module):
    """``model`` plus one scaled-sigmoid gate per group of coupled channels."""

    def __init__(self, model: nn.Module, example_input: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        was_training = model.training
        model.eval()  # tracing runs a forward pass: it must not touch BatchNorm statistics
        self.plan: ChannelPlan = build_channel_plan(model, example_input)
        model.train(was_training)
        self.gate = ScaledSigmoidGate(self.plan.num_gates, name="all groups")
        self._current: torch.Tensor | None = None
        #: per device: [layers, channels] gate indices of each layer's in/out channels
        self._layer_index: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        #: gated and ungated output of each layer that also feeds a gated BatchNorm
        self._ungated: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.blocks: list[CandidateBlock] = candidate_blocks(model, self.plan)
        #: which of the blocks' groups may close, and which layers must keep one
        self.rule = CandidateRule(self.blocks)
        #: per gate: its block (len(blocks) for gates outside every candidate)
        self.register_buffer("_block_of_gate", _block_of_gate(self.plan, self.blocks),
                             persistent=False)
        #: per conv/linear layer (plan.layers order): its block, len(blocks) if none
        self.register_buffer("_block_of_layer", _block_of_layer(self.plan, self.blocks),
                             persistent=False)
        for index_name, site in self.plan.gate_sites.items():
            self.register_buffer(_buffer_name(index_name), site.out_gate_index, persistent=False)
        self._attach()

    # -- hooks ---------------------------------------------------------------------------
    def _attach(self) -> None:
        self._handles.append(self.model.register_forward_pre_hook(self._compute_gates))
        for name, site in self.plan.gate_sites.items():
            self._handles.append(site.module.register_forward_hook(self._gate_hook(name)))
        for k, block in enumerate(self.blocks):
            output = block.output if block.output is not None else block.module
            self._handles.append(output.register_forward_hook(self._block_hook(k)))
        modules = dict(self.model.named_modules())
        for norm, layer in self.plan.ungated_inputs.items():
            self._handles.append(
                modules[norm].register_forward_pre_hook(self._ungate_hook(layer))
            )

    def _ungate_hook(self, layer: str):
        """A BatchNorm after a gated layer reads the layer's ungated output (gated once)."""

        def hook(_module: nn.Module, inputs: tuple) -> tuple | None:
            gated, raw = self._ungated.pop(layer, (None, None))
            if gated is not None and inputs and inputs[0] is gated:
                return (raw, *inputs[1:])
            return None

        return hook

    def _block_hook(self, k: int):
        """A candidate's (or a residual branch's) output times its block gate (the largest
        of its channel gates): 1 while any of its channels lives, 0 once all are off, so a
        dropped block adds nothing (not its last BatchNorm's shift) and pruning it changes
        nothing."""

        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor | None:
            if self._current is None:
                return None
            return output * self.block_values(self._current[:-1])[k]

        return hook

    def block_values(self, values: torch.Tensor) -> torch.Tensor:
        """Per candidate block, the largest gate value of its channels; one more entry (1)
        for everything outside the blocks."""
        slots = values.new_zeros(len(self.blocks) + 1)
        slots = slots.scatter_reduce(0, self._block_of_gate.to(values.device), values, "amax",
                                     include_self=False)
        return torch.cat([slots[:-1], slots.new_ones(1)])

    def detach_gates(self) -> nn.Module:
        """Remove every hook and return the plain model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._ungated.clear()
        return self.model

    def _compute_gates(self, _module: nn.Module, _inputs: object) -> None:
        if self.gate.mode is GateMode.HARD:
            values = self.keep_mask().to(self.gate.s.dtype)
        else:
            values = self.gate()
        if values is None:
            self._current = None
            return
        self._current = torch.cat([values, values.new_ones(1)])

    def _gate_hook(self, name: str):
        buffer = _buffer_name(name)
        linear = isinstance(self.plan.gate_sites[name].module, nn.Linear)
        feeds_norm = name in set(self.plan.ungated_inputs.values())

        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor | None:
            if self._current is None:
                return None
            multiplier = self._current[getattr(self, buffer)]
            if linear:
                gated = output * multiplier
            else:
                gated = output * multiplier.view([1, -1] + [1] * (output.dim() - 2))
            if feeds_norm:
                self._ungated[name] = (gated, output)
            return gated

        return hook

    # -- forward -------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # -- gate control --------------------------------------------------------------------
    @property
    def mode(self) -> GateMode:
        return self.gate.mode

    def set_mode(self, mode: GateMode) -> None:
        self.gate.mode = mode

    def set_delta(self, delta: float) -> None:
        self.gate.delta = delta

    def set_keep_mask(self, keep: torch.Tensor) -> None:
        """Force the gates to a given architecture (s = ±1 at δ = 1e4)."""
        with torch.no_grad():
            self.gate.s.copy_(torch.where(keep.to(self.gate.s.device).bool(), 1.0, -1.0))
        self.gate.delta = 1e4

    # -- what the cost terms read --------------------------------------------------------
    def keep_probability(self) -> torch.Tensor:
        """Differentiable keep-probability of every gate (alive at any δ)."""
        return self.gate.probability()

    def keep_mask(self) -> torch.Tensor:
        """Which gates survive pruning: at least one per group, except a supernet's candidate
        blocks, which may lose all their channels as long as their layer survives it (a
        layer without a residual path keeps its most alive candidate)."""
        groups = self.plan.groups
        with torch.no_grad():
            keep = self.gate.binary().clone()
            s = self.gate.s
            for k, group in enumerate(groups):
                part = keep[group.start : group.stop]
                if k not in self.rule.optional and not bool(part.any()):
                    part[int(torch.argmax(s[group.start : group.stop]))] = True
            for layer in self.rule.orphaned(
                    lambda g: bool(keep[groups[g].start : groups[g].stop].any())):
                best = max((groups[g] for g in layer),
                           key=lambda g: float(s[g.start : g.stop].max()))
                keep[best.start + int(torch.argmax(s[best.start : best.stop]))] = True
        return keep

    @property
    def has_supernet_candidates(self) -> bool:
        """Candidate blocks of a supernet's mixed layers (not only CNN residual branches)."""
        return any(not block.is_branch for block in self.blocks)

    def dropped_blocks(self) -> list[CandidateBlock]:
        """The candidate blocks the keep mask removes entirely."""
        keep = self.keep_mask()
        return [b for b in self.blocks if not bool(
            keep[self.plan.groups[b.group].start : self.plan.groups[b.group].stop].any())]

    def _gate_values(self, hard: bool, values: torch.Tensor | None) -> torch.Tensor:
        if values is not None:
            return values.to(self.gate.s.dtype)
        return self.keep_mask().to(self.gate.s.dtype) if hard else self.keep_probability()

    def layer_presence(self, hard: bool = False,
                       values: torch.Tensor | None = None) -> torch.Tensor:
        """Per conv/linear layer (``layer_channels`` order): 1, or for a layer inside a
        candidate block its block gate, so that the latency of a dropped candidate vanishes
        entirely, fixed per-layer costs included. ``values`` (one per gate) replaces the
        gates' own (hard: the keep mask; else the keep probabilities)."""
        values = self._gate_values(hard, values)
        index = self._block_of_layer.to(values.device)
        return self.block_values(values)[index]

    def layer_channels(self, hard: bool = False, values: torch.Tensor | None = None
                       ) -> tuple[list[str], torch.Tensor, torch.Tensor]:
        """Names of every conv and linear layer and their expected (or, with ``hard``, final)
        in and out channel counts as two ``[layers]`` tensors on the gates' device.

        One gather and one sum for all layers, with the index kept on the gates' device: a
        step reads nothing back to the host, however many layers the network has.
        """
        values = self._gate_values(hard, values)
        in_index, out_index = self.layer_gate_indices(values.device)
        # index num_gates: a channel no gate removes (1); num_gates + 1: padding (0)
        extended = torch.cat([values, values.new_ones(1), values.new_zeros(1)])
        return list(self.plan.layers), extended[in_index].sum(1), extended[out_index].sum(1)

    def layer_gate_indices(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per layer, the padded gate indices of its input and output channels: summing
        gate values over them gives the layer's (soft) channel counts in one gather."""
        found = self._layer_index.get(device)
        if found is None:
            pad = self.plan.num_gates + 1
            layers = list(self.plan.layers.values())
            found = tuple(
                _padded([getattr(layer, side) for layer in layers], pad).to(device)
                for side in ("in_gate_index", "out_gate_index")
            )
            self._layer_index[device] = found
        return found

    def channel_counts(self, hard: bool = False) -> list[ChannelCounts]:
        """Expected (or, with ``hard``, final) in/out channels of every conv and linear layer."""
        names, cin, cout = self.layer_channels(hard=hard)
        return [
            ChannelCounts(name=name, module=self.plan.layers[name].module,
                          in_channels=cin[k], out_channels=cout[k])
            for k, name in enumerate(names)
        ]

    def sparsity(self) -> torch.Tensor:
        """DNAL's λa term: the mean keep-probability over all gates."""
        if self.plan.num_gates == 0:
            return self.gate.s.new_zeros(())
        return self.keep_probability().mean()

    def kept_per_group(self) -> list[dict[str, int | str]]:
        keep = self.keep_mask()
        return [
            {
                "name": group.name,
                "kept": int(keep[group.start : group.stop].sum()),
                "total": group.size,
            }
            for group in self.plan.groups
        ]


def _block_of_gate(plan: ChannelPlan, blocks: list[CandidateBlock]) -> torch.Tensor:
    index = torch.full((plan.num_gates,), len(blocks), dtype=torch.long)
    for k, block in enumerate(blocks):
        group = plan.groups[block.group]
        index[group.start : group.stop] = k
    return index


def _block_of_layer(plan: ChannelPlan, blocks: list[CandidateBlock]) -> torch.Tensor:
    owner = {id(m): k for k, block in enumerate(blocks) for m in block.module.modules()}
    return torch.tensor([owner.get(id(lc.module), len(blocks)) for lc in plan.layers.values()],
                        dtype=torch.long)


def _padded(rows: list[torch.Tensor], pad: int) -> torch.Tensor:
    """``rows`` (1-d long tensors) stacked into one matrix, short rows filled with ``pad``."""
    width = max((row.numel() for row in rows), default=0)
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for k, row in enumerate(rows):
        out[k, : row.numel()] = row.cpu()
    return out


def _buffer_name(module_name: str) -> str:
    return "gate_index__" + module_name.replace(".", "__")
