"""Landing a search on a latency budget: the adaptive latency term and the fit to budget.

Two pieces, used by the search engine:

- :class:`LatencyConstraint` adds ``w · predicted/budget`` to the architecture stage's loss
  and adapts ``w`` by dual ascent after every step: it grows while the predicted latency is
  over the budget and shrinks (to 0 at least) while under, so the binarised architecture
  ends near the budget rather than far below it (a fixed weight would push on regardless).
- :func:`fit_to_latency` turns the learned gates into an architecture whose predicted
  latency is at a given target: per gate group it keeps the channels with the highest gate
  parameters s, in steps of the target's preferred channel multiple, removing where the
  latency saved per unit of importance lost is largest, and adding back (while it fits)
  where the importance regained per unit of latency is largest. The engine calls it, then
  measures the result on the device and corrects the target, a bounded number of rounds.
"""

from __future__ import annotations

import copy
import hashlib
import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdnal.blocks import removable_branches
from hwdnal.budget import Budget
from hwdnal.devices.measurer import Measurement, Measurer, target_settings
from hwdnal.errors import UserError
from hwdnal.gated import GatedModel
from hwdnal.latency.alignment import aligned_group_counts
from hwdnal.latency.cache import MeasurementCache
from hwdnal.latency.group_counts import GroupCountLatency
from hwdnal.latency.pipeline import DEFAULT_TOLERANCE, RealityCheck
from hwdnal.latency.predictor import LatencyModel
from hwdnal.loss_terms import GateLossTerm
from hwdnal.prune import prune_physically
from hwdnal.targets import Target


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


def group_counts(gated: GatedModel, keep: torch.Tensor) -> list[int]:
    return [int(keep[g.start : g.stop].sum()) for g in gated.plan.groups]


def minimal_counts(gated: GatedModel, multiple: int) -> list[int]:
    """The smallest architecture allowed: one step (or the whole group, if smaller) each;
    in a supernet no candidate at all in a residual layer, and one step of the first
    candidate in a layer without a residual path."""
    siblings = gated.sibling_groups()
    counts = []
    for k, group in enumerate(gated.plan.groups):
        one_step = min(max(multiple, 1), group.size)
        if k in siblings:
            counts.append(one_step if siblings[k] and siblings[k][0] == k else 0)
        else:
            counts.append(one_step)
    return counts


def _lowest(index: int, counts: list[int], groups: list, siblings: dict[int, list[int]],
            step: int) -> int:
    """The fewest channels group ``index`` may keep given the others' counts: one step;
    0 for a supernet's candidate block unless it is the last one alive in a layer without
    a residual path."""
    one_step = min(step, groups[index].size)
    if index not in siblings:
        return one_step
    if siblings[index] and not any(counts[g] > 0 for g in siblings[index] if g != index):
        return one_step
    return 0


def predicted_ms(gated: GatedModel, model: LatencyModel, keep: torch.Tensor) -> float:
    """Predicted latency of the architecture ``keep`` (the gates are left as they were).

    Computed where the gates are (``keep`` may be on the CPU: it is moved to them); one
    number is read back. :func:`fit_to_budget` calls it on a CPU copy of the gates.
    """
    saved_s, saved_delta = gated.gate.s.detach().clone(), gated.gate.delta
    try:
        with torch.no_grad():
            gated.set_keep_mask(keep)
            return float(model.predict_gated(gated, hard=True))
    finally:
        with torch.no_grad():
            gated.gate.s.copy_(saved_s)
        gated.set_delta(saved_delta)


