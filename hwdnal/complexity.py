"""Parameter and multiply-accumulate counts, measured on a network or predicted from gates."""

from __future__ import annotations

import torch
from torch import nn

from hwdnal.gating.model import GatedModel
from hwdnal.layers import is_depthwise_conv


def params_and_macs(model: nn.Module, example_input: torch.Tensor) -> tuple[int, int]:
    """Exact counts of a plain network (MACs from torch-pruning's op counter)."""
    import torch_pruning as tp

    was_training = model.training
    model.eval()
    macs, params = tp.utils.count_ops_and_params(model, example_input)
    model.train(was_training)
    return int(params), int(macs)


def predicted_params(gated: GatedModel) -> int:
    """What the network will count once its gated-off channels (and a supernet's dropped
    candidate blocks, BatchNorms included) are removed."""
    counts = {c.name: c for c in gated.channel_counts(hard=True)}
    keep = torch.cat([gated.keep_mask().cpu(), torch.ones(1, dtype=torch.bool)])
    dropped = gated.dropped_blocks()
    accounted: set[int] = {id(p) for block in dropped for p in block.module.parameters()}
    removed = {id(m) for block in dropped for m in block.module.modules()}
    total = 0
    for name, layer in gated.plan.layers.items():
        module = layer.module
        if id(module) in removed:
            continue
        c_in, c_out = int(counts[name].in_channels), int(counts[name].out_channels)
        if isinstance(module, nn.modules.conv._ConvNd):
            groups = c_in if is_depthwise_conv(module) else module.groups
            total += c_out * (c_in // groups) * int(torch.tensor(module.kernel_size).prod())
        else:
            total += c_out * c_in
        if module.bias is not None:
            total += c_out
        accounted.update(id(p) for p in module.parameters(recurse=False))
    for norm in gated.plan.norms.values():
        if norm.module.affine and id(norm.module) not in removed:
            total += 2 * int(keep[norm.out_gate_index].sum())
            accounted.update(id(p) for p in norm.module.parameters(recurse=False))
    total += sum(p.numel() for p in gated.model.parameters() if id(p) not in accounted)
    return total

