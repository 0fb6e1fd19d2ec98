"""Predicted latency of architectures given as kept channels per gate group, many at once.

The fit to a budget (:func:`hwdnal.budget.fit.fit_to_latency`) asks, at every move, what each
group's next step would cost: hundreds of candidate architectures per move, hundreds of
moves on a supernet. Building each keep mask and running the gated predictor on it took
3 ms a candidate (a 21-layer ProxylessNAS supernet's fit spent 12 minutes there). Here a
group keeps the channels ranked first, so a layer's in and out counts follow from the
groups' counts alone: a count is the number of the layer's channels whose rank in their
group is below that group's count (one ``searchsorted`` per layer and group). All
candidates of a move are then one batched interpolation. The value is that of
:meth:`LatencyModel.predict_gated` with hard gates on the same keep mask.
"""

from __future__ import annotations

import torch

from hwdnal.latency.predictor import LatencyModel


class GroupCountLatency:
    """``predict(counts)`` for ``[T, groups]`` kept counts, channels kept in ``ranked`` order.

    ``gated`` is a :class:`hwdnal.gating.model.GatedModel`; ``ranked[k]`` orders group ``k``'s
    channels (positions within the group) from first kept to last.
    """

    def __init__(self, gated, model: LatencyModel, ranked: list[torch.Tensor]) -> None:
        cpu = torch.device("cpu")
        self.model = model
        plan = gated.plan
        num_gates = plan.num_gates
        group_of = torch.empty(num_gates, dtype=torch.long)
        rank_of = torch.empty(num_gates, dtype=torch.long)
        for k, (group, order) in enumerate(zip(plan.groups, ranked, strict=True)):
            gates = group.start + order.cpu()
            group_of[gates] = k
            rank_of[gates] = torch.arange(group.size)
        rows = model.positions_in(tuple(plan.layers), cpu)  # LUT order -> gated layer
        in_index, out_index = (side[rows] for side in gated.layer_gate_indices(cpu))
        groups = len(plan.groups)
        self._fixed_in, self._in_terms = _terms(in_index, num_gates, groups, group_of, rank_of)
        self._fixed_out, self._out_terms = _terms(out_index, num_gates, groups, group_of,
                                                  rank_of)
        self._melem = model.tables(cpu).melem_per_channel

    def channels(self, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``[T, L]`` in and out channels of the LUT's layers (LUT order)."""
        counts = torch.as_tensor(counts, dtype=torch.long)
        counts = counts.reshape(-1, counts.shape[-1])
        return (_count(self._fixed_in, self._in_terms, counts),
                _count(self._fixed_out, self._out_terms, counts))

    def predict(self, counts: torch.Tensor) -> torch.Tensor:
        """Calibrated predicted latency (ms, float64) of each row of ``counts`` ``[T, G]``."""
        cin, cout = (side.T for side in self.channels(counts))  # [L, T]
        present = ((cin > 0) & (cout > 0)).to(torch.float64)
        latency = self.model.layer_latencies(cin, cout, present).sum(0)
        activations = (cout * self._melem.unsqueeze(1) * present).sum(0)
        return self.model.calibrate(latency, activations, present.sum(0))


def _terms(
    index: torch.Tensor, num_gates: int, groups: int, group_of: torch.Tensor,
    rank_of: torch.Tensor,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """A side's channels per layer: ``fixed`` (channels no gate removes) and, per (layer,
    group) pair it draws from, the sorted ranks of those channels (padded past any count)."""
    fixed = (index == num_gates).sum(1).to(torch.float64)
    gated = index < num_gates
    layer_of = torch.arange(index.shape[0]).unsqueeze(1).expand_as(index)[gated]
    gates = index[gated]
    groups = max(groups, 1)
    pairs, which = torch.unique(layer_of * groups + group_of[gates], return_inverse=True)
    pair_layer, pair_group = pairs // groups, pairs % groups
    ranks = rank_of[gates]
    order = torch.argsort(which * (num_gates + 1) + ranks)
    which, ranks = which[order], ranks[order]
    sizes = torch.bincount(which, minlength=len(pairs))
    width = int(sizes.max()) if len(pairs) else 0
    padded = torch.full((len(pairs), width), num_gates + 1, dtype=torch.long)
    starts = torch.cumsum(sizes, 0) - sizes
    padded[which, torch.arange(len(which)) - starts[which]] = ranks
    return fixed, (pair_layer, pair_group, padded)


def _count(fixed: torch.Tensor, terms: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
           counts: torch.Tensor) -> torch.Tensor:
    pair_layer, pair_group, padded = terms
    total = fixed.unsqueeze(0).repeat(counts.shape[0], 1)
    if len(pair_layer):
        wanted = counts[:, pair_group].T.contiguous()  # [pairs, T]
        kept = torch.searchsorted(padded, wanted).T.to(torch.float64)  # ranks below count
        total.index_add_(1, pair_layer, kept)
    return total
