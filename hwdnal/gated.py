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

from hwdnal.gates import GateMode, ScaledSigmoidGate
from hwdnal.graph import ChannelPlan, build_channel_plan


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
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        for index_name, site in self.plan.gate_sites.items():
            self.register_buffer(_buffer_name(index_name), site.out_gate_index, persistent=False)
        self._attach()

    # -- hooks ---------------------------------------------------------------------------
    def _attach(self) -> None:
        self._handles.append(self.model.register_forward_pre_hook(self._compute_gates))
        for name, site in self.plan.gate_sites.items():
            self._handles.append(site.module.register_forward_hook(self._gate_hook(name)))

    def detach_gates(self) -> nn.Module:
        """Remove every hook and return the plain model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
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

        def hook(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor | None:
            if self._current is None:
                return None
            multiplier = self._current[getattr(self, buffer)]
            if linear:
                return output * multiplier
            shape = [1, -1] + [1] * (output.dim() - 2)
            return output * multiplier.view(shape)

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
            self.gate.s.copy_(torch.where(keep.bool(), 1.0, -1.0))
        self.gate.delta = 1e4

    # -- what the cost terms read --------------------------------------------------------
    def keep_probability(self) -> torch.Tensor:
        """Differentiable keep-probability of every gate (alive at any δ)."""
        return self.gate.probability()

    def keep_mask(self) -> torch.Tensor:
        """Which gates survive pruning: at least one per group."""
        with torch.no_grad():
            keep = self.gate.binary().clone()
            for group in self.plan.groups:
                part = keep[group.start : group.stop]
                if not bool(part.any()):
                    part[int(torch.argmax(self.gate.s[group.start : group.stop]))] = True
        return keep

    def channel_counts(self, hard: bool = False) -> list[ChannelCounts]:
        """Expected (or, with ``hard``, final) in/out channels of every conv and linear layer."""
        values = self.keep_mask().float() if hard else self.keep_probability()
        extended = torch.cat([values, values.new_ones(1)])
        counts = []
        for name, layer in self.plan.layers.items():
            in_index = layer.in_gate_index.to(extended.device)
            out_index = layer.out_gate_index.to(extended.device)
            counts.append(
                ChannelCounts(
                    name=name,
                    module=layer.module,
                    in_channels=extended[in_index].sum(),
                    out_channels=extended[out_index].sum(),
                )
            )
        return counts

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


def _buffer_name(module_name: str) -> str:
    return "gate_index__" + module_name.replace(".", "__")