def fit_to_latency(
    gated: GatedModel,
    model: LatencyModel,
    target_ms: float,
    multiple: int,
    start: torch.Tensor,
) -> torch.Tensor:
    """The keep mask nearest ``start`` whose predicted latency is at most ``target_ms``.

    Each move weighs one step of every group; all of a move's candidate architectures are
    predicted in one batch (:class:`GroupCountLatency`) when ``model`` is a LUT's model.
    """
    scores = gated.gate.s.detach().cpu().clone()
    importance = torch.sigmoid(scores * 4).double()  # s ranks channels; squash so no single
    step = max(multiple, 1)                          # one dominates
    siblings = gated.sibling_groups()
    groups = gated.plan.groups
    counts = aligned_group_counts(gated, group_counts(gated, start), step)
    ranked = _ranked(gated)
    # importance of group k's first n channels (in keeping order): worth[k][n]
    worth = [torch.cat([torch.zeros(1, dtype=torch.float64),
                        torch.cumsum(importance[g.start + order], 0)]).tolist()
             for g, order in zip(groups, ranked, strict=True)]
    latencies = _latencies_of_counts(gated, model, ranked)

    def best_move(moves: list[tuple[int, int]],
                  ratio_of: Callable[[int, int, float], float | None]
                  ) -> tuple[int, int, float] | None:
        """The move with the highest ratio (the first one on a tie) and its latency."""
        if not moves:
            return None
        trials = []
        for index, new_count in moves:
            trial = counts.copy()
            trial[index] = new_count
            trials.append(trial)
        best, best_ratio = None, -1.0
        for (index, new_count), latency in zip(moves, latencies(trials), strict=True):
            ratio = ratio_of(index, new_count, latency)
            if ratio is not None and ratio > best_ratio:
                best, best_ratio = (index, new_count, latency), ratio
        return best

    def saved_per_worth_lost(index: int, new_count: int, latency: float) -> float:
        lost = worth[index][counts[index]] - worth[index][new_count]
        return (current - latency) / (1e-6 + lost)

    def worth_regained_per_latency(index: int, new_count: int, latency: float) -> float | None:
        if latency > target_ms:
            return None
        regained = worth[index][new_count] - worth[index][counts[index]]
        return regained / max(latency - current, 1e-6)

    current = latencies([counts])[0]
    while current > target_ms:  # trim: most latency saved per importance lost
        # a supernet far above the target: a move removes a quarter of a group (in channel
        # steps), so that its tens of thousands of channels are trimmed in tens of moves
        # (CNNs keep single steps: their fits land in a round or two as they are)
        far = gated.has_supernet_candidates and current > 1.25 * target_ms
        moves = []
        for index in range(len(groups)):
            chunk = max(step, step * (counts[index] // 4 // step)) if far else step
            new_count = counts[index] - chunk
            if new_count < min(step, groups[index].size):
                new_count = _lowest(index, counts, groups, siblings, step)
            if new_count < counts[index]:
                moves.append((index, new_count))
        chosen = best_move(moves, saved_per_worth_lost)
        if chosen is None:
            break  # the smallest allowed architecture: the caller checks feasibility
        counts[chosen[0]], current = chosen[1], chosen[2]
    while True:  # grow back while it fits: most importance regained per latency spent
        moves = [(index, min(counts[index] + step, group.size))
                 for index, group in enumerate(groups) if counts[index] < group.size]
        chosen = best_move(moves, worth_regained_per_latency)
        if chosen is None:
            break
        counts[chosen[0]], current = chosen[1], chosen[2]
    return _mask(gated, ranked, counts)


def _latencies_of_counts(
    gated: GatedModel, model: LatencyModel, ranked: list[torch.Tensor]
) -> Callable[[list[list[int]]], list[float]]:
    """Predicted latencies of architectures given as kept counts per group (``ranked``
    order): batched for a LUT's model, one gated prediction each for any other predictor."""
    if isinstance(model, LatencyModel):
        batched = GroupCountLatency(gated, model, ranked)
        return lambda rows: batched.predict(torch.tensor(rows, dtype=torch.long)).tolist()
    return lambda rows: [predicted_ms(gated, model, _mask(gated, ranked, r)) for r in rows]


def _mask(gated: GatedModel, ranked: list[torch.Tensor], counts: list[int]) -> torch.Tensor:
    keep = torch.zeros(gated.plan.num_gates, dtype=torch.bool)
    for group, order, count in zip(gated.plan.groups, ranked, counts, strict=True):
        keep[group.start + order[:count]] = True
    return keep


def subnetwork(dense: nn.Module, keep: torch.Tensor, example: torch.Tensor) -> nn.Module:
    """A physically pruned copy of ``dense`` keeping ``keep`` (the dense net is untouched)."""
    gated = GatedModel(copy.deepcopy(dense).cpu(), example.cpu())
    gated.set_keep_mask(keep)
    return prune_physically(gated).eval()


# -- the engine's view: one object holding what the search knows about its target ---------
@dataclass
class TargetLatency:
    """The target, its device, its LUT model, the dense latency and the budget, for one
    search."""

    target: Target
    #: the device that measures; None for a search that measures nothing
    measurer: Measurer | None
    input_shape: tuple[int, ...]
    channel_step: int
    dense_ms: float | None
    latency_model: LatencyModel | None = None
    lut_path: str | None = None
    budget_ms: float | None = None
    smallest_ms: float | None = None
    budget: Budget | None = None
    #: a reused LUT's prediction for the dense network against the device (None: not checked)
    lut_check: RealityCheck | None = None

    def device(self) -> Measurer:
        assert self.measurer is not None, "this search measures nothing"
        return self.measurer

    def fingerprint(self) -> dict[str, Any]:
        return (self.measurer or self.target).fingerprint()

    def budget_against(self, dense_ms: float) -> float:
        """The budget in ms given a dense latency measured alongside: a relative budget is a
        share of it; an absolute one is the user's figure as it stands.

        Scaling an absolute budget by the dense network's drift since the search began was
        tried and dropped: on this shared CPU the dense supernet measured +10% while its
        pruned network measured +65% in the same call, so the dense network's drift is no
        guide to the pruned one's. :meth:`drift` is reported beside the verdict instead.
        """
        assert self.budget is not None and self.budget_ms is not None
        return self.budget.resolve(dense_ms) if self.budget.relative else self.budget_ms

    def drift(self, dense_ms: float) -> float:
        """How much slower (> 1) the device runs now than at the search's first measurement,
        judged by the dense network measured alongside; 1 where there is nothing to judge."""
        if not self.dense_ms or not dense_ms or dense_ms <= 0:
            return 1.0
        return dense_ms / self.dense_ms

    def facts(self) -> dict[str, Any]:
        """What the run records (and reuses on resume rather than measuring again)."""
        facts: dict[str, Any] = {"dense_ms": self.dense_ms, "budget_ms": self.budget_ms,
                                 "smallest_ms": self.smallest_ms, "lut": self.lut_path}
        if self.lut_check is not None:
            facts["lut_check"] = self.lut_check.to_dict()
            if self.lut_check.action != "confirmed" and self.latency_model is not None:
                facts["lut_calibration"] = dict(self.latency_model.lut.calibration.__dict__)
        return facts


Reporter = Callable[[int, int, str], None]


def prepare_target_latency(
    target: Target,
    measurer: Measurer | None,
    model: nn.Module,
    model_name: str,
    example: torch.Tensor,
    budget: Budget | None,
    lut_path: str | None,
    force_lut: bool,
    channel_step: int | None,
    known: dict[str, Any] | None,
    report: Reporter | None = None,
    measure: bool = True,
    lut_tolerance: float = DEFAULT_TOLERANCE,
    note: Callable[[str], None] | None = None,
) -> TargetLatency:
    """Load or profile the LUT, measure the dense network, resolve and check the budget.

    ``model`` only lends its architecture: latency does not depend on the weights. With
    ``known`` (a resumed run) nothing is measured again. A LUT loaded rather than profiled
    now meets the dense network's measurement (:func:`check_reused_lut`): beyond
    ``lut_tolerance`` it is recalibrated or re-profiled, the loaded file left as it was;
    ``note`` receives the one line that says which.
    """
    from hwdnal.latency.lut import Calibration, Lut, load_lut
    from hwdnal.latency.pipeline import (
        check_reused_lut,
        default_lut_path,
        input_shape_for,
        profile_model,
        sibling_path,
    )

    input_shape = input_shape_for(target.batch, example.shape[1], tuple(example.shape[2:]))
    step = target.profile.preferred_channel_step if channel_step is None else channel_step
    model = copy.deepcopy(model).cpu().eval()
    result = TargetLatency(target, measurer, input_shape, step, None, budget=budget)
    given: Lut | None = None
    if known and known.get("lut") and Path(known["lut"]).is_file():
        lut_path = known["lut"]  # the LUT this run used (a corrected one, maybe)
    if lut_path:  # a damaged or foreign file is named before anything is measured
        given = load_lut(lut_path, result.device(), force=force_lut)
    if known:
        result.dense_ms, result.budget_ms = known["dense_ms"], known["budget_ms"]
        result.smallest_ms = known["smallest_ms"]
    elif measure or budget is not None:
        _measure_dense_and_smallest(result, model, example)  # an impossible budget stops here
    if budget is not None or lut_path:
        reused = True
        if given is not None:
            lut = given
        else:
            path = default_lut_path(model_name, target.name, input_shape)
            lut = None
            # a LUT an earlier run corrected beside the default one comes first
            for candidate in (sibling_path(path, "reprofiled"),
                              sibling_path(path, "recalibrated"), path):
                if lut is None and candidate.exists():
                    try:
                        lut = load_lut(candidate, result.device(), force=force_lut)
                        path = candidate
                    except UserError:
                        lut = None  # measured elsewhere, or damaged: this cache is ours to redo
            if lut is None:
                lut = profile_model(result.device(), model, model_name, tuple(input_shape[2:]),
                                    input_shape[1], out=path, progress=report).lut
                reused = False
            lut_path = str(path)
        if known:
            if known.get("lut_calibration"):  # the correction this run made, kept on resume
                lut.calibration = Calibration(**known["lut_calibration"])
        elif reused and result.dense_ms:
            lut, result.lut_check = check_reused_lut(
                result.device(), lut, lut_path, model, model_name, input_shape,
                result.dense_ms, lut_tolerance, progress=report)
            lut_path = result.lut_check.saved_to or lut_path
            if note is not None:
                note(result.lut_check.line())
        result.latency_model, result.lut_path = LatencyModel(lut), lut_path
    return result


def reachable_latency(
    measurer: Measurer, model: nn.Module, example: torch.Tensor, channel_step: int
) -> tuple[float, float]:
    """The dense network's and the smallest reachable network's measured medians (ms),
    interleaved in one call: how much of a small network's time is per-op overhead depends
    on the device, so which fractional budgets can be met is known only by measuring."""
    model = copy.deepcopy(model).cpu().eval()
    example = example.cpu()
    gated = GatedModel(copy.deepcopy(model), example)
    counts = minimal_counts(gated, channel_step)
    smallest = subnetwork(model, _mask(gated, _ranked(gated), counts), example)
    input_shape = (measurer.target.batch, *example.shape[1:])
    dense_measured, smallest_measured = _measure_together(measurer, [model, smallest],
                                                          input_shape)
    return dense_measured.median_ms, smallest_measured.median_ms


def _measure_dense_and_smallest(
    result: TargetLatency, model: nn.Module, example: torch.Tensor
) -> None:
    """Dense and smallest allowed network, interleaved; refuses a budget below the smallest."""
    result.dense_ms, result.smallest_ms = reachable_latency(result.device(), model, example,
                                                            result.channel_step)
    if result.budget is None:
        return
    result.budget_ms = result.budget.resolve(result.dense_ms)
    if result.smallest_ms > result.budget_ms:
        raise UserError(
            f"budget {result.budget_ms:.3f} ms ({result.budget.text}) is below the smallest "
            f"reachable latency: {result.smallest_ms:.3f} ms on target '{result.target.name}' "
            f"(every group at {result.channel_step} channel(s){_blocks_gone(model)}; the dense "
            "network measures "
            f"{result.dense_ms:.3f} ms): raise --budget to at least {result.smallest_ms:.3f}ms"
        )


def _blocks_gone(model: nn.Module) -> str:
    """What the smallest network assumed beyond channels: residual blocks removed whole."""
    branches = len(removable_branches(model))
    return f" and its {branches} removable residual blocks gone" if branches else ""


def _ranked(gated: GatedModel) -> list[torch.Tensor]:
    scores = gated.gate.s.detach().cpu()
    return [torch.argsort(scores[g.start : g.stop], descending=True) for g in gated.plan.groups]


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
    gated = _gates_on_cpu(gated, dense, example)
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
                dense_now, measured_now = _measure_together(
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


def _gates_on_cpu(gated: GatedModel, dense: nn.Module, example: torch.Tensor) -> GatedModel:
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
    measured = [_measure_together(latency.device(), [dense, pruned], latency.input_shape)
                for _ in range(calls)]
    return (_median_of_calls([d for d, _ in measured]),
            _median_of_calls([p for _, p in measured]),
            [(d.median_ms, p.median_ms) for d, p in measured])


def _median_of_calls(calls: list[Measurement]) -> Measurement:
    return Measurement(median_ms=statistics.median(c.median_ms for c in calls),
                       p90_ms=statistics.median(c.p90_ms for c in calls),
                       samples=sum(c.samples for c in calls))


def _measure_together(
    measurer: Measurer, networks: list[nn.Module], input_shape: tuple[int, ...]
) -> list[Measurement]:
    """Interleaved measurement after a discarded warm-up pass (cold caches, thread pools
    and clock ramps inflate whatever is measured first in a process)."""
    return measurer.measure(
        [(copy.deepcopy(net).cpu().eval(), input_shape) for net in networks],
        target_settings(measurer.target, pre_seconds=0.2),
    )
