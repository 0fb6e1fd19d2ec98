"""The fit by the device: the LUT's fit measured on the target and corrected, a bounded
number of rounds, and the final interleaved measurement the verdict is judged on."""

from __future__ import annotations

import copy
import hashlib
import statistics
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hwdnal.budget.fit import (
    fit_to_latency,
    predicted_ms,
)
from hwdnal.budget.reach import measure_together
from hwdnal.budget.target import TargetLatency
from hwdnal.devices.measurer import Measurement
from hwdnal.errors import UserError
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import subnetwork
from hwdnal.latency.cache import MeasurementCache

#: separate device calls behind every judged latency: the fit keeps a round only when each
#: of them is within the budget, the verdict takes their median. On a shared CPU one call's
#: median moves by tens of percent within seconds (docs/supernets.md), and a network with
#: many weights or branches moves more than its reference: one call is a coin toss.
MEASUREMENT_CALLS = 3


@dataclass
class FitRound:
    round: int
    target_ms: float
    predicted_ms: float
    #: every call's median (one call for a round over the budget on its first)
    calls_ms: tuple[float, ...]
    #: the budget in each call: a relative budget follows the dense network measured in it
    call_budgets_ms: tuple[float, ...]

    @property
    def _worst(self) -> int:
        shares = [m / b for m, b in zip(self.calls_ms, self.call_budgets_ms, strict=True)]
        return shares.index(max(shares))

    @property
    def measured_ms(self) -> float:
        """The worst call's latency: what the round is judged by."""
        return self.calls_ms[self._worst]

    @property
    def budget_ms(self) -> float:
        """The budget of the worst call."""
        return self.call_budgets_ms[self._worst]

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "target_ms": round(self.target_ms, 4),
                "predicted_ms": round(self.predicted_ms, 4),
                "measured_ms": round(self.measured_ms, 4), "budget_ms": round(self.budget_ms, 4),
                "calls_ms": [round(c, 4) for c in self.calls_ms],
                "call_budgets_ms": [round(b, 4) for b in self.call_budgets_ms]}

    def describe(self) -> str:
        """One line for the user: every call against its budget, and the verdict."""
        measured = " / ".join(f"{c:.3f}" for c in self.calls_ms)
        budgets = self.call_budgets_ms
        if len({f"{b:.3f}" for b in budgets}) == 1:  # as printed
            against = f"budget {budgets[0]:.3f} ms"
        else:  # a relative budget: each call's own, from the dense network measured in it
            against = "budgets " + " / ".join(f"{b:.3f}" for b in budgets) + " ms"
        within = self.measured_ms <= self.budget_ms
        verdict = "within the budget" if within else "over the budget"
        if len(self.calls_ms) > 1:
            verdict = "every call " + verdict if within else f"call {len(self.calls_ms)} {verdict}"
        return (f"fit round {self.round}: predicted {self.predicted_ms:.3f} ms, measured "
                f"{measured} ms, {against}: {verdict}")


