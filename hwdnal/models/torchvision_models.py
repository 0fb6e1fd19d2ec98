"""Every torchvision classification CNN, by name, adapted to the data's channels and classes.

Weights are never downloaded (this tool must run offline): models start from random
initialisation, or from a checkpoint the user passes with ``--weights``.
"""

from __future__ import annotations

from torch import nn

from hwdnal.errors import UserError


def available() -> list[str]:
    from torchvision import models

    return sorted(models.list_models(module=models))


def create(name: str, num_classes: int, in_channels: int) -> nn.Module:
    from torchvision import models

    if name not in available():
        raise KeyError(name)
    model = models.get_model(name, weights=None, num_classes=num_classes)
    if in_channels != 3:
        _adapt_input_channels(model, in_channels, name)
    return model


def _adapt_input_channels(model: nn.Module, in_channels: int, name: str) -> None:
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Conv2d) and child.in_channels == 3:
                setattr(parent, child_name, nn.Conv2d(
                    in_channels, child.out_channels, child.kernel_size, child.stride,
                    child.padding, child.dilation, child.groups, child.bias is not None,
                ))
                return
    raise UserError(f"cannot adapt {name} to {in_channels}-channel input: no 3-channel "
                    "convolution found; use data with 3 channels")
