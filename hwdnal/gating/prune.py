"""Physical pruning: remove every channel whose gate is 0, leaving a smaller plain network.

The channel plan knows, for every input and output channel of every convolution, linear
layer and BatchNorm, the gate that guards it (see :mod:`hwdnal.gating.plan_builder`, built from
torch-pruning's dependency groups). Pruning therefore slices each of these layers' tensors
by its own keep masks, directly: nothing else holds channels, and the forward code's
concatenations, chunks, shuffles and additions adapt to the smaller tensors by themselves.
Grouped convolutions keep the same positions in every group (the plan ties them), so their
weight is the original's kept rows and kept per-group input positions.

A supernet's candidate block whose expanded channels were all removed is then taken out of
its layer (:meth:`~hwdnal.models.proxyless_supernet.MixedLayer.keep_only`); a residual layer
left with no candidate is the identity. A CNN's residual block whose branch closed (its one
internal group at 0 channels, :mod:`hwdnal.gating.blocks`) is replaced by ``nn.Identity``.

Slicing keeps each tensor's memory format: a dense model in ``torch.channels_last`` gives a
pruned model in ``torch.channels_last``.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from hwdnal.gating.blocks import candidate_layers
from hwdnal.gating.model import GatedModel
from hwdnal.layers import is_depthwise_conv


def prune_physically(gated: GatedModel) -> nn.Module:
    """Detach the gates and remove the channels whose gate is off; returns the model."""
    keep = torch.cat([gated.keep_mask().cpu(), torch.ones(1, dtype=torch.bool)])
    plan = gated.plan
    removed = [block.replaced for block in gated.dropped_blocks() if block.replaced]
    model = gated.detach_gates()
    with torch.no_grad():
        for layer in plan.layers.values():
            in_keep, out_keep = keep[layer.in_gate_index], keep[layer.out_gate_index]
            if isinstance(layer.module, nn.modules.conv._ConvNd):
                _prune_conv(layer.module, in_keep, out_keep)
            else:
                _prune_linear(layer.module, in_keep, out_keep)
        for norm in plan.norms.values():
            _prune_batchnorm(norm.module, keep[norm.out_gate_index])
    for layer in candidate_layers(model).values():
        layer.keep_only([name for name, block in layer.candidate_ops().items()
                         if block.expanded.out_channels > 0])
    for name in removed:  # the model promised: with its branch at zero, the block is x -> x
        model.set_submodule(name, nn.Identity())
    return model


def _slice(tensor: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """``tensor`` keeping ``index`` along ``dim``, in ``tensor``'s own memory format."""
    out = tensor.index_select(dim, index.to(tensor.device))
    if tensor.dim() == 4 and tensor.is_contiguous(memory_format=torch.channels_last) \
            and not tensor.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last)
    if tensor.dim() == 5 and tensor.is_contiguous(memory_format=torch.channels_last_3d) \
            and not tensor.is_contiguous():
        return out.contiguous(memory_format=torch.channels_last_3d)
    return out.contiguous()


def _replace(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value, requires_grad=old.requires_grad))
    else:
        setattr(module, name, value)


def _prune_conv(conv: nn.modules.conv._ConvNd, in_keep: torch.Tensor, out_keep: torch.Tensor
                ) -> None:
    if bool(in_keep.all()) and bool(out_keep.all()):
        return
    out_index = torch.nonzero(out_keep).flatten()
    if is_depthwise_conv(conv):
        _replace(conv, "weight", _slice(conv.weight, 0, out_index))
        conv.groups = conv.in_channels = conv.out_channels = int(out_index.numel())
    else:
        per_group_in = in_keep.numel() // conv.groups
        positions = torch.nonzero(in_keep[:per_group_in]).flatten()
        weight = _slice(conv.weight, 0, out_index)
        _replace(conv, "weight", _slice(weight, 1, positions))
        conv.in_channels = int(positions.numel()) * conv.groups
        conv.out_channels = int(out_index.numel())
        assert conv.in_channels == int(in_keep.sum()), "grouped conv positions are tied"
    if conv.bias is not None:
        _replace(conv, "bias", _slice(conv.bias, 0, out_index))


def _prune_linear(linear: nn.Linear, in_keep: torch.Tensor, out_keep: torch.Tensor) -> None:
    if bool(in_keep.all()) and bool(out_keep.all()):
        return
    out_index = torch.nonzero(out_keep).flatten()
    in_index = torch.nonzero(in_keep).flatten()
    _replace(linear, "weight", _slice(_slice(linear.weight, 0, out_index), 1, in_index))
    if linear.bias is not None:
        _replace(linear, "bias", _slice(linear.bias, 0, out_index))
    linear.in_features, linear.out_features = int(in_index.numel()), int(out_index.numel())


def _prune_batchnorm(norm: nn.modules.batchnorm._BatchNorm, keep: torch.Tensor) -> None:
    if bool(keep.all()):
        return
    index = torch.nonzero(keep).flatten()
    for name in ("weight", "bias", "running_mean", "running_var"):
        if getattr(norm, name, None) is not None:
            _replace(norm, name, _slice(getattr(norm, name), 0, index))
    norm.num_features = int(index.numel())


def subnetwork(dense: nn.Module, keep: torch.Tensor, example: torch.Tensor) -> nn.Module:
    """A physically pruned copy of ``dense`` keeping ``keep`` (the dense net is untouched)."""
    gated = GatedModel(copy.deepcopy(dense).cpu(), example.cpu())
    gated.set_keep_mask(keep)
    return prune_physically(gated).eval()