def fit_to_budget(
    gated: GatedModel,
    dense: nn.Module,
    latency: TargetLatency,
    example: torch.Tensor,
    rounds: int = 6,
    cache: MeasurementCache | None = None,
    calls: int = MEASUREMENT_CALLS,
) -> tuple[torch.Tensor, list[FitRound]]:
    """Measure on the device until the architecture lands within [90%, 100%] of the budget.

    Each round fits the gates to a predicted-latency target, prunes a copy of ``dense``,
    measures it on the target (interleaved with the dense network, against which a relative
    budget is judged) and sets the next target to that network's prediction scaled by how
    far its measurement was from 96% of the budget. A round within the budget is measured
    in ``calls`` separate device calls and judged by its worst, so a device that is noisy
    leaves itself a margin of its own noise.
    Keeps the architecture that came closest to the budget from below; none after
    ``rounds`` is a clear error (the run stays resumable at this stage). Every call's pair of
    measurements goes to ``cache`` as it is taken, so a fit cut short (a lost agent, Ctrl-C)
    resumes without measuring its finished calls again: the fit is deterministic, so a
    resumed fit proposes the same architectures.
    """
    assert latency.latency_model is not None and latency.budget_ms is not None
    gated = gates_on_cpu(gated, dense, example)
    start = gated.keep_mask().cpu()
    target_ms = latency.budget_ms * 0.97
    history: list[FitRound] = []
    best: tuple[torch.Tensor, float] | None = None  # mask and its measured share of budget
    for number in range(1, rounds + 1):
        keep = fit_to_latency(gated, latency.latency_model, target_ms, latency.channel_step,
                              start)
        predicted = predicted_ms(gated, latency.latency_model, keep)
        key = "fit | " + hashlib.sha256(keep.numpy().tobytes()).hexdigest()[:16]
        candidate: nn.Module | None = None
        judged: list[tuple[float, float]] = []  # (measured, budget) of every call
        for call in range(calls):
            suffix = "" if call == 0 else f" | call {call + 1}"  # round one's keys as before
            dense_key, pruned_key = f"{key} | dense{suffix}", f"{key} | pruned{suffix}"
            if cache is not None and dense_key in cache and pruned_key in cache:
                dense_now, measured_now = cache.get(dense_key), cache.get(pruned_key)
            else:
                if candidate is None:
                    candidate = subnetwork(dense, keep, example)
                dense_now, measured_now = measure_together(
                    latency.device(), [dense, candidate], latency.input_shape)
                if cache is not None:
                    cache.put(dense_key, dense_now)
                    cache.put(pruned_key, measured_now)
                    cache.flush()
            judged.append((measured_now.median_ms, latency.budget_against(dense_now.median_ms)))
            if measured_now.median_ms > judged[-1][1]:
                break  # over the budget: no need to confirm
        fitted = FitRound(number, target_ms, predicted, tuple(m for m, _ in judged),
                          tuple(b for _, b in judged))
        history.append(fitted)
        share = fitted.measured_ms / fitted.budget_ms
        if share <= 1.0 and (best is None or share > best[1]):
            best = (keep, share)
        if best is not None and best[1] >= 0.9:
            break
        # rescale what was predicted for the measured network, not the target: the fit
        # leaves up to a channel step of slack below its target, so a target lowered by a
        # few percent can return the very network just measured over the budget
        target_ms = fitted.predicted_ms * 0.96 / share
    if best is None:
        tried = ", ".join(f"{r.measured_ms:.3f}/{r.budget_ms:.3f}" for r in history)
        raise UserError(
            f"no architecture measured within the budget after {rounds} rounds (measured/"
            f"budget in ms: {tried}): the device's timings may be noisy; re-run the same "
            "command to try again from this stage, or give a larger --budget"
        )
    return best[0], history


def gates_on_cpu(gated: GatedModel, dense: nn.Module, example: torch.Tensor) -> GatedModel:
    """The gates to fit with: ``gated`` itself on the CPU, else a CPU twin holding its gates.

    A fit predicts the latency of many candidate architectures, each a few small
    tensor operations and one number read back: on an accelerator every candidate would
    wait for the device, on the CPU none does. The twin gates a CPU copy of ``dense`` (the
    network ``gated`` was built on), so it has the same channel plan; should it not (some
    caller's own dense network), the fit runs on ``gated`` where it is, only slower.
    """
    if gated.gate.s.device.type == "cpu":
        return gated
    twin = GatedModel(copy.deepcopy(dense).cpu(), example.cpu())
    if [(g.name, g.start, g.stop) for g in twin.plan.groups] != [
            (g.name, g.start, g.stop) for g in gated.plan.groups]:
        return gated
    with torch.no_grad():
        twin.gate.s.copy_(gated.gate.s.detach().cpu())
    twin.set_delta(gated.gate.delta)
    twin.set_mode(gated.mode)
    return twin


def final_latency(
    dense: nn.Module, pruned: nn.Module, latency: TargetLatency, calls: int = MEASUREMENT_CALLS
) -> tuple[Measurement, Measurement, list[tuple[float, float]]]:
    """Dense and pruned networks measured interleaved on the target (a fair ratio) in
    ``calls`` separate device calls: each network's median and p90 are the medians of its
    calls' (one slow call is an outlier, not the verdict); the calls' (dense, pruned)
    medians come third."""
    measured = [measure_together(latency.device(), [dense, pruned], latency.input_shape)
                for _ in range(calls)]
    return (_median_of_calls([d for d, _ in measured]),
            _median_of_calls([p for _, p in measured]),
            [(d.median_ms, p.median_ms) for d, p in measured])


def _median_of_calls(calls: list[Measurement]) -> Measurement:
    return Measurement(median_ms=statistics.median(c.median_ms for c in calls),
                       p90_ms=statistics.median(c.p90_ms for c in calls),
                       samples=sum(c.samples for c in calls))
