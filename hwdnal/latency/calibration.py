"""Whole-network calibration and validation on random physically pruned sub-networks.

Per-layer sums miss what happens between layers (fusion, layout reorders, memory traffic,
per-run overheads), so we measure whole sub-networks on the target and fit
``measured ≈ scale · Σ layers + memory · Σ output elements + offset`` by least squares on
relative error. Validation uses fresh sub-networks from another seed and reports
|predicted − measured| / measured.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hwdnal.gating.alignment import aligned_count
from hwdnal.gating.model import GatedModel
from hwdnal.gating.prune import prune_physically


def random_keep_mask(
    gated: GatedModel, generator: torch.Generator, multiple: int = 1, rho: float | None = None
) -> torch.Tensor:
    """A random architecture: one overall width ρ ~ U(0.25, 1), each group near ρ, each kept
    count a multiple of ``multiple`` (see :mod:`hwdnal.gating.alignment`).

    Independent widths per group would make every sample's total latency alike (a sum of
    many independent terms); a shared ρ spreads the samples from small to dense, which is
    what a fit of scale and offset needs and the range a search moves through.

    In a supernet each candidate block (and in a CNN each removable residual branch,
    :mod:`hwdnal.gating.blocks`) is also dropped whole with probability 1 - ρ (a
    layer without a residual path keeping its first candidate if all were drawn), and the
    candidates' widths are drawn independently of ρ (log-uniform), so the calibration sees
    what a search makes: operations and layers gone, many narrow branches, and layer
    counts that vary apart from the summed table latency (the per-layer term's signal).
    """
    keep = torch.zeros(gated.plan.num_gates, dtype=torch.bool)
    if rho is None:
        rho = 0.25 + 0.75 * float(torch.rand((), generator=generator))
    optional = gated.rule.optional
    branches = {block.group for block in gated.blocks if block.is_branch}
    dropped = set()
    for k, group in enumerate(gated.plan.groups):
        ratio = rho * (0.75 + 0.5 * float(torch.rand((), generator=generator)))
        if k in optional and k not in branches:  # a supernet candidate's width: log-uniform
            # from one step to all, independently: searched supernets keep many narrow
            # candidates, which a shared ρ never draws (a CNN's residual branch keeps ρ)
            narrowest = min(1.0, max(multiple, 1) / group.size)
            ratio = narrowest ** float(torch.rand((), generator=generator))
        kept = aligned_count(round(ratio * group.size), group.size, multiple)
        chosen = torch.randperm(group.size, generator=generator)[:kept]
        if k in optional and float(torch.rand((), generator=generator)) > rho:
            dropped.add(k)
            continue
        keep[group.start + chosen] = True
    for layer in gated.rule.orphaned(lambda g: g not in dropped):  # keeps its first
        group = gated.plan.groups[layer[0]]
        kept = aligned_count(round(rho * group.size), group.size, multiple)
        keep[group.start : group.start + kept] = True
    return keep


def random_subnetworks(
    model: nn.Module, example_input: torch.Tensor, count: int, seed: int, multiple: int = 1,
    stratified: bool = False,
) -> list[nn.Module]:
    """``count`` random physically pruned copies of ``model`` (eval mode).

    ``stratified`` spreads the overall widths evenly over [0.25, 1] (one per stratum, random
    within it): a calibration fit must see both ends of the range, or it extrapolates to the
    smallest networks — which a handful of uniform draws often misses.
    """
    generator = torch.Generator().manual_seed(seed)
    networks = []
    for index in range(count):
        rho = None
        if stratified:
            rho = 0.25 + 0.75 * (index + float(torch.rand((), generator=generator))) / count
        gated = GatedModel(copy.deepcopy(model), example_input)
        gated.set_keep_mask(random_keep_mask(gated, generator, multiple, rho))
        networks.append(prune_physically(gated).eval())
    return networks


@dataclass(frozen=True)
class Fit:
    scale: float
    memory_ms_per_melem: float
    offset_ms: float
    #: per layer present: the fixed cost a layer measured alone carries and a whole network
    #: does not (negative), or one it adds (positive); fitted only when the samples' layer
    #: counts differ, i.e. for supernets, whose candidate blocks vanish whole
    per_layer_ms: float = 0.0

    def predict(self, raw_ms: float, activations: float, layers: float = 0.0) -> float:
        return (self.scale * raw_ms + self.memory_ms_per_melem * activations
                + self.per_layer_ms * layers + self.offset_ms)


#: fewer samples than this fit scale and offset only
MIN_SAMPLES_FOR_MEMORY = 6
#: the memory term must lower the leave-one-out error by this fraction to be kept
MEMORY_TERM_GAIN = 0.15


def fit_correction(
    raw_ms: Sequence[float], activations: Sequence[float], measured_ms: Sequence[float],
    layers: Sequence[float] | None = None, smallest_layer_ms: float = 0.0,
) -> Fit:
    """Coefficients minimising Σ ((scale·raw + memory·act + offset − measured) / measured)².

    Scale must come out positive and memory non-negative (more channels never predict less
    latency); otherwise the memory term is dropped, then the offset. Where the samples'
    ``layers`` (layers present) differ — a supernet's sub-networks lose whole candidate
    blocks — a per-layer term is fitted too, kept if it lowers the leave-one-out error and
    leaves every layer a positive cost (``scale·smallest_layer_ms + per_layer > 0``).
    """
    if layers is not None and len(layers) >= MIN_SAMPLES_FOR_MEMORY and \
            np.ptp(np.asarray(layers, dtype=np.float64)) > 0:
        with_layers = _fit_with_layers(raw_ms, measured_ms, layers, smallest_layer_ms)
        if with_layers is not None:
            return with_layers
    raw = np.asarray(raw_ms, dtype=np.float64)
    act = np.asarray(activations, dtype=np.float64)
    measured = np.asarray(measured_ms, dtype=np.float64)
    if raw.size == 0:
        return Fit(1.0, 0.0, 0.0)
    if raw.size == 1 or np.ptp(raw) < 1e-9 * max(raw.max(), 1e-12):
        return Fit(1.0, 0.0, float(np.mean(measured - raw)))
    weights = 1.0 / measured
    design = np.stack([raw * weights, weights], axis=1)
    if raw.size >= MIN_SAMPLES_FOR_MEMORY:
        full = np.stack([raw * weights, act * weights, weights], axis=1)
        (scale, memory, offset), *_ = np.linalg.lstsq(full, np.ones_like(raw), rcond=None)
        valid = math.isfinite(scale) and scale > 0 and math.isfinite(memory) and memory >= 0
        if valid and _loo_error(full) < (1 - MEMORY_TERM_GAIN) * _loo_error(design):
            return Fit(float(scale), float(memory), float(offset))
    (scale, offset), *_ = np.linalg.lstsq(design, np.ones_like(raw), rcond=None)
    if not (math.isfinite(scale) and scale > 0):  # degenerate samples: a pure ratio
        return Fit(float(np.median(measured / raw)), 0.0, 0.0)
    return Fit(float(scale), 0.0, float(offset))


def _fit_with_layers(raw_ms: Sequence[float], measured_ms: Sequence[float],
                     layers: Sequence[float], smallest_layer_ms: float) -> Fit | None:
    raw = np.asarray(raw_ms, dtype=np.float64)
    count = np.asarray(layers, dtype=np.float64)
    weights = 1.0 / np.asarray(measured_ms, dtype=np.float64)
    plain = np.stack([raw * weights, weights], axis=1)
    full = np.stack([raw * weights, count * weights, weights], axis=1)
    (scale, per_layer, offset), *_ = np.linalg.lstsq(full, np.ones_like(raw), rcond=None)
    valid = (math.isfinite(scale) and scale > 0 and math.isfinite(per_layer)
             and scale * smallest_layer_ms + per_layer > 0)
    if valid and _loo_error(full) < (1 - MEMORY_TERM_GAIN) * _loo_error(plain):
        return Fit(float(scale), 0.0, float(offset), float(per_layer))
    return None


def _loo_error(design: np.ndarray) -> float:
    """Leave-one-out RMS relative error of a weighted least-squares fit (rows: samples)."""
    errors = []
    for i in range(design.shape[0]):
        rest = np.arange(design.shape[0]) != i
        coef, *_ = np.linalg.lstsq(design[rest], np.ones(int(rest.sum())), rcond=None)
        errors.append(float(design[i] @ coef) - 1.0)  # rows are features / measured
    return float(np.sqrt(np.mean(np.square(errors))))


def relative_errors(predicted: Sequence[float], measured: Sequence[float]) -> np.ndarray:
    p, m = np.asarray(predicted, dtype=np.float64), np.asarray(measured, dtype=np.float64)
    return np.abs(p - m) / m


def error_summary(predicted: Sequence[float], measured: Sequence[float]) -> dict[str, float]:
    errors = relative_errors(predicted, measured)
    return {
        "median_rel_error": float(np.median(errors)),
        "p95_rel_error": float(np.percentile(errors, 95)),
        "max_rel_error": float(np.max(errors)),
        "mean_signed_error": float(np.mean((np.asarray(predicted) - np.asarray(measured))
                                           / np.asarray(measured))),
    }


Progress = Callable[[int, int, str], None]
