"""Which channels share a gate: residual additions, concatenations, grouped convolutions."""

from __future__ import annotations

import torch
from toy_models import ConcatGroupedNet

from hwdnal.gated import GatedModel
from hwdnal.models import create_model


def test_residual_channels_of_a_stage_share_one_gate_group():
    model = create_model("resnet20", 10, 3)
    gated = GatedModel(model, torch.randn(1, 3, 32, 32))
    plan = gated.plan
    stage1 = [plan.layers[n].out_gate_index for n in
              ("conv1", "layer1.0.conv2", "layer1.1.conv2", "layer1.2.conv2")]
    assert all(torch.equal(stage1[0], other) for other in stage1[1:])
    # 3 residual streams + one inner group per block (9 blocks)
    assert len(plan.groups) == 12


def test_class_logits_and_model_input_are_never_gated():
    model = create_model("resnet20", 10, 3)
    plan = GatedModel(model, torch.randn(1, 3, 32, 32)).plan
    assert (plan.layers["fc"].out_gate_index == plan.num_gates).all()
    assert (plan.layers["conv1"].in_gate_index == plan.num_gates).all()


def test_grouped_convolution_keeps_the_same_positions_in_every_group():
    model = ConcatGroupedNet()
    plan = GatedModel(model, torch.randn(1, 3, 16, 16)).plan
    index = plan.layers["grouped.0"].in_gate_index.view(4, 8)  # 32 inputs in 4 groups
    assert all(torch.equal(index[0], index[k]) for k in range(1, 4))
    out_index = plan.layers["grouped.0"].out_gate_index.view(4, 6)
    assert all(torch.equal(out_index[0], out_index[k]) for k in range(1, 4))


def test_gates_sit_after_batchnorm_not_before_it():
    model = create_model("resnet20", 10, 3)
    plan = GatedModel(model, torch.randn(1, 3, 32, 32)).plan
    assert "layer1.0.bn1" in plan.gate_sites
    assert "layer1.0.conv1" not in plan.gate_sites
