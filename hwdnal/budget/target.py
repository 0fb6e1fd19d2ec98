"""What one search knows about its target: the device, the LUT (loaded, checked against a
measurement, or profiled), the dense and smallest reachable latency, and the budget in ms."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hwdnal.budget.reach import reachable_latency
from hwdnal.budget.spec import Budget
from hwdnal.devices import fingerprint_here
from hwdnal.devices.measurer import Measurer
from hwdnal.errors import UserError
from hwdnal.gating.blocks import removable_branches
from hwdnal.latency.predictor import LatencyModel
from hwdnal.latency.reality import DEFAULT_TOLERANCE, RealityCheck
from hwdnal.targets import Target


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
        if self.measurer is not None:
            return self.measurer.fingerprint()
        return fingerprint_here(self.target)

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
    from hwdnal.latency.pipeline import default_lut_path, input_shape_for, profile_model
    from hwdnal.latency.reality import check_reused_lut, sibling_path

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
