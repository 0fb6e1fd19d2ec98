"""The architecture stage's latency term: ``w · predicted/budget`` added to the loss, with
``w`` adapted by dual ascent after every step. It grows while the predicted latency is over
the budget and shrinks (to 0 at least) while under, so the binarised architecture ends near
the budget rather than far below it (a fixed weight would push on regardless)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
    #: the mask's relative latency at the last step (a tensor on the gates' device)
    _mask_relative: torch.Tensor | None = field(default=None, init=False, repr=False)

    def term(self) -> GateLossTerm:
        return GateLossTerm("latency", 0.0, self._relative_latency, after_step=self.ascend)

    def _relative_latency(self, gated: GatedModel) -> torch.Tensor:
        before = self.model.secant_gradient
        self.model.secant_gradient = self.secant_gradient
        try:
            if self.control == "switch" and self.switch_on == "mask":
                with torch.no_grad():  # on the device, nothing read back
                    self._mask_relative = self.model.predict_gated(
                        gated, values=gated.gate.binary()) / self.budget_ms
            return self.model.predict_gated(gated) / self.budget_ms
        finally:
            self.model.secant_gradient = before

    def ascend(self, term: GateLossTerm, relative: torch.Tensor) -> None:
        """One dual-ascent step on the value the training step computed, on the gates'
        device: no host read per step. In double precision, as a Python float would be."""
        relative = relative.detach().double()
        if self.control == "switch":
            judged = relative if self._mask_relative is None else self._mask_relative.double()
            term.weight = self.switch_weight * (judged > self.aim).double()
            return
        step = self.rate * (relative - self.aim)
        term.weight = torch.clamp_min(torch.as_tensor(term.weight, dtype=torch.float64,
                                                      device=relative.device) + step, 0.0)
