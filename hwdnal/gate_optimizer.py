"""Adam with one second moment shared by all gates: the gates' step keeps its scale from the
stage's length, and keeps how much harder one gate is pushed than another.

Adam normalises each gate by its own gradient history, so once the latency term outweighs
the cross-entropy everywhere every gate moves by the same lr per step: they cross zero
together and the mask falls from the dense network to far under the budget in a few steps
(docs/arch-stage-findings.md). Plain SGD keeps the differences but not the scale (with open
gates nothing closed). Sharing the second moment does both: a channel that costs more per
unit of what the cross-entropy says it is worth closes first.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch


class SharedMomentAdam(torch.optim.Optimizer):
    """``p -= lr · m / (sqrt(v̂) + eps)`` with ``m`` each gate's (β1) average gradient and
    ``v`` the average over steps of the mean squared gradient of all gates together."""

    def __init__(self, params: Iterable[torch.Tensor], lr: float, beta1: float = 0.0,
                 beta2: float = 0.999, eps: float = 1e-12) -> None:
        if lr <= 0:
            raise ValueError(f"lr must be positive, got {lr}")
        super().__init__(params, {"lr": lr, "beta1": beta1, "beta2": beta2, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            square = sum(p.grad.square().sum() for p in params) / sum(p.numel() for p in params)
            shared = self.state[params[0]]  # the group's shared moment lives with its first
            count = int(shared.get("step", 0)) + 1  # parameter: saved and moved with it
            shared["step"] = count
            v = shared.get("shared_v", torch.zeros_like(square))
            v = group["beta2"] * v + (1 - group["beta2"]) * square
            shared["shared_v"] = v
            scale = (v / (1 - group["beta2"] ** count)).sqrt() + group["eps"]
            for p in params:
                state = self.state[p]
                m = state.get("m")
                m = p.grad.clone() if m is None else m.mul_(group["beta1"]).add_(
                    p.grad, alpha=1 - group["beta1"])
                state["m"] = m
                correction = 1 - group["beta1"] ** count if group["beta1"] > 0 else 1.0
                p.sub_(group["lr"] * m / (correction * scale))
        return loss


__all__ = ["SharedMomentAdam"]
