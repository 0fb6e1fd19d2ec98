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


def align_keep_mask(gated, keep: torch.Tensor, multiple: int) -> torch.Tensor:
    """Per gate group, keep the ``aligned_count`` channels with the highest gate scores.

    ``gated`` is a :class:`hwdnal.gated.GatedModel`; ``keep`` its boolean keep mask. Channels
    already kept win ties, so a mask that is aligned already is returned unchanged.
    """
    keep = keep.detach().cpu().bool().clone()
    scores = gated.gate.s.detach().cpu().float()
    optional = {block.group for block in getattr(gated, "blocks", [])}
    for k, group in enumerate(gated.plan.groups):
        part = keep[group.start : group.stop]
        if k in optional and not bool(part.any()):
            continue  # a supernet's dropped candidate block stays dropped
        target = aligned_count(int(part.sum()), group.size, multiple)
        if target == int(part.sum()):
            continue
        rank = part.float() * 1e6 + scores[group.start : group.stop]
        chosen = torch.topk(rank, target).indices
        new = torch.zeros_like(part)
        new[chosen] = True
        keep[group.start : group.stop] = new
    return keep
