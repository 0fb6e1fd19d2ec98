"""Physical pruning removes exactly what the hard gates switched off, for any model."""

from __future__ import annotations

import pytest
import torch
from conftest import calibrate_batchnorm
from toy_models import ConcatGroupedNet, RotatedSplitNet, SharedConvNet, ShuffleNet

from hwdnal.complexity import predicted_params
from hwdnal.errors import UserError
from hwdnal.gating.gate import GateMode
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import prune_physically
from hwdnal.models import create_model

CASES = [
    ("resnet20", 32),
    ("resnet56", 32),
    ("vgg16_bn_cifar", 32),
    ("mobilenet_v2_cifar", 32),
    ("resnet18", 64),
    ("resnet50", 64),
    ("mobilenet_v2", 64),
    ("vgg16_bn", 64),
    ("shufflenet_v2_x0_5", 32),
    ("shufflenet_v2_x1_0", 32),
    ("concat+grouped (test-only model)", 16),
    ("shuffle (test-only model)", 16),
    ("shared conv (test-only model)", 16),
]


def _build(name: str) -> torch.nn.Module:
    if name.startswith("concat"):
        return ConcatGroupedNet(num_classes=10, in_channels=3)
    if name.startswith("shared"):
        return SharedConvNet(num_classes=10, in_channels=3)
    if name.startswith("shuffle "):
        return ShuffleNet(num_classes=10, in_channels=3)
    return create_model(name, num_classes=10, in_channels=3)


@pytest.mark.parametrize(("name", "size"), CASES, ids=[c[0].split()[0] for c in CASES])
def test_pruned_network_computes_what_the_hard_gated_network_computes(name: str, size: int):
    torch.manual_seed(0)
    model = _build(name)
    calibrate_batchnorm(model, (4, 3, size, size))
    x = torch.randn(2, 3, size, size)
    dense_params = sum(p.numel() for p in model.parameters())

    gated = GatedModel(model, x)
    keep = torch.rand(gated.plan.num_gates) < 0.6
    gated.set_keep_mask(keep)
    gated.set_mode(GateMode.HARD)
    with torch.no_grad():
        gated_out = gated(x)
    expected_params = predicted_params(gated)

    pruned = prune_physically(gated)
    with torch.no_grad():
        pruned_out = pruned(x)

    assert gated_out.abs().max() > 1e-3, "outputs must carry signal for the comparison to mean much"
    assert (gated_out - pruned_out).abs().max().item() <= 1e-4
    actual_params = sum(p.numel() for p in pruned.parameters())
    assert actual_params == expected_params
    assert actual_params < dense_params


def test_every_group_keeps_at_least_one_channel_but_a_removable_residual_branch():
    model = create_model("resnet20", 10, 3)
    calibrate_batchnorm(model, (4, 3, 32, 32))
    gated = GatedModel(model, torch.randn(1, 3, 32, 32))
    gated.set_keep_mask(torch.zeros(gated.plan.num_gates, dtype=torch.bool))
    branches = {gated.plan.groups[b.group].name for b in gated.blocks if b.is_branch}
    assert len(branches) == 7  # the blocks with an identity shortcut (tests/test_residual_...)
    assert all(group["kept"] == (0 if group["name"] in branches else 1)
               for group in gated.kept_per_group())
    pruned = prune_physically(gated)
    assert pruned(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_pruned_weights_keep_channels_last():
    torch.manual_seed(0)
    model = ShuffleNet()
    calibrate_batchnorm(model, (4, 3, 16, 16))
    model = model.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    gated = GatedModel(model, x)
    gated.set_keep_mask(torch.rand(gated.plan.num_gates) < 0.6)
    gated.set_mode(GateMode.HARD)
    with torch.no_grad():
        gated_out = gated(x)
    pruned = prune_physically(gated)
    convs = [m for m in pruned.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    with torch.no_grad():
        assert (pruned(x) - gated_out).abs().max().item() <= 1e-4


def test_a_model_torch_pruning_cannot_map_is_refused_naming_the_layer():
    with pytest.raises(UserError, match=r"cannot group the channels at .*'stem\.\d'"):
        GatedModel(RotatedSplitNet(), torch.randn(1, 3, 8, 8))
