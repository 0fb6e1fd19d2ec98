"""Which channels share a gate: residual additions, concatenations, grouped convolutions."""

from __future__ import annotations

import torch
from toy_models import ConcatGroupedNet, SharedConvNet, ShuffleNet

from hwdnal.gating.gate import GateMode
from hwdnal.gating.model import GatedModel
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


def test_channels_crossing_a_shuffle_are_tied_by_shuffle_group():
    """torchvision's shuffle (2 groups): input channels j and C/2 + j share one gate."""
    model = create_model("shufflenet_v2_x0_5", 10, 3)
    plan = GatedModel(model, torch.randn(1, 3, 32, 32)).plan
    assert plan.num_gates > 0
    # stage2's first block: branch1 gives concat channels 0..23, branch2 24..47
    first = plan.norms["stage2.0.branch1.3"].out_gate_index
    second = plan.norms["stage2.0.branch2.6"].out_gate_index
    assert torch.equal(first, second)


def test_chunked_halves_keep_the_same_positions():
    plan = GatedModel(ShuffleNet(), torch.randn(1, 3, 16, 16)).plan
    index = plan.layers["head.0"].in_gate_index
    assert bool((index < plan.num_gates).any())
    shuffled_back = index.view(12, 2).t()  # undo the 2-group shuffle: [kept half, branch]
    assert torch.equal(shuffled_back[0], shuffled_back[1])


def test_a_conv_feeding_its_batchnorm_and_another_layer_is_gated_once_on_each_path():
    torch.manual_seed(0)
    model = SharedConvNet().eval()
    gated = GatedModel(model, torch.randn(1, 3, 8, 8))
    assert gated.plan.ungated_inputs == {"bn": "conv"}
    gated.set_mode(GateMode.SOFT)
    with torch.no_grad():
        gated.gate.s.fill_(-0.5)  # every gate at sigmoid(-0.5), far from 0 and 1
    seen = {}
    model.bn.register_forward_hook(lambda m, i, o: seen.update(bn_in=i[0], bn_out=o))
    model.side.register_forward_hook(lambda m, i, o: seen.update(side_in=i[0]))
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        gated(x)
        raw = torch.nn.functional.conv2d(x, model.conv.weight, padding=1)
    value = torch.sigmoid(torch.tensor(-0.5))
    assert torch.allclose(seen["bn_in"], raw)  # the BatchNorm reads the ungated conv
    assert torch.allclose(seen["side_in"], raw * value)  # the other layer the gated one
