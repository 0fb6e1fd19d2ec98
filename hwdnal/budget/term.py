"""The architecture stage's latency term: ``w · predicted/budget`` added to the loss, with
``w`` adapted after every step. It pushes while the predicted latency is over the budget
and lets go while under, so the binarised architecture ends near the budget rather than far
below it (a fixed weight would push on regardless). The stage then ends on the best late
architecture under the aim, not on wherever the controller's last swing left it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from hwdnal.gating.model import GatedModel
from hwdnal.latency.predictor import LatencyModel
from hwdnal.loss_terms import GateLossTerm


@dataclass
class LatencyConstraint:
    """``predicted latency ≤ budget`` as a loss term whose weight is controlled each step.

    ``control="dual"``: dual ascent, the weight grows by ``rate`` per unit of excess and
    shrinks as slowly, so it overshoots once gates close in a rush. ``"switch"``: the weight
    is ``switch_weight`` while the network is over the aim and 0 below it, so the
    cross-entropy alone reopens the channels it misses as soon as the budget is met.

    "Over the aim" is judged on the architecture the gates stand for now (each gate open
    or closed, ``switch_on="mask"``) or on the soft prediction (``"soft"``). Gates that
    travel together cross zero within a few steps while δ is still small: the soft
    prediction lags the crossing, and a switch that waits for it lets the mask fall far
    below the budget (ResNet-20 at 30%: the mask at 62% of the budget).
    """

    model: LatencyModel
    budget_ms: float
    rate: float = 0.05
    control: str = "dual"
    switch_weight: float = 10.0
    #: aim a little under the budget: the device measurement is the judge, not the LUT
    aim: float = 0.97

    #: the gradient of the average cost per channel (``LatencyModel.secant_gradient``):
    #: a CPU's flat steps at full width would leave open gates without latency pressure
    secant_gradient: bool = True
    #: what the switch judges: "mask" (the open/closed gates' architecture) or "soft"
    switch_on: str = "mask"
    #: from this δ on, one step of s saturates a gate, and every step's architecture is a
    #: candidate: the stage ends on the one with the highest latency under the aim. The
    #: switch swings the mask from the aim to 10-15% under it within a step or two; ending
    #: on the last step's mask landed anywhere from 83% to 103% of the budget, run to run
    settle_delta: float = 1e3
    #: False: the stage ends on the last step's architecture (``--arch-ends-on last``)
    settle: bool = True
    #: the architecture of the last step's forward pass: its relative latency by the LUT and
    #: the gates' s then (tensors on the gates' device, nothing read back per step)
    _mask_relative: torch.Tensor | None = field(default=None, init=False, repr=False)
    _mask_s: torch.Tensor | None = field(default=None, init=False, repr=False)
    #: the best late architecture so far: its relative latency (-1 while there is none), s
    _best_relative: torch.Tensor | None = field(default=None, init=False, repr=False)
    _best_s: torch.Tensor | None = field(default=None, init=False, repr=False)

    def term(self) -> GateLossTerm:
        return GateLossTerm("latency", 0.0, self._relative_latency, after_step=self.ascend,
                            at_end=self.end_on_best, state=self.state,
                            load_state=self.load_state)

    def _relative_latency(self, gated: GatedModel) -> torch.Tensor:
        before = self.model.secant_gradient
        self.model.secant_gradient = self.secant_gradient
        try:
            late = self.settle and gated.gate.delta >= self.settle_delta
            if late or (self.control == "switch" and self.switch_on == "mask"):
                with torch.no_grad():  # on the device, nothing read back
                    binary = gated.gate.binary()
                    self._mask_relative = self.model.predict_gated(
                        gated, values=binary) / self.budget_ms
                    # a closed gate's s may sit just above a later, larger δ's threshold
                    self._mask_s = torch.where(binary, gated.gate.s,
                                               gated.gate.s.clamp_max(0.0)) if late else None
            return self.model.predict_gated(gated) / self.budget_ms
        finally:
            self.model.secant_gradient = before

    def ascend(self, term: GateLossTerm, relative: torch.Tensor) -> None:
        """One dual-ascent step on the value the training step computed, on the gates'
        device: no host read per step. In double precision, as a Python float would be."""
        relative = relative.detach().double()
        if self._mask_s is not None:
            self._remember(self._mask_relative, self._mask_s)
            self._mask_s = None
        if self.control == "switch":
            judged = relative if self._mask_relative is None else self._mask_relative.double()
            term.weight = self.switch_weight * (judged > self.aim).double()
            return
        step = self.rate * (relative - self.aim)
        term.weight = torch.clamp_min(torch.as_tensor(term.weight, dtype=torch.float64,
                                                      device=relative.device) + step, 0.0)

    def _remember(self, relative: torch.Tensor, s: torch.Tensor) -> None:
        """Keep ``s`` if its architecture is the highest under the aim so far (on the device)."""
        relative = relative.detach().to(torch.float64)
        if self._best_relative is None or self._best_s is None:
            self._best_relative = torch.full_like(relative, -1.0)
            self._best_s = s.detach().clone()
        self._best_relative = self._best_relative.to(relative.device)
        self._best_s = self._best_s.to(s.device)
        better = (relative <= self.aim) & (relative > self._best_relative)
        self._best_relative = torch.where(better, relative, self._best_relative)
        self._best_s = torch.where(better, s.detach(), self._best_s)

    def end_on_best(self, gated: GatedModel) -> str | None:
        """End the stage on the best late architecture under the aim (the gates' s set to
        what they were then); without one, the last step's architecture stands."""
        if self._best_relative is None or self._best_s is None:
            return None
        best = float(self._best_relative)
        if best < 0:
            return (f"no architecture after δ = {self.settle_delta:g} was under "
                    f"{self.aim:.0%} of the budget by the LUT: the last one stands")
        with torch.no_grad():
            last = float(self.model.predict_gated(gated, values=gated.gate.binary())
                         / self.budget_ms)
            gated.gate.s.copy_(self._best_s.to(gated.gate.s.device))
        return (f"the stage ends on its best late architecture: {best:.0%} of the budget by "
                f"the LUT (the last step's: {last:.0%})")

    def state(self) -> dict[str, Any]:
        if self._best_relative is None or self._best_s is None:
            return {}
        return {"best_relative": self._best_relative.detach().cpu(),
                "best_s": self._best_s.detach().cpu()}

    def load_state(self, state: dict[str, Any]) -> None:
        self._best_relative = state.get("best_relative")
        self._best_s = state.get("best_s")
