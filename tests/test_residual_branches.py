"""Depth where width runs out: a ResNet block whose internal channels all close becomes the
identity and is removed, so the search can trade depth for width."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from hwdnal.budget.fit import minimal_counts
from hwdnal.complexity import params_and_macs, predicted_params
from hwdnal.gating.gate import GateMode
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import prune_physically
from hwdnal.models import create_model

EXAMPLE = torch.randn(2, 1, 28, 28)
REMOVABLE = ["layer1.0", "layer1.1", "layer1.2", "layer2.1", "layer2.2", "layer3.1", "layer3.2"]


def _resnet20() -> nn.Module:
    """Random weights and BatchNorm statistics: a shift left behind would show."""
    torch.manual_seed(0)
    model = create_model("resnet20", 10, 1)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.5, 0.5)
    return model.eval()


def test_every_block_with_an_identity_shortcut_is_removable() -> None:
    gated = GatedModel(_resnet20(), EXAMPLE)
    branches = [block for block in gated.blocks if block.is_branch]
    assert [block.layer for block in branches] == REMOVABLE
    for block in branches:  # the group each one closes is its conv1's output channels
        conv1 = gated.plan.layers[f"{block.layer}.conv1"]
        group = gated.plan.groups[block.group]
        assert conv1.out_gate_index.min() == group.start and group.size == 16 * 2 ** (
            int(block.layer[5]) - 1)


def test_a_block_with_its_internal_gates_closed_is_pruned_away_exactly() -> None:
    dense = _resnet20()
    gated = GatedModel(copy.deepcopy(dense), EXAMPLE)
    block = next(b for b in gated.blocks if b.layer == "layer2.1")
    keep = torch.ones(gated.plan.num_gates, dtype=torch.bool)
    group = gated.plan.groups[block.group]
    keep[group.start : group.stop] = False
    keep[2] = False  # and one stem channel, so the residual stream is pruned too
    gated.set_keep_mask(keep)
    gated.set_mode(GateMode.HARD)
    gated.eval()
    x = torch.randn(4, 1, 28, 28)
    with torch.no_grad():
        hard = gated(x)
    assert [b.layer for b in gated.dropped_blocks()] == ["layer2.1"]
    expected_params = predicted_params(gated)

    pruned = prune_physically(gated).eval()
    assert isinstance(pruned.layer2[1], nn.Identity)
    assert isinstance(pruned.layer2[0], nn.Module) and not isinstance(pruned.layer2[0],
                                                                       nn.Identity)
    with torch.no_grad():
        assert torch.allclose(pruned(x), hard, atol=1e-4)
    params, _ = params_and_macs(pruned, EXAMPLE)
    assert params == expected_params
    block_params = sum(p.numel() for p in dense.layer2[1].parameters())
    stem_channel = 9 + 2  # conv1's 3x3 filter of one input channel, bn1's weight and bias
    assert params < sum(p.numel() for p in dense.parameters()) - block_params - stem_channel


def test_the_smallest_reachable_resnet_keeps_only_the_blocks_that_change_shape() -> None:
    dense = _resnet20()
    gated = GatedModel(copy.deepcopy(dense), EXAMPLE)
    counts = minimal_counts(gated, 8)
    branch_groups = {b.group for b in gated.blocks if b.is_branch}
    assert all(counts[k] == 0 for k in branch_groups)
    assert all(counts[k] == 8 for k in range(len(counts)) if k not in branch_groups)
    keep = torch.zeros(gated.plan.num_gates, dtype=torch.bool)
    for k, group in enumerate(gated.plan.groups):
        keep[group.start : group.start + counts[k]] = True
    gated.set_keep_mask(keep)
    pruned = prune_physically(gated).eval()
    blocks = [f"{stage}.{i}" for stage in ("layer1", "layer2", "layer3") for i in range(3)]
    gone = [name for name in blocks if isinstance(pruned.get_submodule(name), nn.Identity)]
    assert gone == REMOVABLE
    with torch.no_grad():
        assert pruned(EXAMPLE).shape == (2, 10)


def test_the_lut_costs_a_removed_block_nothing_before_and_after_pruning(tmp_path) -> None:
    from latency_helpers import synthetic_lut

    from hwdnal.budget.fit import predicted_ms
    from hwdnal.latency.predictor import LatencyModel

    dense = _resnet20()
    model = LatencyModel(synthetic_lut(dense, (1, 1, 28, 28), tmp_path))
    gated = GatedModel(copy.deepcopy(dense), EXAMPLE)
    keep = torch.ones(gated.plan.num_gates, dtype=torch.bool)
    whole = predicted_ms(gated, model, keep)
    for name in ("layer1.1", "layer3.2"):
        group = gated.plan.groups[next(b.group for b in gated.blocks if b.layer == name)]
        keep[group.start : group.stop] = False
    without = predicted_ms(gated, model, keep)
    gated.set_keep_mask(keep)
    pruned = prune_physically(gated).eval()
    # the gates' float32 against the plain network's float64
    assert model.predict_module(pruned) == pytest.approx(without, rel=1e-6)
    assert model.predict_module(dense) == pytest.approx(whole, rel=1e-6)
    assert without < whole
