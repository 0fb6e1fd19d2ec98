"""A small registry that turns a model name into a network for the data at hand.

Names resolve in order: the CIFAR-style models defined here, torchvision's classification
models, then ``package.module:factory`` for a user's own model. Every factory is called with
keyword arguments ``num_classes`` and ``in_channels`` (a user factory may ignore them).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable

from torch import nn

from hwdnal.errors import UserError, first_line
from hwdnal.models import (
    cifar_mobilenetv2,
    cifar_resnet,
    cifar_vgg,
    proxyless_supernet,
    torchvision_models,
)

CIFAR_MODELS: dict[str, Callable[..., nn.Module]] = {
    "resnet20": cifar_resnet.resnet20,
    "resnet32": cifar_resnet.resnet32,
    "resnet44": cifar_resnet.resnet44,
    "resnet56": cifar_resnet.resnet56,
    "resnet110": cifar_resnet.resnet110,
    "vgg16_bn_cifar": cifar_vgg.vgg16_bn_cifar,
    "mobilenet_v2_cifar": cifar_mobilenetv2.mobilenet_v2_cifar,
    "proxyless_supernet_cifar": proxyless_supernet.proxyless_supernet_cifar,
    "proxyless_supernet": proxyless_supernet.proxyless_supernet,
}


def model_names() -> list[str]:
    return sorted(CIFAR_MODELS) + torchvision_models.available()


SUPERNETS = ("proxyless_supernet_cifar", "proxyless_supernet")


def create_model(name: str, num_classes: int = 10, in_channels: int = 3,
                 candidates: str | None = None) -> nn.Module:
    """Build ``name`` (see module doc) with random weights; ``candidates`` ("3x3,5x6"):
    a supernet's kernel x expansion blocks per searchable layer."""
    if candidates is not None:
        return CIFAR_MODELS[name](num_classes=num_classes, in_channels=in_channels,
                                  candidates=parse_candidates_for(name, candidates))
    if name in CIFAR_MODELS:
        return CIFAR_MODELS[name](num_classes=num_classes, in_channels=in_channels)
    if ":" in name:
        return _user_model(name, num_classes, in_channels)
    try:
        return torchvision_models.create(name, num_classes, in_channels)
    except KeyError:
        raise UserError(
            f"unknown model '{name}': use one of {', '.join(sorted(CIFAR_MODELS))}, a "
            "torchvision classification model (e.g. resnet18, mobilenet_v2, vgg16_bn) or "
            "package.module:factory for your own"
        ) from None


def parse_candidates_for(name: str, candidates: str) -> tuple[tuple[int, int], ...]:
    """``--candidates`` checked against ``--model`` (one line on what is wrong)."""
    if name not in SUPERNETS:
        raise UserError(f"--candidates applies to the supernets ({', '.join(SUPERNETS)}), "
                        f"not to --model {name}: leave it out")
    return proxyless_supernet.parse_candidates(candidates)


def _user_model(spec: str, num_classes: int, in_channels: int) -> nn.Module:
    module_name, _, factory_name = spec.partition(":")
    here = os.getcwd()
    if here not in sys.path:  # a module in the current folder, as uvicorn and gunicorn find it
        sys.path.insert(0, here)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:
        raise UserError(
            f"cannot import '{module_name}' for --model {spec}: {error}; make sure the module "
            "is in the current folder or on PYTHONPATH (or pip install it)"
        ) from error
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise UserError(f"'{module_name}' has no callable '{factory_name}' for --model {spec}")
    try:
        try:
            model = factory(num_classes=num_classes, in_channels=in_channels)
        except TypeError:
            model = factory()
    except Exception as error:
        raise UserError(
            f"--model {spec} failed to build the network ({type(error).__name__}: "
            f"{first_line(error)})"
        ) from error
    if not isinstance(model, nn.Module):
        raise UserError(
            f"--model {spec} returned {type(model).__name__}, not a torch.nn.Module; the "
            "factory must return the network"
        )
    return model
