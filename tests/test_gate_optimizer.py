"""The gates' shared-moment Adam keeps how much harder one gate is pushed than another
(Adam moves every gate by about the lr), and keeps the step's scale at about the lr."""

from __future__ import annotations

import torch

from hwdnal.gate_optimizer import SharedMomentAdam


def _steps(optimizer_class, **options) -> torch.Tensor:
    s = torch.nn.Parameter(torch.zeros(2))
    optimizer = optimizer_class([s], lr=0.01, **options)
    for _ in range(20):
        optimizer.zero_grad()
        (s * torch.tensor([1.0, 10.0])).sum().backward()  # gate 2 pushed ten times harder
        optimizer.step()
    return -s.detach()


def test_a_gate_pushed_ten_times_harder_moves_ten_times_further() -> None:
    shared = _steps(SharedMomentAdam)
    adam = _steps(torch.optim.Adam, betas=(0.0, 0.999))
    assert torch.allclose(adam[1] / adam[0], torch.tensor(1.0), atol=1e-3)
    assert torch.allclose(shared[1] / shared[0], torch.tensor(10.0), rtol=1e-4)
    # the root mean square step is the lr: sqrt((1 + 100) / 2) normalises the pair
    rms = (shared.square().mean() / 20**2).sqrt()
    assert torch.allclose(rms, torch.tensor(0.01), rtol=1e-3)


def test_its_state_survives_a_checkpoint() -> None:
    s = torch.nn.Parameter(torch.zeros(3))
    optimizer = SharedMomentAdam([s], lr=0.1, beta1=0.5)
    for _ in range(3):
        optimizer.zero_grad()
        s.sum().backward()
        optimizer.step()
    twin = torch.nn.Parameter(s.detach().clone())
    restored = SharedMomentAdam([twin], lr=0.1, beta1=0.5)
    restored.load_state_dict(optimizer.state_dict())
    for param, opt in ((s, optimizer), (twin, restored)):
        opt.zero_grad()
        param.sum().backward()
        opt.step()
    assert torch.equal(s.detach(), twin.detach())
