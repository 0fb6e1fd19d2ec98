"""What kind of layer a module is, and its channel counts: one answer for the gating core,
the latency model and the complexity counts (torch keeps the base classes private)."""

from __future__ import annotations

from torch import nn

ConvNd = nn.modules.conv._ConvNd
BatchNormNd = nn.modules.batchnorm._BatchNorm
#: the layers whose channels a gate removes
PARAMETRIC = (ConvNd, nn.Linear, BatchNormNd)


def is_depthwise_conv(module: nn.Module) -> bool:
    """One filter per channel: its input and output channels are pruned together."""
    return (
        isinstance(module, ConvNd)
        and module.groups > 1
        and module.groups == module.in_channels == module.out_channels
    )


def is_grouped_conv(module: nn.Module) -> bool:
    """Grouped but not depthwise: every group must keep the same positions."""
    return (
        isinstance(module, ConvNd)
        and module.groups > 1
        and not (module.groups == module.in_channels == module.out_channels)
    )


def channel_count(module: nn.Module, side: str) -> int:
    """Channels on the ``"in"`` or ``"out"`` side of a conv, linear or BatchNorm layer."""
    if isinstance(module, ConvNd):
        return module.in_channels if side == "in" else module.out_channels
    if isinstance(module, nn.Linear):
        return module.in_features if side == "in" else module.out_features
    if isinstance(module, BatchNormNd):
        return module.num_features
    raise TypeError(f"no channel count for {type(module).__name__}")


def channels_of(module: nn.Module) -> tuple[int, int]:
    """(in, out) channels of a conv or linear module as it is now (pruned or not)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return module.in_channels, module.out_channels
