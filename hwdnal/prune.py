"""Physical pruning: remove every channel whose gate is 0, leaving a smaller plain network.

Each dependency group is pruned through torch-pruning, which slices every coupled tensor
exactly. Grouped convolutions are the one case it leaves to the caller: when the channels
of one convolution group come from several dependency groups, the intermediate states are
not group-uniform and torch-pruning slices the wrong input positions (or fails). While
pruning, each grouped convolution therefore stands as a dense placeholder of the same
in/out shape; its real weight is rebuilt from the original and the final masks at the end.
"""

from __future__ import annotations

import torch
from torch import nn

from hwdnal.gated import GatedModel
from hwdnal.graph import _is_grouped_conv


def prune_physically(gated: GatedModel) -> nn.Module:
    """Detach the gates and remove the channels whose gate is off; returns the model."""
    keep = torch.cat([gated.keep_mask().cpu(), torch.ones(1, dtype=torch.bool)])
    plan = gated.plan
    grouped = [layer for layer in plan.layers.values() if _is_grouped_conv(layer.module)]
    originals = [(layer.module.weight.detach().clone(), layer.module.groups) for layer in grouped]
    for layer in grouped:
        conv = layer.module
        conv.groups = 1
        conv.weight = nn.Parameter(conv.weight.new_empty(
            conv.out_channels, conv.in_channels, *conv.kernel_size))
    model = gated.detach_gates()
    for group in plan.groups:
        for (root, handler), gate_index in zip(group.roots, group.root_gate_index, strict=True):
            removed = torch.nonzero(~keep[gate_index]).flatten().tolist()
            if removed:
                plan.graph.get_pruning_group(root, handler, removed).prune()
    for layer, (original, groups) in zip(grouped, originals, strict=True):
        _rebuild_grouped_conv(
            layer.module, original, groups, keep[layer.in_gate_index], keep[layer.out_gate_index]
        )
    return model


def _rebuild_grouped_conv(
    conv: nn.modules.conv._ConvNd,
    original: torch.Tensor,
    groups: int,
    in_keep: torch.Tensor,
    out_keep: torch.Tensor,
) -> None:
    per_group_in = in_keep.numel() // groups
    positions = torch.nonzero(in_keep[:per_group_in]).flatten()
    weight = original[torch.nonzero(out_keep).flatten()][:, positions]
    conv.weight = nn.Parameter(weight.contiguous())
    conv.groups = groups
    conv.in_channels = int(in_keep.sum())
    conv.out_channels = int(out_keep.sum())
