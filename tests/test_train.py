"""The training loop: what it computes, and that it never waits for the device per step."""

from __future__ import annotations

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

from hwdnal.data import load_data
from hwdnal.models import create_model
from hwdnal.train import TrainSettings, train_epoch


class _HostReads(TorchDispatchMode):
    """Counts reads of a tensor's value by the host (.item(), float(), bool(), ...)."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _reads_for(steps: int) -> int:
    data = load_data("synthetic", input_size=16, train_subset=16 * steps)
    torch.manual_seed(0)
    model = create_model("resnet20", data.num_classes, data.in_channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with _HostReads() as reads:
        stats = train_epoch(model, data, optimizer, 16, seed=0)
    assert stats.steps_done == steps
    return reads.count


def test_an_epoch_reads_the_device_a_fixed_number_of_times_whatever_its_length():
    """Loss and accuracy accumulate on the device: on a GPU, Python never waits per step."""
    assert _reads_for(2) == _reads_for(6)


def test_a_nan_loss_is_reported_at_the_end_of_the_epoch_without_a_checkpoint_of_it():
    from hwdnal.train import NonFiniteLoss

    data = load_data("synthetic", input_size=16, train_subset=64)
    model = create_model("resnet20", data.num_classes, data.in_channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e30)
    with pytest.raises(NonFiniteLoss, match="--lr"):
        train_epoch(model, data, optimizer, 16, seed=0)


class _AutocastSeen(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.conv2d:
            self.dtypes.add(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                            else torch.float32)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("amp", "expected"), [(None, torch.float32),
                                               (torch.bfloat16, torch.bfloat16)])
def test_mixed_precision_runs_the_forward_pass_under_autocast_only_when_asked(amp, expected):
    data = load_data("synthetic", input_size=16, train_subset=32)
    model = create_model("resnet20", data.num_classes, data.in_channels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with _AutocastSeen() as seen:
        stats = train_epoch(model, data, optimizer, 16, seed=0,
                            settings=TrainSettings(amp=amp))
    assert seen.dtypes == {expected}
    assert all(p.dtype == torch.float32 for p in model.parameters()), "weights stay fp32"
    assert stats.loss > 0
