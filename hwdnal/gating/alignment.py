"""Channel counts the hardware likes: multiples of the target's preferred channel step.

Measured on this x86 CPU with ONNX Runtime 1.32 (one 3x3 conv, 32x32, 1 thread): 12 or 16
input channels run in ~115 µs, 13 to 15 in 150–175 µs — kernels that block channels by 4/8
fall back to a slower path otherwise; GPUs step at tile sizes the same way. The LUT grid is
measured at aligned counts, so architectures are compared (and should be produced) with
every group's kept count rounded to a multiple of ``preferred_channel_step``.
"""

from __future__ import annotations

import torch


def aligned_count(kept: int, size: int, multiple: int) -> int:
    """``kept`` rounded to the nearest multiple of ``multiple`` within [multiple, size]."""
    if multiple <= 1 or size <= multiple:
        return min(max(kept, 1), size)
    rounded = max(multiple, multiple * round(kept / multiple))
    return size if rounded > size else rounded


def aligned_group_counts(gated, counts: list[int], multiple: int) -> list[int]:
    """Every group's kept count aligned (:func:`aligned_count`).

    A supernet's candidate block rounds to the nearest multiple *including 0*: a candidate
    left with a few channels of its hundreds is an operation the gates all but dropped, and
    rounding it up to a whole step would keep a thin branch whose fixed per-layer costs
    (several nodes on the device) outweigh what its channels add. A layer without a residual
    path keeps its largest candidate at one step at least.
    """
    optional = gated.rule.optional
    out = []
    for k, (count, group) in enumerate(zip(counts, gated.plan.groups, strict=True)):
        if k in optional and multiple > 1 and group.size > multiple:
            out.append(min(group.size, multiple * round(count / multiple)))
        elif k in optional and count == 0:
            out.append(0)
        else:
            out.append(aligned_count(count, group.size, multiple))
    for layer in gated.rule.orphaned(lambda g: out[g] > 0):
        largest = max(layer, key=lambda g: counts[g])
        out[largest] = aligned_count(max(counts[largest], 1), gated.plan.groups[largest].size,
                                     multiple)
    return out


def align_keep_mask(gated, keep: torch.Tensor, multiple: int) -> torch.Tensor:
    """Per gate group, keep the ``aligned_group_counts`` channels with the highest gate
    scores.

    ``gated`` is a :class:`hwdnal.gating.model.GatedModel`; ``keep`` its boolean keep mask. Channels
    already kept win ties, so a mask that is aligned already is returned unchanged.
    """
    keep = keep.detach().cpu().bool().clone()
    scores = gated.gate.s.detach().cpu().float()
    groups = gated.plan.groups
    counts = [int(keep[g.start : g.stop].sum()) for g in groups]
    for group, count, target in zip(groups, counts, aligned_group_counts(gated, counts, multiple),
                                    strict=True):
        if target == count:
            continue
        part = keep[group.start : group.stop]
        rank = part.float() * 1e6 + scores[group.start : group.stop]
        new = torch.zeros_like(part)
        new[torch.topk(rank, target).indices] = True
        keep[group.start : group.stop] = new
    return keep
