"""The fit by the LUT: learned gates turned into per-group channel counts whose predicted
latency is at a target. Per group it keeps the channels with the highest gate parameters s,
in steps of the target's channel multiple, removing where the latency saved per unit of
importance lost is largest and adding back (while it fits) where the importance regained per
unit of latency is largest."""

from __future__ import annotations

from collections.abc import Callable

import torch

from hwdnal.gating.alignment import aligned_group_counts
from hwdnal.gating.model import GatedModel
from hwdnal.latency.group_counts import GroupCountLatency
from hwdnal.latency.predictor import LatencyModel


def group_counts(gated: GatedModel, keep: torch.Tensor) -> list[int]:
    return [int(keep[g.start : g.stop].sum()) for g in gated.plan.groups]


def minimal_counts(gated: GatedModel, multiple: int) -> list[int]:
    """The smallest architecture allowed: one step (or the whole group, if smaller) each;
    in a supernet no candidate at all in a residual layer, and one step of the first
    candidate in a layer without a residual path."""
    groups = gated.plan.groups
    counts = [0 if k in gated.rule.optional else min(max(multiple, 1), group.size)
              for k, group in enumerate(groups)]
    for layer in gated.rule.orphaned(lambda g: counts[g] > 0):
        counts[layer[0]] = min(max(multiple, 1), groups[layer[0]].size)
    return counts


def _lowest(index: int, counts: list[int], gated: GatedModel, step: int) -> int:
    """The fewest channels group ``index`` may keep given the others' counts: one step, or
    0 where the candidate rule lets it close."""
    if gated.rule.may_close(index, lambda g: counts[g] > 0):
        return 0
    return min(step, gated.plan.groups[index].size)


def predicted_ms(gated: GatedModel, model: LatencyModel, keep: torch.Tensor) -> float:
    """Predicted latency of the architecture ``keep`` (the gates are left as they were).

    Computed where the gates are (``keep`` may be on the CPU: it is moved to them); one
    number is read back. :func:`hwdnal.budget.measure.fit_to_budget` calls it on a CPU
    copy of the gates.
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
    groups = gated.plan.groups
    counts = aligned_group_counts(gated, group_counts(gated, start), step)
    ranked = ranked_channels(gated)
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
                new_count = _lowest(index, counts, gated, step)
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
    return mask_from_counts(gated, ranked, counts)


def _latencies_of_counts(
    gated: GatedModel, model: LatencyModel, ranked: list[torch.Tensor]
) -> Callable[[list[list[int]]], list[float]]:
    """Predicted latencies of architectures given as kept counts per group (``ranked``
    order): batched for a LUT's model, one gated prediction each for any other predictor."""
    if isinstance(model, LatencyModel):
        batched = GroupCountLatency(gated, model, ranked)
        return lambda rows: batched.predict(torch.tensor(rows, dtype=torch.long)).tolist()
    return lambda rows: [
        predicted_ms(gated, model, mask_from_counts(gated, ranked, r)) for r in rows
    ]


def mask_from_counts(
    gated: GatedModel, ranked: list[torch.Tensor], counts: list[int]
) -> torch.Tensor:
    """The keep mask holding the first ``counts[g]`` channels of each group's ranking."""
    keep = torch.zeros(gated.plan.num_gates, dtype=torch.bool)
    for group, order, count in zip(gated.plan.groups, ranked, counts, strict=True):
        keep[group.start + order[:count]] = True
    return keep


def ranked_channels(gated: GatedModel) -> list[torch.Tensor]:
    """Each group's channels, most open gate first: the order the fit keeps them in."""
    scores = gated.gate.s.detach().cpu()
    return [torch.argsort(scores[g.start : g.stop], descending=True) for g in gated.plan.groups]
