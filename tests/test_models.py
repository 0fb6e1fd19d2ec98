"""The model registry: built-in CIFAR models, torchvision by name, a user's factory."""

from __future__ import annotations

import pytest
import torch

from hwdnal.errors import UserError
from hwdnal.models import create_model


@pytest.mark.parametrize("name", ["resnet20", "resnet56", "vgg16_bn_cifar", "mobilenet_v2_cifar"])
def test_cifar_models_take_grey_28x28_images(name: str):
    model = create_model(name, num_classes=10, in_channels=1).eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_torchvision_models_adapt_to_channels_and_classes():
    model = create_model("resnet18", num_classes=7, in_channels=1).eval()
    assert model(torch.randn(1, 1, 64, 64)).shape == (1, 7)


def test_user_factory_by_module_path():
    model = create_model("toy_models:concat_grouped_net", num_classes=4, in_channels=3).eval()
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 4)


@pytest.mark.parametrize(("spec", "message"), [
    ("no_such_module_xyz:factory", "cannot import"),
    ("toy_models:missing", "no callable"),
    ("toy_models:ConcatGroupedNet.forward", "no callable"),
    ("not-a-model", "unknown model"),
])
def test_bad_model_names_are_clear_errors(spec: str, message: str):
    with pytest.raises(UserError, match=message):
        create_model(spec)


def test_factory_returning_no_module_is_refused(tmp_path, monkeypatch):
    (tmp_path / "bad_factory.py").write_text("def make(**kw):\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"not a torch\.nn\.Module"):
        create_model("bad_factory:make")


def test_user_factory_found_in_the_current_folder(tmp_path, monkeypatch):
    import sys

    (tmp_path / "nets_here.py").write_text(
        "from torch import nn\n\n\ndef build(num_classes, in_channels):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(4, num_classes))\n"
    )
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.chdir(tmp_path)
    model = create_model("nets_here:build", num_classes=3, in_channels=2).eval()
    assert model(torch.randn(1, 2, 8, 8)).shape == (1, 3)


def test_factory_that_fails_is_a_clear_error(tmp_path, monkeypatch):
    (tmp_path / "failing_factory.py").write_text(
        "def make(**kw):\n    raise ValueError('no such width\\nsecond line')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UserError, match=r"failed to build the network \(ValueError: no such "
                                        r"width\)$"):
        create_model("failing_factory:make")
